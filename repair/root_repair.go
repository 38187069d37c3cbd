package repair

import (
	"context"
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The root tree's repairer. The engine holds every tree's root item in
// memory from the mount on (at a mount whose root tree is damaged, from
// the superblock's backup of its generation, or when no backup names it
// from a scan of every block's header: engine/roottree_scan.go), so the
// root tree is rebuilt from them in one commit: a new tree, the old one's
// blocks freed (engine/roottree.go). Online the writers wait for that one
// small commit (the tree holds one item per tree).
//
// Before it, the header scan runs online too, against the committed
// generation (pinned while it reads): it proves that each tree's root in
// use is the one the image alone names (what an offline rebuild would
// find), and the report lists any tree where the two differ. The roots in
// memory are the ones written either way: they are what the running
// engine reads and writes through.
func repairRoot(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	scan, differ, err := e.RootScanCheck(ctx)
	if err != nil {
		return nil, fmt.Errorf("header scan: %w", err)
	}
	items, freed, err := e.RebuildRootTree()
	if err != nil {
		return nil, err
	}
	s := e.Pin()
	gen := s.Gen()
	s.Release()
	if len(differ) > 0 {
		differ = append(differ, fmt.Sprintf("(a header scan of %d blocks found %d of the trees' roots in use on the image alone)", scan.Blocks, len(format.KnownTrees)-1-len(differ)))
	}
	return &RebuildReport{Structure: "root", Gen: uint64(gen), Records: items, OldBlocks: freed,
		DurationS: time.Since(start).Seconds(), Changes: differ}, nil
}
