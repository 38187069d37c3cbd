package repair

import (
	"context"
	"time"

	"github.com/scrubd/scrubd/engine"
)

// The root tree's repairer. The engine holds every tree's root item in
// memory from the mount on (at a mount whose root tree is damaged, from
// the superblock's backup of its generation), so the root tree is rebuilt
// from them in one commit: a new tree, the old one's blocks freed
// (engine/roottree.go). It reads no other structure. Online the writers
// wait for that one small commit (the tree holds one item per tree).
func repairRoot(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	items, freed, err := e.RebuildRootTree()
	if err != nil {
		return nil, err
	}
	s := e.Pin()
	gen := s.Gen()
	s.Release()
	return &RebuildReport{Structure: "root", Gen: uint64(gen), Records: items, OldBlocks: freed,
		DurationS: time.Since(start).Seconds()}, nil
}
