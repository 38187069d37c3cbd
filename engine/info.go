package engine

import (
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TreeInfo describes one tree of a generation.
type TreeInfo struct {
	ID    format.TreeID
	Name  string
	Root  format.BlockNr
	Level int
	Gen   format.Gen
	Items uint64
	Known bool // this build interprets its items
}

// Info describes a committed generation.
type Info struct {
	Super format.Super
	Trees []TreeInfo
	Mount MountInfo
}

// Info describes the snapshot's generation.
func (s *Snapshot) Info() Info {
	in := Info{Super: s.v.super, Mount: s.e.mount}
	for _, id := range s.Trees() {
		ri := s.v.roots[id]
		in.Trees = append(in.Trees, TreeInfo{
			ID: id, Name: id.String(), Root: ri.Root.Block, Level: int(ri.Root.Level),
			Gen: ri.Root.Gen, Items: ri.Items, Known: isKnownTree(id),
		})
	}
	return in
}

// InfoVersion versions the InfoDoc JSON document; fields are only ever
// added within a version.
const InfoVersion = 1

// InfoDoc is Info as a JSON document ("scrubd info --json"): snake_case
// throughout. Version is the on-disk format version ("1.2"), kept under
// that name for compatibility; InfoVersion versions the document.
type InfoDoc struct {
	InfoVersion    int    `json:"info_version"`
	UUID           string `json:"uuid"`
	Label          string `json:"label"`
	Generation     uint64 `json:"generation"`
	BlockSize      uint32 `json:"block_size"`
	Version        string `json:"version"`
	FormatVersion  string `json:"format_version"`
	TotalBlocks    uint64 `json:"total_blocks"`
	FreeBlocks     uint64 `json:"free_blocks"`
	TotalBytes     uint64 `json:"total_bytes"`
	FreeBytes      uint64 `json:"free_bytes"`
	Compat         uint64 `json:"compat"`
	RoCompat       uint64 `json:"ro_compat"`
	Incompat       uint64 `json:"incompat"`
	RecoveryPasses uint64 `json:"recovery_passes_required"`
	// PassNames names the bits of RecoveryPasses this build knows.
	PassNames    []string             `json:"recovery_pass_names"`
	ErrorsSilent [4]uint64            `json:"errors_silent"`
	SuperBlock   uint64               `json:"superblock"`
	FellBack     bool                 `json:"fell_back"`
	Notes        []string             `json:"notes"`
	Trees        []InfoTree           `json:"trees"`
	Errors       []InfoError          `json:"errors"`
	Devices      []format.DeviceStats `json:"devices"`
	NextObjectID uint64               `json:"next_object_id"`
	// Features names the version table's features whose bits the image
	// sets (versions.go); NewestVersion is this build's newest format.
	Features      []string `json:"features"`
	NewestVersion string   `json:"newest_version"`
	// SilentErrors names the error ids in errors_silent.
	SilentErrors []string `json:"silent_errors"`
}

// InfoTree is one tree in an InfoDoc.
type InfoTree struct {
	Name       string `json:"name"`
	ID         uint64 `json:"id"`
	Root       uint64 `json:"root"`
	Level      int    `json:"level"`
	Generation uint64 `json:"generation"`
	Items      uint64 `json:"items"`
	Known      bool   `json:"known"`
}

// InfoError is one error counter in an InfoDoc.
type InfoError struct {
	ID    uint32    `json:"id"`
	Name  string    `json:"name"`
	Count uint64    `json:"count"`
	Last  time.Time `json:"last"`
}

// Doc returns the description as a JSON document.
func (in Info) Doc() InfoDoc {
	sb := in.Super
	v := fmt.Sprintf("%d.%d", sb.Major, sb.Minor)
	d := InfoDoc{
		InfoVersion: InfoVersion, UUID: sb.FSID.String(), Label: sb.Label, Generation: uint64(sb.Gen),
		BlockSize: sb.BlockSize, Version: v, FormatVersion: v,
		TotalBlocks: sb.TotalBlocks, FreeBlocks: sb.FreeBlocks,
		TotalBytes: sb.TotalBlocks * format.BlockSize, FreeBytes: sb.FreeBlocks * format.BlockSize,
		Compat: sb.Compat, RoCompat: sb.RoCompat, Incompat: sb.Incompat,
		RecoveryPasses: sb.RecoveryPasses, ErrorsSilent: sb.ErrorsSilent,
		SuperBlock: uint64(in.Mount.SuperBlock), FellBack: in.Mount.FellBack, Notes: in.Mount.Notes,
		Devices: sb.Devices, NextObjectID: sb.NextObjectID,
		Trees: []InfoTree{}, Errors: []InfoError{},
	}
	d.Features = FeaturesInUse(&sb)
	d.NewestVersion = fmt.Sprintf("%d.%d", format.VersionMajor, NewestMinor())
	d.SilentErrors = []string{}
	for id := uint32(0); id < 256; id++ {
		if sb.Silent(id) {
			d.SilentErrors = append(d.SilentErrors, ErrorID(id).Name())
		}
	}
	d.PassNames = []string{}
	for _, p := range RecoveryPasses() {
		if sb.RecoveryPasses&(1<<p.ID) != 0 {
			d.PassNames = append(d.PassNames, p.Name)
		}
	}
	if d.Notes == nil {
		d.Notes = []string{}
	}
	if d.Devices == nil {
		d.Devices = []format.DeviceStats{}
	}
	for _, t := range in.Trees {
		d.Trees = append(d.Trees, InfoTree{Name: t.Name, ID: uint64(t.ID), Root: uint64(t.Root), Level: t.Level,
			Generation: uint64(t.Gen), Items: t.Items, Known: t.Known})
	}
	for _, x := range sb.Errors {
		d.Errors = append(d.Errors, InfoError{ID: x.ID, Name: ErrorID(x.ID).Name(), Count: x.Count, Last: time.Unix(0, x.Last).UTC()})
	}
	return d
}

func isKnownTree(id format.TreeID) bool {
	for _, k := range format.KnownTrees {
		if k == id {
			return true
		}
	}
	return false
}

// OpenPath opens the image or block device at path.
func OpenPath(path string, opts Options) (*Engine, error) {
	dev, err := disk.Open(path, opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	e, err := Open(dev, opts)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return e, nil
}

// MkfsPath creates an image file of size bytes at path (or uses the block
// device there) and makes a filesystem on it. Without force it refuses a
// path that already holds data.
func MkfsPath(path string, size int64, force bool, mo MkfsOptions) error {
	if size < format.MinBlocks*format.BlockSize {
		return fmt.Errorf("mkfs: size %d bytes is below the minimum of %d bytes (%d MiB)", size, format.MinBlocks*format.BlockSize, format.MinBlocks*format.BlockSize>>20)
	}
	dev, err := disk.Create(path, size, force)
	if err != nil {
		return err
	}
	if mo.Preallocate {
		if err := dev.Preallocate(mo.Progress); err != nil {
			dev.Close()
			return err
		}
	}
	if err := Mkfs(dev, mo); err != nil {
		dev.Close()
		return err
	}
	return dev.Close()
}
