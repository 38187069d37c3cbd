package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine"
)

func newInfoCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "info IMAGE [--json]",
		Short: "Describe an image: superblock, trees, error counters",
		Long: `Describe an unmounted image read-only: its UUID, generation, format
version and the features of the version table it uses ("scrubd upgrade"
changes them), the error ids silenced (errors_silent), every tree (root block, level, generation, items), the error
counters and per-device IO error counts kept in the superblock.

With --json it prints one object (snake_case keys; "info_version" versions
the document, "version" is the image's on-disk format version).

EXIT STATUS
  0 described; 1 the image could not be opened (the reason is printed,
  "not a scrubd filesystem" for a file that holds none); 2 usage error.`,
		Example: `  scrubd info fs.img
  scrubd info fs.img --json | jq .trees`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			if err := checkOffline(args[0]); err != nil {
				return err
			}
			e, err := engine.OpenPath(args[0], engine.Options{ReadOnly: true, Logger: log})
			if err != nil {
				return err
			}
			defer e.Close()
			s := e.Pin()
			j := s.Info().Doc()
			s.Release()
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, j)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "uuid\t%s\nlabel\t%s\nversion\t%s\ngeneration\t%d\nblock size\t%s\n", j.UUID, j.Label, j.Version, j.Generation, humanize.IBytes(uint64(j.BlockSize)))
			fmt.Fprintf(tw, "size\t%s (%s blocks), %s free (%s blocks)\nsuperblock\tblock %d\n",
				humanize.IBytes(j.TotalBytes), humanize.Comma(int64(j.TotalBlocks)), humanize.IBytes(j.FreeBytes), humanize.Comma(int64(j.FreeBlocks)), j.SuperBlock)
			fmt.Fprintf(tw, "features\t%s (this build writes up to %s)\n", strings.Join(j.Features, ", "), j.NewestVersion)
			if len(j.SilentErrors) > 0 {
				fmt.Fprintf(tw, "errors silent\t%s\n", strings.Join(j.SilentErrors, ", "))
			}
			for _, n := range j.Notes {
				fmt.Fprintf(tw, "note\t%s\n", n)
			}
			if j.RecoveryPasses != 0 {
				fmt.Fprintf(tw, "recovery\tpasses required: %#x %v\n", j.RecoveryPasses, j.PassNames)
			}
			tw.Flush()
			fmt.Fprintln(out)
			tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "TREE\t ROOT\t LEVEL\t GEN\t ITEMS\t\n")
			for _, t := range j.Trees {
				fmt.Fprintf(tw, "%s\t %d\t %d\t %d\t %s\t\n", t.Name, t.Root, t.Level, t.Generation, humanize.Comma(int64(t.Items)))
			}
			tw.Flush()
			if len(j.Errors) > 0 {
				fmt.Fprintln(out)
				tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintf(tw, "ERROR\tCOUNT\tLAST SEEN\n")
				for _, x := range j.Errors {
					fmt.Fprintf(tw, "%s\t%d\t%s (%s)\n", x.Name, x.Count, x.Last.Format(time.RFC3339), humanize.Time(x.Last))
				}
				tw.Flush()
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
