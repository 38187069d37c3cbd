package repair

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
)

// Online rebuild of the allocation tree (extent records with their
// reference counts), from the reverse mapping — XFS rebuilds its refcount
// btree from the rmap the same way (refcount_repair.c).
//
// Every extent in use has one rmap record per owner, all at the extent's
// start with its length, so the allocation record of the extent at start
// s is: its length, the number of rmap records at s (the reference
// count), and data or metadata by the owners' kind. The rebuild
//
//  1. degrades the alloc tree (the engine stops updating it and derives
//     what applying a reference needs — does the extent exist, its length,
//     its count — from the rmap records at its start, engine/degraded.go),
//     subscribes to the rmap hook and pins a committed generation G;
//  2. scans G's rmap in key order into the shadow, one record per start;
//     the old alloc tree's blocks are the rmap's records of owner "alloc";
//     a damaged rmap, or one the engine runs without, refuses the rebuild;
//  3. follows the rmap events: an owner gained counts one reference more
//     (a first one creates the record), an owner lost one less (the last
//     one removes it);
//  4. loads, catches up, swaps and reaps like every rebuild. The tree
//     records its own blocks (each is a one-block metadata extent owned by
//     the alloc tree), so the reservation plans for them too, and their
//     records reach the shadow through the rmap hook like any other.
//
// The file extents are the rmap's own source (its data records are
// derived from them): the ops table makes the rebuild wait for, or refuse
// on, damage proven in the rmap or the extent tree.

// RebuildAlloc rebuilds the allocation tree of e online.
func RebuildAlloc(ctx context.Context, e *engine.Engine, opts RebuildOptions) (*RebuildResult, error) {
	if e.RmapSick() {
		return nil, fmt.Errorf("cannot rebuild the alloc tree from an rmap the engine runs without: %w", format.ErrCorrupt)
	}
	degrade(e, engine.StructAlloc)
	r := &allocRebuild{}
	return rebuild(ctx, e, opts, rebuildSpec[engine.RmapEvent]{
		Name: "alloc", Tree: format.TreeAlloc, Structure: engine.StructAlloc,
		ItemSize: format.ExtentItemSize, SelfRecords: true,
		Codec: rmapEvents, Gen: rmapGen, Apply: r.apply,
		Chain: func(e *engine.Engine) *hooks.Chain[engine.RmapEvent] { return &e.Hooks().Rmap },
		Expect: func(s *engine.Snapshot) uint64 {
			t, _ := s.ScanTree(format.TreeRmap)
			return t.Items
		},
		Scan: r.scan,
	})
}

// allocRebuild is the alloc tree's own state in a rebuild.
type allocRebuild struct {
	buf [format.ExtentItemSize]byte
}

// extentFlags is the alloc record's kind for an extent of owner o.
func extentFlags(o format.Owner) uint64 {
	if o.IsData() {
		return format.ExtentData
	}
	return format.ExtentMeta
}

// scan puts into shadow the allocation records generation s implies (one
// per start in its rmap) and returns the old alloc tree's blocks.
func (r *allocRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	var old []format.BlockNr
	var cur format.ExtentItem
	var curStart format.BlockNr
	var curLen uint64
	flush := func() error {
		if cur.Refs == 0 {
			return nil
		}
		th.tick()
		progress.Add(1)
		err := shadow.Insert(format.ExtentKey(curStart, curLen), cur.Encode())
		cur = format.ExtentItem{}
		return err
	}
	err := walkRmap(ctx, s, "the alloc tree", func(start format.BlockNr, o format.Owner, it format.RmapItem) error {
		if cur.Refs > 0 && start == curStart {
			if it.Len != curLen {
				return fmt.Errorf("owners of the extent at %d disagree on its length (%d and %d): %w", start, curLen, it.Len, format.ErrCorrupt)
			}
			if extentFlags(o) != cur.Flags {
				return fmt.Errorf("the extent at %d has both data and metadata owners: %w", start, format.ErrCorrupt)
			}
			cur.Refs++
		} else {
			if err := flush(); err != nil {
				return err
			}
			cur, curStart, curLen = format.ExtentItem{Refs: 1, Flags: extentFlags(o)}, start, it.Len
		}
		if !o.IsData() && o.Tree == format.TreeAlloc {
			old = append(old, start)
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	return old, nil
}

// walkRmap calls fn with every record of generation s's rmap tree, in key
// order, for the rebuild of what (in errors). Any problem of the walk (a
// wrong item count included: a record went missing) or a record that does
// not decode refuses it, as does the first error of fn or ctx.
func walkRmap(ctx context.Context, s *engine.Snapshot, what string, fn func(start format.BlockNr, o format.Owner, it format.RmapItem) error) error {
	var perr error
	rt, _ := s.ScanTree(format.TreeRmap)
	var bad firstProblem
	err := rt.Check(eb.CheckVisitor{
		Item: func(k format.Key, v []byte) {
			if perr != nil {
				return
			}
			o, ok := format.RmapOwner(k)
			it, err := format.DecodeRmapItem(v)
			if !ok || err != nil {
				perr = fmt.Errorf("rmap record %s: %w", k, format.ErrCorrupt)
				return
			}
			perr = fn(format.BlockNr(k.Obj), o, it)
		},
		Problem: bad.note,
	})
	if err == nil && bad.p != nil {
		err = fmt.Errorf("cannot rebuild %s while the rmap is damaged (%s): %w", what, bad.p, format.ErrCorrupt)
	}
	if err == nil {
		err = perr
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// apply applies an rmap event to t (the shadow, the staged tree or the
// swapped-in one). The shadow serializes the calls.
func (r *allocRebuild) apply(t *eb.Tree, ev engine.RmapEvent) error {
	if ev.Op == engine.OpUpdate {
		return nil // a file's mapping changed; its reference did not
	}
	k := format.ExtentKey(ev.Start, ev.Len)
	v, ok, err := t.Get(k, r.buf[:0])
	if err != nil {
		return err
	}
	var it format.ExtentItem
	if ok {
		if it, err = format.DecodeExtentItem(v); err != nil {
			return err
		}
	}
	switch ev.Op {
	case engine.OpInsert:
		if !ok {
			it = format.ExtentItem{Flags: extentFlags(ev.Owner)}
		}
		it.Refs++
		err = t.Put(k, it.Encode())
	case engine.OpDelete:
		if !ok || it.Refs == 0 {
			return fmt.Errorf("%s lost the extent %d+%d the new alloc tree does not hold: %w", ev.Owner, ev.Start, ev.Len, format.ErrCorrupt)
		}
		if it.Refs--; it.Refs == 0 {
			_, err = t.Delete(k)
		} else {
			err = t.Put(k, it.Encode())
		}
	}
	if err != nil {
		return fmt.Errorf("rmap %s of %d+%d: %w", ev.Op, ev.Start, ev.Len, err)
	}
	return nil
}
