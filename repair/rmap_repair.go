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

// Online rebuild of the reverse-mapping tree (the XFS design).
//
// The rmap tree is secondary metadata: every record in it is implied by the
// other trees. Every tree block is owned by its tree, the superblock copies
// by the superblock, the log head by the log, and every data extent by each
// file extent item that maps part of it (inode, file block). So the rebuild,
// a list of phases on the rebuild kit (shadow.go, newbt.go, reap.go,
// pace.go):
//
//  1. subscribes to the engine's rmap hook, then pins a committed generation
//     G; events of later generations are buffered while
//  2. a scan of G collects every implied record into the shadow tree on an
//     xfile (collect: scanRmap). The old rmap tree's own blocks are records
//     too: found by walking it, or, if the walk meets any damage (a lost
//     pointer hides a subtree that is still allocated), as the metadata
//     extents no other owner claims; they are also kept in a set,
//     the blocks to reap, which the rmap events keep current (the rmap
//     tree is the one tree whose hook reports its own blocks). Alongside
//     the scan, ordinary transactions reserve the blocks the bulk-load plan
//     needs (owned by the rmap tree, so their records reach the shadow
//     through the hook), each logging an operation that frees them should
//     a crash come before the swap;
//  3. the buffered events after G are applied, and from then on each event
//     is applied as it is published: the shadow follows every change; the
//     reservation is topped up to what the shadow holds;
//  4. the shadow is frozen (events go to a delta instead) and bulk-loaded
//     into the reserved blocks: node images staged in a second xfile,
//     written to the device outside any transaction (the blocks are
//     allocated and nothing points at them);
//  5. the old tree's blocks are logged for reaping, and the delta is
//     applied to the staged tree in rounds until little is left;
//  6. a short exclusive section commits what is queued (its events join the
//     delta), applies the delta to the new tree with ordinary B-tree
//     operations, swaps the root, logs the reaping of the blocks the old
//     tree gained since the listing, and commits;
//  7. ordinary transactions free the old blocks and the unused reserved
//     ones in batches, dropping the logged operations as they go.
//
// The inputs are verified: the scan refuses to proceed if any tree it reads
// is damaged. Every commit is atomic and every multi-commit step is a logged
// operation the mount completes, so a crash at any point leaves the old tree
// or the new one and leaks nothing; a rebuild that fails before the swap
// gives its reservation back at once. The caller re-checks afterwards; that
// second check is what it reports.

// RmapRebuildOptions configure RebuildRmap.
type RmapRebuildOptions = RebuildOptions

// RmapRebuildResult describes an rmap rebuild.
type RmapRebuildResult = RebuildResult

// RebuildRmap rebuilds the rmap tree of e online. Writers keep running
// except for the short exclusive section.
func RebuildRmap(ctx context.Context, e *engine.Engine, opts RmapRebuildOptions) (*RmapRebuildResult, error) {
	r := &rmapRebuild{}
	return rebuild(ctx, e, opts, rebuildSpec[engine.RmapEvent]{
		Name: "rmap", Tree: format.TreeRmap, Structure: engine.StructRmap,
		ItemSize: format.RmapMappedItemSize, SelfRecords: true,
		Codec: rmapEvents, Gen: rmapGen, Apply: r.apply,
		Chain:  func(e *engine.Engine) *hooks.Chain[engine.RmapEvent] { return &e.Hooks().Rmap },
		Expect: expectRecords,
		Scan: func(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
			// Before any event is applied: they wait for the scan.
			r.maps = s.Super().Incompat&format.IncompatRmapMaps != 0
			return scanRmap(ctx, s, shadow, th, progress)
		},
		Old: func(o *oldTree) { r.old = o },
	})
}

// rmapRebuild is the rmap's own state in a rebuild: the old tree's blocks,
// which its events keep current.
type rmapRebuild struct {
	old  *oldTree // set when the scan has listed them, before any apply
	maps bool     // the image's file records carry their mapping (format 1.2)
	val  []byte
}

// apply applies an rmap event to t (the shadow, the staged tree or the
// swapped-in one) and keeps the set of the old tree's blocks current.
// The shadow serializes the calls.
func (r *rmapRebuild) apply(t *eb.Tree, ev engine.RmapEvent) error {
	k := format.RmapKey(ev.Start, ev.Owner)
	own := !ev.Owner.IsData() && ev.Owner.Tree == format.TreeRmap
	var err error
	switch ev.Op {
	case engine.OpInsert, engine.OpUpdate:
		r.val = rmapItem(r.maps, ev.Owner, ev.Len, ev.Offset, ev.Count).AppendTo(r.val[:0])
		err = t.Put(k, r.val)
		if own && ev.Op == engine.OpInsert {
			r.old.add(ev.Start)
		}
	case engine.OpDelete:
		_, err = t.Delete(k)
		if own {
			r.old.remove(ev.Start)
		}
	}
	if err != nil {
		return fmt.Errorf("%s of %s: %w", ev.Op, k, err)
	}
	return nil
}

// rmapItem is the record of owner for an extent of n blocks of which a file
// maps count from offset: with the mapping only for files on images whose
// format has it.
func rmapItem(maps bool, owner format.Owner, n, offset, count uint64) format.RmapItem {
	if !maps || !owner.IsData() {
		return format.RmapItem{Len: n}
	}
	return format.RmapItem{Len: n, Offset: offset, Count: count}
}

// rmapEvents encodes an rmap event in 72 bytes: generation, op, start,
// length, the owner's tree, inode and offset, and the mapped part, 8 bytes
// each.
var rmapEvents = eventCodec[engine.RmapEvent]{
	size: 9 * 8,
	put: func(b []byte, ev engine.RmapEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		le.PutUint64(b[8:], uint64(ev.Op))
		le.PutUint64(b[16:], uint64(ev.Start))
		le.PutUint64(b[24:], ev.Len)
		le.PutUint64(b[32:], uint64(ev.Owner.Tree))
		le.PutUint64(b[40:], ev.Owner.Inode)
		le.PutUint64(b[48:], ev.Owner.Offset)
		le.PutUint64(b[56:], ev.Offset)
		le.PutUint64(b[64:], ev.Count)
	},
	get: func(b []byte) engine.RmapEvent {
		le := binary.LittleEndian
		return engine.RmapEvent{
			Gen:    format.Gen(le.Uint64(b[0:])),
			Op:     engine.Op(le.Uint64(b[8:])),
			Start:  format.BlockNr(le.Uint64(b[16:])),
			Len:    le.Uint64(b[24:]),
			Owner:  format.Owner{Tree: format.TreeID(le.Uint64(b[32:])), Inode: le.Uint64(b[40:]), Offset: le.Uint64(b[48:])},
			Offset: le.Uint64(b[56:]),
			Count:  le.Uint64(b[64:]),
		}
	},
}

// rmapGen is an rmap event's generation.
func rmapGen(ev engine.RmapEvent) format.Gen { return ev.Gen }

// expectRecords is how many rmap records generation s should hold: the
// rmap tree's own count, unless damage makes it implausible against the
// alloc tree's (each extent has at least one owner, and shared extents
// rarely more than a few), then the alloc tree's.
func expectRecords(s *engine.Snapshot) uint64 {
	var rmaps, allocs uint64
	if t, ok := s.ScanTree(format.TreeRmap); ok {
		rmaps = t.Items
	}
	if t, ok := s.ScanTree(format.TreeAlloc); ok {
		allocs = t.Items
	}
	if rmaps < allocs || rmaps > 4*allocs+1024 {
		return allocs
	}
	return rmaps
}

// scanRmap puts into shadow every rmap record generation s implies,
// counting them in progress, and returns the blocks of the old rmap tree
// (which are among them).
func scanRmap(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	sb := s.Super()
	maps := sb.Incompat&format.IncompatRmapMaps != 0
	var val []byte
	putMapped := func(start format.BlockNr, o format.Owner, n, offset, count uint64) error {
		th.tick()
		progress.Add(1)
		val = rmapItem(maps, o, n, offset, count).AppendTo(val[:0])
		return shadow.Put(format.RmapKey(start, o), val)
	}
	put := func(start format.BlockNr, o format.Owner, n uint64) error {
		return putMapped(start, o, n, 0, 0)
	}
	for _, b := range format.SuperBlocks(sb.TotalBlocks) {
		if err := put(b, format.Owner{Tree: format.OwnerSuper}, 1); err != nil {
			return nil, err
		}
	}
	if sb.Log.Block != 0 {
		if err := put(sb.Log.Block, format.Owner{Tree: format.TreeLog}, 1); err != nil {
			return nil, err
		}
	}
	// The old rmap tree first: if it cannot be walked, its blocks must be
	// derived, which needs every other owner's blocks (claimed).
	var rmapBlocks []format.BlockNr
	rt, _ := s.ScanTree(format.TreeRmap)
	rmapBroken := false
	if err := rt.Check(eb.CheckVisitor{
		Block: func(p eb.Ptr, _ int) { rmapBlocks = append(rmapBlocks, p.Block) },
		// Any problem, a wrong item count included: a subtree whose
		// pointer was lost is still allocated, and only the derivation
		// finds its blocks.
		Problem: func(eb.Problem) { rmapBroken = true },
	}); err != nil {
		return nil, err
	}
	var claimed map[format.BlockNr]bool
	if rmapBroken {
		claimed = map[format.BlockNr]bool{sb.Log.Block: true}
		for _, b := range format.SuperBlocks(sb.TotalBlocks) {
			claimed[b] = true
		}
	}
	for _, id := range s.Trees() {
		if id == format.TreeRmap {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, _ := s.ScanTree(id)
		// Even a wrong item count disqualifies a source tree: it means a
		// record went missing.
		var bad firstProblem
		var perr error
		v := eb.CheckVisitor{
			Block: func(p eb.Ptr, _ int) {
				if claimed != nil {
					claimed[p.Block] = true
				}
				if perr == nil {
					perr = put(p.Block, format.Owner{Tree: id}, 1)
				}
			},
			Problem: bad.note,
		}
		if id == format.TreeExtent {
			v.Item = func(k format.Key, val []byte) {
				if k.Type != format.TypeFileExtent || perr != nil {
					return
				}
				fe, err := format.DecodeFileExtent(val)
				if err != nil {
					perr = fmt.Errorf("file extent %s: %w", k, err)
					return
				}
				perr = putMapped(fe.Start, format.Owner{Inode: k.Obj, Offset: k.Off}, fe.Len, fe.Offset, fe.Count)
			}
		}
		if err := t.Check(v); err != nil {
			return nil, err
		}
		if perr != nil {
			return nil, perr
		}
		if bad.p != nil {
			return nil, fmt.Errorf("cannot rebuild the rmap tree while tree %s is damaged (%s): %w", id, bad.p, format.ErrCorrupt)
		}
	}
	if rmapBroken {
		// The old tree's blocks are the metadata extents no other owner
		// claims.
		rmapBlocks = rmapBlocks[:0]
		at, _ := s.ScanTree(format.TreeAlloc)
		var derr error
		err := at.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			it, err := format.DecodeExtentItem(v)
			if err != nil {
				derr = err
				return false
			}
			if it.Flags == format.ExtentMeta && k.Off == 1 && !claimed[format.BlockNr(k.Obj)] {
				rmapBlocks = append(rmapBlocks, format.BlockNr(k.Obj))
			}
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return nil, fmt.Errorf("derive the old rmap tree's blocks from the alloc tree: %w", err)
		}
	}
	for _, b := range rmapBlocks {
		if err := put(b, format.Owner{Tree: format.TreeRmap}, 1); err != nil {
			return nil, err
		}
	}
	return rmapBlocks, nil
}
