package repair

import (
	"context"
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The logged_ops tree's repair. The tree holds the logged operations of
// online rebuilds (engine/exclusive.go) — "free these blocks", "free
// those of these blocks no tree reaches" — and the scrub cursor
// (engine/scrubcursor.go). An operation exists only to free blocks that
// are allocated and that no tree reaches (a reservation not linked in
// yet, a replaced tree not reaped yet): completing every operation the
// damage hid is freeing every such block, and that set can be computed
// from the image itself — the one-block metadata extents the rmap lists
// minus the blocks the trees reach (what the check_allocations pass and
// the space rebuilds establish). So the repair needs nothing of the
// damaged tree:
//
//   - collect: at a pinned generation, walk every other tree's nodes and
//     scan the rmap: the candidates are its one-block metadata extents
//     that no tree reaches, plus every block the logged_ops tree owns.
//     Damage in another tree fails the repair here, with nothing done: a
//     block it hides would look unreachable.
//   - swap, in one short exclusive section: add the blocks the old tree
//     gained since, write a new empty tree, and free the candidates that,
//     with it in place, no tree of the running transaction reaches and
//     that are still one-block metadata extents
//     (engine.Exclusive.ResetTree). One commit: a crash leaves the old
//     tree (and the leaks) or the new one.
//
// The candidates are verified again in the exclusive section, so a block
// linked in since the scan is left alone; a block reserved by a rebuild
// not yet swapped in would not be — none exists: the ops table runs one
// repair at a time, and the mount one scrub at a time.
//
// What is lost: the scrub cursor (a data scrub interrupted before the
// repair starts again from the beginning) and nothing else — an
// operation whose blocks are already freed or in use again is moot.

// repairLoggedOps is the logged_ops row's repairer.
func repairLoggedOps(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	if err := e.Sync(); err != nil {
		return nil, err
	}
	_, hadCursor, cerr := e.ScrubCursor()
	pin := e.Pin()
	gen := pin.Gen()
	reached, err := reachedBlocks(ctx, pin, format.TreeLoggedOps)
	var cands map[format.BlockNr]format.TreeID
	var note string
	if err == nil {
		cands, note, err = ownedBlocks(ctx, e, pin, func(owner format.TreeID, b format.BlockNr) bool {
			return owner == format.TreeLoggedOps || owner != format.TreeLog && owner != format.OwnerSuper && !reached[b]
		})
	}
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	rb := &RebuildReport{Structure: "logged_ops", Gen: uint64(gen)}
	var held time.Duration
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		oldBlocks(x, format.TreeLoggedOps, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeLoggedOps, cands)
		if err != nil {
			return fmt.Errorf("replace the logged_ops tree: %w", err)
		}
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructLoggedOps, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	rb.Changes = append(rb.Changes, fmt.Sprintf("wrote an empty logged_ops tree; freed %d metadata blocks no tree reached (the old tree's, and those its lost operations would have freed)", rb.OldBlocks))
	switch {
	case hadCursor:
		rb.Changes = append(rb.Changes, "the scrub cursor was dropped with the old tree: the interrupted data scrub starts again from the beginning")
	case cerr != nil:
		rb.Changes = append(rb.Changes, "a scrub cursor the damage hid, if there was one, was dropped with the old tree: an interrupted data scrub starts again from the beginning")
	}
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

// reachedBlocks returns every block the trees of s reach, but tree skip's.
// Damage met in a tree is an error: what it hides cannot be told from a
// leak.
func reachedBlocks(ctx context.Context, s *engine.Snapshot, skip format.TreeID) (map[format.BlockNr]bool, error) {
	reached := map[format.BlockNr]bool{}
	for _, id := range s.Trees() {
		if id == skip {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, _ := s.ScanTree(id)
		if err := t.Blocks(func(p eb.Ptr, _ int) bool {
			reached[p.Block] = true
			return true
		}); err != nil {
			return nil, fmt.Errorf("walk the %s tree: %w", id, err)
		}
	}
	return reached, nil
}
