package repair

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The superblock row's repairers: the copies, and the summary counters
// (the superblock's free-block count, each root item's item count).

// repairSupers is the superblock row's repairer: a commit writes every
// copy anew from the generation in use (an invalid, stale or differing
// copy is never read for it: the opener chose the newest valid copy).
func repairSupers(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	if err := e.RewriteSupers(); err != nil {
		return nil, err
	}
	s := e.Pin()
	gen, n := s.Gen(), len(format.SuperBlocks(s.Super().TotalBlocks))
	s.Release()
	return &RebuildReport{Structure: "superblock", Gen: uint64(gen), Records: uint64(n), NewBlocks: uint64(n),
		DurationS: time.Since(start).Seconds()}, nil
}

// countersOnly says whether every finding is a summary counter found
// wrong (tree_item_count, super_free_count). Only then are the counters
// recounted: beside other damage a wrong count is that damage's (a record
// lost with its leaf leaves its tree's count high), and recounting would
// hide the proof that sends the tree to its row's rebuild.
func countersOnly(fs []engine.Finding) bool {
	for _, f := range fs {
		if f.ID != engine.ErrTreeItemCount && f.ID != engine.ErrSuperFreeCount {
			return false
		}
	}
	return len(fs) > 0
}

// repairCounters recounts what fs found wrong: a tree's items (corrected
// by the difference, engine.RecountItems); the free-block count is left
// to the free row, whose rebuild recomputes it (and every read-write open
// does).
func (r *repairRun) repairCounters(ctx context.Context, fs []engine.Finding) error {
	var trees []format.TreeID
	for _, f := range fs {
		if f.ID == engine.ErrTreeItemCount && !slices.Contains(trees, f.Tree) {
			trees = append(trees, f.Tree)
		}
	}
	for _, id := range trees {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		r.opts.Control.phaseStart("recount "+id.String(), 0)
		recorded, found, err := r.e.RecountItems(id)
		if err != nil {
			r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("recount of the %s tree's items failed: %v", id, err))
			continue
		}
		s := r.e.Pin()
		gen := s.Gen()
		s.Release()
		r.rep.Rebuilds = append(r.rep.Rebuilds, RebuildReport{Structure: "superblock", Gen: uint64(gen), Records: found,
			DurationS: time.Since(start).Seconds()})
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("recounted the %s tree's items: its root item recorded %d, it holds %d", id, recorded, found))
	}
	return nil
}
