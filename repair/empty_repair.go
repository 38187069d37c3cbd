package repair

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The repair of the trees this version of the format creates and never
// fills: today the snapshot tree (mkfs makes it an empty leaf; the
// subvolume and uuid trees, filled since format 1.7, have their own
// repairers in subvol_repair.go, which rebuild them from what names their
// items). An image
// this version wrote holds no item in them, so a damaged one is rebuilt
// exactly by writing a new empty tree and freeing the old tree's blocks
// (engine.Exclusive.ResetTree, one commit: a crash leaves the old tree or
// the new one). The repair refuses a tree whose readable part holds
// items: it was written by something this version does not know, and
// emptying it would lose them.

// emptyTreeRepairer returns the repairer of a tree that this version of
// the format keeps empty.
func emptyTreeRepairer(name string, id format.TreeID, st engine.Structure) repairFunc {
	return func(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
		start := time.Now()
		if err := e.Sync(); err != nil {
			return nil, err
		}
		pin := e.Pin()
		gen := pin.Gen()
		items, err := readableItems(pin, id)
		var cands map[format.BlockNr]format.TreeID
		var note string
		if err == nil && items > 0 {
			err = fmt.Errorf("the %s tree holds %d readable items, and this version of scrubd writes none there: not emptied", name, items)
		}
		if err == nil {
			cands, note, err = ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool { return owner == id })
		}
		pin.Release()
		if err != nil {
			return nil, err
		}
		rb := &RebuildReport{Structure: name, Gen: uint64(gen)}
		var held time.Duration
		err = e.RunExclusive(func(x *engine.Exclusive) error {
			defer func() { held = x.Held() }()
			oldBlocks(x, id, cands, gen, note != "")
			t, n, err := x.ResetTree(id, cands)
			if err != nil {
				return fmt.Errorf("replace the %s tree: %w", name, err)
			}
			rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
			e.MarkRepaired(st, x.Gen())
			return nil
		})
		if err != nil {
			return nil, err
		}
		rb.DurationS = time.Since(start).Seconds()
		rb.PauseMs = float64(held.Microseconds()) / 1000
		rb.Changes = append(rb.Changes, fmt.Sprintf("wrote a new empty %s tree (this version of scrubd keeps it empty); freed %d blocks of the old one", name, rb.OldBlocks))
		if note != "" {
			rb.Changes = append(rb.Changes, note)
		}
		return rb, nil
	}
}

// readableItems counts the items of tree id in s that can be read,
// walking past what cannot.
func readableItems(s *engine.Snapshot, id format.TreeID) (int, error) {
	tr, ok := s.ScanTree(id)
	if !ok {
		return 0, nil
	}
	n := 0
	var walk func(p eb.Ptr, level int) error
	walk = func(p eb.Ptr, level int) error {
		nd, err := tr.Store.Read(id, p, level)
		if err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				return nil
			}
			return err
		}
		if nd.IsLeaf() {
			n += nd.NrItems()
			return nil
		}
		for i := 0; i < nd.NrItems(); i++ {
			c, g := nd.Child(i)
			if err := walk(eb.Ptr{Block: c, Gen: g}, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	return n, walk(tr.Root, tr.Level)
}
