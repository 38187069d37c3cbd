package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

type infoTree struct {
	Name       string `json:"name"`
	ID         uint64 `json:"id"`
	Root       uint64 `json:"root"`
	Level      int    `json:"level"`
	Generation uint64 `json:"generation"`
	Items      uint64 `json:"items"`
	Known      bool   `json:"known"`
}

type infoError struct {
	ID    uint32    `json:"id"`
	Name  string    `json:"name"`
	Count uint64    `json:"count"`
	Last  time.Time `json:"last"`
}

type infoJSON struct {
	UUID           string               `json:"uuid"`
	Label          string               `json:"label"`
	Generation     uint64               `json:"generation"`
	BlockSize      uint32               `json:"block_size"`
	Version        string               `json:"version"`
	TotalBlocks    uint64               `json:"total_blocks"`
	FreeBlocks     uint64               `json:"free_blocks"`
	Compat         uint64               `json:"compat"`
	RoCompat       uint64               `json:"ro_compat"`
	Incompat       uint64               `json:"incompat"`
	RecoveryPasses uint64               `json:"recovery_passes_required"`
	ErrorsSilent   [4]uint64            `json:"errors_silent"`
	SuperBlock     uint64               `json:"superblock"`
	FellBack       bool                 `json:"fell_back"`
	Notes          []string             `json:"notes"`
	Trees          []infoTree           `json:"trees"`
	Errors         []infoError          `json:"errors"`
	Devices        []format.DeviceStats `json:"devices"`
	NextObjectID   uint64               `json:"next_object_id"`
}

func newInfoCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "info IMAGE [--json]",
		Short: "Describe an image: superblock, trees, error counters",
		Long: `Describe an unmounted image read-only: its UUID, generation, version,
features, every tree (root block, level, generation, items), the error
counters and per-device IO error counts kept in the superblock.

EXIT STATUS
  0 described; 1 the image could not be opened (the reason is printed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			e, err := engine.OpenPath(args[0], engine.Options{ReadOnly: true, Logger: log})
			if err != nil {
				return err
			}
			defer e.Close()
			s := e.Pin()
			in := s.Info()
			s.Release()
			j := infoJSON{
				UUID: in.Super.FSID.String(), Label: in.Super.Label, Generation: uint64(in.Super.Gen),
				BlockSize: in.Super.BlockSize, Version: fmt.Sprintf("%d.%d", in.Super.Major, in.Super.Minor),
				TotalBlocks: in.Super.TotalBlocks, FreeBlocks: in.Super.FreeBlocks,
				Compat: in.Super.Compat, RoCompat: in.Super.RoCompat, Incompat: in.Super.Incompat,
				RecoveryPasses: in.Super.RecoveryPasses, ErrorsSilent: in.Super.ErrorsSilent,
				SuperBlock: uint64(in.Mount.SuperBlock), FellBack: in.Mount.FellBack, Notes: in.Mount.Notes,
				Devices: in.Super.Devices, NextObjectID: in.Super.NextObjectID,
				Trees: []infoTree{}, Errors: []infoError{},
			}
			if j.Notes == nil {
				j.Notes = []string{}
			}
			for _, t := range in.Trees {
				j.Trees = append(j.Trees, infoTree{Name: t.Name, ID: uint64(t.ID), Root: uint64(t.Root), Level: t.Level,
					Generation: uint64(t.Gen), Items: t.Items, Known: t.Known})
			}
			for _, x := range in.Super.Errors {
				j.Errors = append(j.Errors, infoError{ID: x.ID, Name: engine.ErrorID(x.ID).Name(), Count: x.Count, Last: time.Unix(0, x.Last).UTC()})
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, j)
			}
			fmt.Fprintf(out, "uuid        %s\nlabel       %s\nversion     %s\ngeneration  %d\nblock size  %d\nblocks      %d total, %d free\nsuperblock  block %d\n",
				j.UUID, j.Label, j.Version, j.Generation, j.BlockSize, j.TotalBlocks, j.FreeBlocks, j.SuperBlock)
			for _, n := range j.Notes {
				fmt.Fprintf(out, "note        %s\n", n)
			}
			if j.RecoveryPasses != 0 {
				fmt.Fprintf(out, "recovery    passes required: %#x\n", j.RecoveryPasses)
			}
			fmt.Fprintf(out, "\n%-12s %10s %6s %10s %10s\n", "TREE", "ROOT", "LEVEL", "GEN", "ITEMS")
			for _, t := range j.Trees {
				fmt.Fprintf(out, "%-12s %10d %6d %10d %10d\n", t.Name, t.Root, t.Level, t.Generation, t.Items)
			}
			if len(j.Errors) > 0 {
				fmt.Fprintf(out, "\n%-24s %8s  %s\n", "ERROR", "COUNT", "LAST SEEN")
				for _, x := range j.Errors {
					fmt.Fprintf(out, "%-24s %8d  %s\n", x.Name, x.Count, x.Last.Format(time.RFC3339))
				}
			}
			for _, d := range j.Devices {
				if d.ReadErrors+d.WriteErrors+d.CsumErrors > 0 {
					fmt.Fprintf(out, "device %d: %d read, %d write, %d checksum errors\n", d.ID, d.ReadErrors, d.WriteErrors, d.CsumErrors)
				}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return c
}
