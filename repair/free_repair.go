package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
)

// Online rebuild of the free-space tree (XFS's alloc_repair.c), a list of
// phases on the rebuild kit like the rmap's.
//
// The free-space tree is the complement of the alloc tree: every block of
// the device is in exactly one alloc record or one free record, and free
// records are maximal (neighbours merged). So the rebuild
//
//  1. degrades the free-space tree (the engine stops updating it and runs
//     on its in-memory allocator, see engine/degraded.go), subscribes to
//     the alloc hook and pins a committed generation G;
//  2. scans G's alloc tree in key order into the shadow: each gap between
//     two allocated extents is one free record; the old free tree's blocks
//     are listed by walking it, or, when it is too damaged to walk, from
//     the rmap (its records of owner "free"); neither the alloc tree nor
//     the rmap may be damaged (the ops table's inputs), and the scan
//     refuses a walk of the alloc tree that meets a bad block;
//  3. follows the alloc events: an extent recorded takes its blocks out of
//     the free record holding them (splitting it), an extent removed puts
//     them back (merged with free neighbours), a reference-count change
//     changes nothing;
//  4. bulk-loads, catches up, swaps and reaps like every rebuild; in the
//     exclusive section the engine's free-block count is corrected to what
//     the new tree holds, the tree is maintained by the engine again, and,
//     when the count was wrong, the commit reconciles the allocator with
//     it (space a damaged tree had lost becomes allocatable again).
//
// The reservation game: the new tree's blocks come out of the very free
// space it describes. They are reserved like any tree's (Tx.ReserveMeta,
// owned by the free tree, each batch with its logged operation), which
// records them in the alloc tree; the alloc hook hands those records to
// the shadow, which takes the blocks out of its free records. The
// allocator hands out contiguous runs, so each batch of reserved blocks
// changes the record count by at most one or two (a run split off the
// end of a free extent shortens it, one taken from the middle splits it
// in two), while each block of the new tree holds hundreds of free
// records (they are keys without values). The reservation plans for the
// records counted by the scan plus a slack of a 32nd (at least 16 blocks),
// and tops up once after the catch-up for what the shadow holds then:
// the records its own reservation added are far fewer than one block
// holds, so the top-up finds the reservation sufficient, and the game
// ends after the first round. A reservation the load outgrows anyway
// fails the rebuild cleanly (the reserved blocks are given back) rather
// than looping.

// RebuildFree rebuilds the free-space tree of e online.
func RebuildFree(ctx context.Context, e *engine.Engine, opts RebuildOptions) (*RebuildResult, error) {
	degrade(e, engine.StructFree)
	r := &freeRebuild{rmapOK: !e.RmapSick()}
	var counted uint64
	return rebuild(ctx, e, opts, rebuildSpec[engine.AllocEvent]{
		Name: "free", Tree: format.TreeFree, Structure: engine.StructFree, ItemSize: 0,
		Codec: allocEvents, Gen: allocGen, Apply: r.apply,
		Chain: func(e *engine.Engine) *hooks.Chain[engine.AllocEvent] { return &e.Hooks().Alloc },
		Expect: func(s *engine.Snapshot) uint64 {
			t, _ := s.ScanTree(format.TreeFree)
			return max(1024, t.Items)
		},
		Scan: r.scan,
		Swap: swapSteps{
			Stopped: func(x *engine.Exclusive) { counted = x.FreeBlocks() },
			Then: func(x *engine.Exclusive) error {
				// Every change up to Stopped is in the new tree (r.free
				// counts them), every later one in both counts alike.
				// The engine's count has followed the allocator since
				// the mount loaded both from the old tree (or from the
				// alloc tree's gaps, which are right): when it differs
				// from the truth, the old tree had lost space or held
				// used space free, and so does the allocator, which the
				// commit then reconciles with the new tree. That
				// reconciliation reads every free record under the
				// writer lock (about 1.8 s at 1M records), so it runs
				// only then; damage that lost and gained exactly as many
				// blocks would escape this test, and none of the damage
				// kinds seen does that (a spurious free range is also
				// reported as free_overlap and repaired the same way,
				// with a count that differs).
				if d := int64(r.free) - int64(counted); d != 0 {
					x.CorrectFreeBlocks(d)
					x.ReconcileAllocator()
				}
				return nil
			},
		},
	})
}

// freeRebuild is the free-space tree's own state in a rebuild.
type freeRebuild struct {
	rmapOK bool   // the rmap is trusted: the old tree's blocks are listed from it
	free   uint64 // free blocks in the tree being built (scan and every event applied)
}

// scan puts into shadow the free records generation s implies (the gaps
// of its alloc tree), counting them in progress, and returns the blocks of
// the old free-space tree.
func (r *freeRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	total := s.Super().TotalBlocks
	var pos uint64
	var perr error
	gap := func(end uint64) {
		if end > pos && perr == nil {
			th.tick()
			progress.Add(1)
			perr = shadow.Insert(format.FreeKey(format.BlockNr(pos), end-pos), nil)
			r.free += end - pos
		}
	}
	at, _ := s.ScanTree(format.TreeAlloc)
	var bad firstProblem
	err := at.Check(eb.CheckVisitor{
		Item: func(k format.Key, _ []byte) {
			if k.Type != format.TypeExtentItem || perr != nil {
				return
			}
			start, n := k.Obj, k.Off
			if n == 0 || start+n > total || start+n < start || start < pos {
				perr = fmt.Errorf("alloc record %s out of order or range: %w", k, format.ErrCorrupt)
				return
			}
			gap(start)
			pos = start + n
		},
		Problem: bad.note,
	})
	if err == nil && bad.p != nil {
		err = fmt.Errorf("cannot rebuild the free-space tree while the alloc tree is damaged (%s): %w", bad.p, format.ErrCorrupt)
	}
	if err == nil {
		err = perr
	}
	if err != nil {
		return nil, err
	}
	gap(total)
	if perr != nil {
		return nil, perr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return oldTreeBlocks(s, format.TreeFree, r.rmapOK)
}

// oldTreeBlocks lists the blocks of tree id in generation s: from the
// rmap records it owns (which name a block even when the tree lost the
// pointer to it), or, when the rmap is not trusted (rmapOK false) or
// cannot be walked, by walking the tree itself.
func oldTreeBlocks(s *engine.Snapshot, id format.TreeID, rmapOK bool) ([]format.BlockNr, error) {
	var blocks []format.BlockNr
	count := format.KindItemCount
	bad := firstProblem{skip: &count}
	if rmapOK {
		rt, _ := s.ScanTree(format.TreeRmap)
		err := rt.Check(eb.CheckVisitor{
			Item: func(k format.Key, _ []byte) {
				if o, ok := format.RmapOwner(k); ok && !o.IsData() && o.Tree == id {
					blocks = append(blocks, format.BlockNr(k.Obj))
				}
			},
			Problem: bad.note,
		})
		if err != nil {
			return nil, err
		}
		if bad.p == nil {
			return blocks, nil
		}
	}
	rbad := bad.p
	blocks, bad.p = blocks[:0], nil
	t, _ := s.ScanTree(id)
	if err := t.Check(eb.CheckVisitor{Block: func(p eb.Ptr, _ int) { blocks = append(blocks, p.Block) }, Problem: bad.note}); err != nil {
		return nil, err
	}
	if bad.p != nil {
		why := "the rmap is not trusted"
		if rbad != nil {
			why = "the rmap is damaged too (" + rbad.String() + ")"
		}
		return nil, fmt.Errorf("cannot list the old %s tree's blocks: it cannot be walked (%s) and %s: %w", id, bad.p, why, format.ErrCorrupt)
	}
	return blocks, nil
}

// apply applies an alloc event to t (the shadow, the staged tree or the
// swapped-in one). The shadow serializes the calls.
func (r *freeRebuild) apply(t *eb.Tree, ev engine.AllocEvent) error {
	var err error
	switch ev.Op {
	case engine.OpInsert:
		err = freeTake(t, ev.Start, ev.Len)
		r.free -= ev.Len
	case engine.OpDelete:
		err = freeGive(t, ev.Start, ev.Len)
		r.free += ev.Len
	}
	if err != nil {
		return fmt.Errorf("alloc %s of %d+%d: %w", ev.Op, ev.Start, ev.Len, err)
	}
	return nil
}

// freeTake takes [start, start+n) out of the free records of t; the range
// must lie within one.
func freeTake(t *eb.Tree, start format.BlockNr, n uint64) error {
	k, _, ok, err := t.Last(format.FreeKey(start, ^uint64(0)))
	if err != nil {
		return err
	}
	end := uint64(start) + n
	if !ok || k.Type != format.TypeFreeExtent || k.Obj > uint64(start) || k.Obj+k.Off < end {
		return fmt.Errorf("blocks %d+%d allocated that the new tree does not hold free: %w", start, n, format.ErrCorrupt)
	}
	if _, err := t.Delete(k); err != nil {
		return err
	}
	if uint64(start) > k.Obj {
		if err := t.Insert(format.FreeKey(format.BlockNr(k.Obj), uint64(start)-k.Obj), nil); err != nil {
			return err
		}
	}
	if e := k.Obj + k.Off; end < e {
		if err := t.Insert(format.FreeKey(format.BlockNr(end), e-end), nil); err != nil {
			return err
		}
	}
	return nil
}

// freeGive puts [start, start+n) into the free records of t, merged with
// free neighbours; it must not overlap them.
func freeGive(t *eb.Tree, start format.BlockNr, n uint64) error {
	s, end := uint64(start), uint64(start)+n
	nk, _, ok, err := t.First(format.FreeKey(start, 0))
	if err != nil {
		return err
	}
	if ok && nk.Type == format.TypeFreeExtent && nk.Obj < end {
		return fmt.Errorf("blocks %d+%d freed overlap free blocks %d+%d: %w", start, n, nk.Obj, nk.Off, format.ErrCorrupt)
	}
	if ok && nk.Type == format.TypeFreeExtent && nk.Obj == end {
		if _, err := t.Delete(nk); err != nil {
			return err
		}
		end += nk.Off
	}
	pk, _, ok, err := t.Last(format.FreeKey(start, 0))
	if err != nil {
		return err
	}
	if ok && pk.Type == format.TypeFreeExtent {
		if pk.Obj+pk.Off > s {
			return fmt.Errorf("blocks %d+%d freed overlap free blocks %d+%d: %w", start, n, pk.Obj, pk.Off, format.ErrCorrupt)
		}
		if pk.Obj+pk.Off == s {
			if _, err := t.Delete(pk); err != nil {
				return err
			}
			s = pk.Obj
		}
	}
	return t.Insert(format.FreeKey(format.BlockNr(s), end-s), nil)
}

// allocEvents encodes an alloc event in 48 bytes: generation, op, start,
// length, references and flags, 8 bytes each.
var allocEvents = eventCodec[engine.AllocEvent]{
	size: 6 * 8,
	put: func(b []byte, ev engine.AllocEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		le.PutUint64(b[8:], uint64(ev.Op))
		le.PutUint64(b[16:], uint64(ev.Start))
		le.PutUint64(b[24:], ev.Len)
		le.PutUint64(b[32:], ev.Refs)
		le.PutUint64(b[40:], ev.Flags)
	},
	get: func(b []byte) engine.AllocEvent {
		le := binary.LittleEndian
		return engine.AllocEvent{
			Gen:   format.Gen(le.Uint64(b[0:])),
			Op:    engine.Op(le.Uint64(b[8:])),
			Start: format.BlockNr(le.Uint64(b[16:])),
			Len:   le.Uint64(b[24:]),
			Refs:  le.Uint64(b[32:]),
			Flags: le.Uint64(b[40:]),
		}
	},
}

// allocGen is an alloc event's generation.
func allocGen(ev engine.AllocEvent) format.Gen { return ev.Gen }
