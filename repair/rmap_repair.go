package repair

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"sync"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// Online rebuild of the reverse-mapping tree (the XFS design).
//
// The rmap tree is secondary metadata: every record in it is implied by the
// other trees. Every tree block is owned by its tree, the superblock copies
// by the superblock, the log head by the log, and every data extent by each
// file extent item that maps part of it (inode, file block). So the rebuild:
//
//  1. subscribes to the engine's rmap hook, then pins a committed generation
//     G; events of later generations are buffered while
//  2. a scan of G collects every implied record into a shadow tree — an
//     in-memory B-tree on an xfile (the engine's own B-tree code, pages the
//     kernel can reclaim, no Go heap per record). The old rmap tree's own
//     blocks are records too: found by walking it, or, if it is too damaged
//     to walk, as the metadata extents no other owner claims;
//  3. the buffered events after G are applied, and from then on each event
//     is applied as it is published: the shadow follows every change;
//  4. in one exclusive section: a commit (its events land in the shadow),
//     then reserve the blocks the bulk-load plan needs, load the shadow into
//     them, swap the root, queue the old tree's blocks for freeing, commit.
//     The reserved blocks' records and the old blocks' removal are applied
//     to the new tree by that commit's delayed refs.
//
// The inputs are verified: the scan refuses to proceed if any tree it reads
// is damaged, and a crash at any point leaves the old tree or the new one
// (each commit is atomic). The caller re-checks afterwards; that second
// check is what it reports.

// RmapRebuildOptions configure RebuildRmap.
type RmapRebuildOptions struct {
	TempDir string  // for the xfile; "" means $TMPDIR
	Fill    float64 // bulk-load fill factor; 0 means 0.9
}

// RmapRebuildResult describes a rebuild.
type RmapRebuildResult struct {
	ScanGen        format.Gen    // the pinned generation scanned
	Gen            format.Gen    // the generation that committed the new tree
	Records        uint64        // records in the new tree when loaded
	Events         uint64        // hook events applied to the shadow
	NewBlocks      uint64        // blocks of the new tree
	OldBlocks      uint64        // blocks of the old tree reaped
	XfileBytes     int64         // size of the shadow's xfile
	Duration       time.Duration // whole rebuild
	ExclusivePause time.Duration // writers excluded
}

// rmapShadow is the shadow tree and the hook subscription feeding it.
type rmapShadow struct {
	mu        sync.Mutex
	tree      *eb.Tree
	store     *xfile.BTreeStore
	buffering bool
	buf       []engine.RmapEvent
	after     format.Gen
	events    uint64
	err       error
	// oldBlocks are the live rmap tree's own blocks (records owned by the
	// rmap tree), kept current from the events: the blocks to reap.
	oldBlocks map[format.BlockNr]bool
}

func (s *rmapShadow) apply(ev engine.RmapEvent) {
	if ev.Gen <= s.after || s.err != nil {
		return
	}
	s.events++
	k := format.RmapKey(ev.Start, ev.Owner)
	own := !ev.Owner.IsData() && ev.Owner.Tree == format.TreeRmap
	switch ev.Op {
	case engine.OpInsert:
		s.err = s.tree.Put(k, format.RmapItem{Len: ev.Len}.Encode())
		if own {
			s.oldBlocks[ev.Start] = true
		}
	case engine.OpDelete:
		_, s.err = s.tree.Delete(k)
		if own {
			delete(s.oldBlocks, ev.Start)
		}
	}
}

func (s *rmapShadow) hook(ev engine.RmapEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buffering {
		s.buf = append(s.buf, ev)
		return
	}
	s.apply(ev)
}

// RebuildRmap rebuilds the rmap tree of e online. Writers keep running
// except for the short exclusive section.
func RebuildRmap(ctx context.Context, e *engine.Engine, opts RmapRebuildOptions) (*RmapRebuildResult, error) {
	start := time.Now()
	if opts.Fill == 0 {
		opts.Fill = 0.9
	}
	store, err := xfile.NewBTreeStore(xfile.Options{Dir: opts.TempDir, Name: "rmap shadow"})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	tr, err := store.CreateTree(format.TreeRmap)
	if err != nil {
		return nil, err
	}
	sh := &rmapShadow{tree: tr, store: store, buffering: true}
	h := e.Hooks().Rmap.Register(sh.hook)
	unregistered := false
	defer func() {
		if !unregistered {
			e.Hooks().Rmap.Unregister(h)
		}
	}()
	// A commit after the subscription: every change not in the pinned
	// generation is published after we subscribed.
	if err := e.Sync(); err != nil {
		return nil, err
	}
	snap := e.Pin()
	res := &RmapRebuildResult{ScanGen: snap.Gen()}
	sh.mu.Lock()
	sh.after = snap.Gen()
	sh.mu.Unlock()
	old, err := scanRmap(ctx, snap, tr)
	snap.Release()
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	sh.oldBlocks = make(map[format.BlockNr]bool, len(old))
	for _, b := range old {
		sh.oldBlocks[b] = true
	}
	sh.mu.Unlock()
	// Catch up with what happened during the scan, then follow live.
	sh.mu.Lock()
	for _, ev := range sh.buf {
		sh.apply(ev)
	}
	sh.buf, sh.buffering = nil, false
	err = sh.err
	sh.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("apply live updates to the shadow: %w", err)
	}
	var pause time.Time
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		pause = time.Now()
		// The section's first commit is in the shadow; nothing else can
		// change now.
		e.Hooks().Rmap.Unregister(h)
		unregistered = true
		if sh.err != nil {
			return fmt.Errorf("apply live updates to the shadow: %w", sh.err)
		}
		res.Events = sh.events
		old := make([]format.BlockNr, 0, len(sh.oldBlocks))
		for b := range sh.oldBlocks {
			old = append(old, b)
		}
		slices.Sort(old)
		plan, err := eb.PlanBulkFixed(tr.Items, format.RmapItemSize, opts.Fill)
		if err != nil {
			return err
		}
		blocks, err := x.ReserveBlocks(format.TreeRmap, int(plan.Blocks))
		if err != nil {
			return err
		}
		bs := x.BuildStore(format.TreeRmap, blocks)
		var scanErr error
		nt, err := plan.Build(bs, format.TreeRmap, treeRecords(tr, &scanErr), func(level int) (format.Node, eb.Ptr, error) {
			return bs.Alloc(format.TreeRmap, level)
		})
		if err == nil {
			err = scanErr
		}
		if err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
		x.ReplaceTree(format.TreeRmap, nt)
		x.FreeBlocks(format.TreeRmap, old)
		e.SetRmapSick(false)
		res.Records, res.NewBlocks, res.OldBlocks = nt.Items, plan.Blocks, uint64(len(old))
		res.Gen = x.Gen()
		return nil
	})
	if !pause.IsZero() {
		res.ExclusivePause = time.Since(pause)
	}
	if err != nil {
		return nil, fmt.Errorf("rmap rebuild: %w", err)
	}
	if st, err := store.Stats(); err == nil {
		res.XfileBytes = st.File.Allocated
	}
	res.Duration = time.Since(start)
	return res, nil
}

// treeRecords yields a tree's items in order; a read error lands in *err.
// The values are only valid during the yield (Build copies them).
func treeRecords(t *eb.Tree, err *error) iter.Seq2[format.Key, []byte] {
	return func(yield func(format.Key, []byte) bool) {
		*err = t.Ascend(format.Key{}, yield)
	}
}

// scanRmap puts into shadow every rmap record generation s implies and
// returns the blocks of the old rmap tree (which are among them).
func scanRmap(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree) ([]format.BlockNr, error) {
	put := func(start format.BlockNr, o format.Owner, n uint64) error {
		return shadow.Put(format.RmapKey(start, o), format.RmapItem{Len: n}.Encode())
	}
	sb := s.Super()
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
		Problem: func(p eb.Problem) {
			if p.Kind != format.KindItemCount {
				rmapBroken = true
			}
		},
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
		var bad *eb.Problem
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
			Problem: func(p eb.Problem) {
				if bad == nil && p.Kind != format.KindItemCount {
					pp := p
					bad = &pp
				}
			},
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
				perr = put(fe.Start, format.Owner{Inode: k.Obj, Offset: k.Off}, fe.Len)
			}
		}
		if err := t.Check(v); err != nil {
			return nil, err
		}
		if perr != nil {
			return nil, perr
		}
		if bad != nil {
			return nil, fmt.Errorf("cannot rebuild the rmap tree while tree %s is damaged (%s): %w", id, bad, format.ErrCorrupt)
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
