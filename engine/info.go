package engine

import (
	"fmt"

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
		return fmt.Errorf("mkfs: size %d is below the minimum of %d bytes", size, format.MinBlocks*format.BlockSize)
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
