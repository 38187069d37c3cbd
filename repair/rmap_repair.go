package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
//     to walk, as the metadata extents no other owner claims; they are also
//     kept in a set, the blocks to reap;
//  3. the buffered events after G are applied, and from then on each event
//     is applied as it is published: the shadow follows every change;
//  4. an ordinary transaction reserves the blocks the bulk-load plan needs
//     (owned by the rmap tree, so their records reach the shadow through the
//     hook) and logs an operation that frees them should a crash come before
//     the swap;
//  5. from then on events go to a delta list instead, and the shadow, now
//     still, is bulk-loaded into the reserved blocks: node images staged in
//     a second xfile, written to the device outside any transaction (the
//     blocks are allocated and nothing points at them);
//  6. a short exclusive section commits what is queued (its events join the
//     delta), applies the delta to the new tree with ordinary B-tree
//     operations, swaps the root, replaces the reservation's logged
//     operation by one that frees the old tree's blocks, and commits;
//  7. ordinary transactions free the old blocks in batches, shrinking the
//     logged operation, writers running in between.
//
// The inputs are verified: the scan refuses to proceed if any tree it reads
// is damaged. Every commit is atomic and every multi-commit step is a logged
// operation the mount completes, so a crash at any point leaves the old tree
// or the new one and leaks nothing. The caller re-checks afterwards; that
// second check is what it reports.

// RmapRebuildOptions configure RebuildRmap.
type RmapRebuildOptions struct {
	TempDir string  // directory for the xfiles; "" means anonymous memory
	Fill    float64 // bulk-load fill factor; 0 means 0.9
	// Yield is the share of the scan's time spent sleeping, leaving the
	// CPU to writers: 0 means DefaultYield, negative means none.
	Yield float64
}

// DefaultYield lets the scan use about 80% of one core's time (it also runs
// at the lowest CPU priority).
const DefaultYield = 0.2

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
	// LongestHold is the longest hold of the engine's writer lock while
	// the rebuild ran, whoever held it (the rebuild's updates and
	// commits, the writers' own, the exclusive section's two holds): the
	// longest any writer could have waited for it.
	LongestHold time.Duration
	Phases      []PhaseTime // where the time went, in order

	holds *engine.HoldWatch // the running phase's
}

// PhaseTime is one phase of a rebuild: its start (from the rebuild's
// start), its duration and the longest writer-lock hold in it.
type PhaseTime struct {
	Name        string
	Start       time.Duration
	Took        time.Duration
	LongestHold time.Duration
}

// phase closes the phase running since the last call and names the next
// ("" for none).
func (r *RmapRebuildResult) phase(e *engine.Engine, start time.Time, next string) {
	now := time.Since(start)
	if n := len(r.Phases); n > 0 {
		p := &r.Phases[n-1]
		p.Took = now - p.Start
		p.LongestHold = r.holds.Stop()
		r.LongestHold = max(r.LongestHold, p.LongestHold)
	}
	if next != "" {
		r.Phases = append(r.Phases, PhaseTime{Name: next, Start: now})
		r.holds = e.WatchHolds()
	}
}

// rmapShadow is the shadow tree and the hook subscription feeding it.
type rmapShadow struct {
	mu        sync.Mutex
	tree      *eb.Tree
	store     *xfile.BTreeStore
	buffering bool                          // during the scan: events wait in q
	deltaMode bool                          // after the bulk load's snapshot: events wait in q
	q         *eventQueue[engine.RmapEvent] // the waiting events (xfile arrays, not heap)
	qerr      error                         // a failure to queue one (under mu: err is not)
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

// drain hands the events queued so far to fn, outside the lock (the hook
// appends to the queue's other array meanwhile), and returns how many
// there were.
func (s *rmapShadow) drain(fn func(*xfile.Array) error) (int, error) {
	s.mu.Lock()
	if s.qerr != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("queue live updates: %w", s.qerr)
	}
	batch, err := s.q.take()
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n := int(batch.Len())
	err = fn(batch)
	s.mu.Lock()
	if gerr := s.q.give(batch); err == nil {
		err = gerr
	}
	s.mu.Unlock()
	return n, err
}

func (s *rmapShadow) hook(ev engine.RmapEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.buffering || s.deltaMode && ev.Gen > s.after:
		if s.qerr == nil {
			s.qerr = s.q.push(ev)
		}
	case s.deltaMode:
	default:
		s.apply(ev)
	}
}

// RebuildRmap rebuilds the rmap tree of e online. Writers keep running
// except for the short exclusive section.
func RebuildRmap(ctx context.Context, e *engine.Engine, opts RmapRebuildOptions) (*RmapRebuildResult, error) {
	start := time.Now()
	res := &RmapRebuildResult{}
	res.phase(e, start, "subscribe")
	defer func() {
		if res.holds != nil { // an error ended the rebuild
			res.holds.Stop()
		}
	}()
	if opts.Fill == 0 {
		opts.Fill = 0.9
	}
	if opts.Yield == 0 {
		opts.Yield = DefaultYield
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
	q, err := newEventQueue(xfile.Options{Dir: opts.TempDir, Name: "rmap live updates"}, rmapEvents)
	if err != nil {
		return nil, err
	}
	defer q.close()
	sh := &rmapShadow{tree: tr, store: store, buffering: true, q: q}
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
	res.ScanGen = snap.Gen()
	res.phase(e, start, "scan")
	sh.mu.Lock()
	sh.after = snap.Gen()
	sh.mu.Unlock()
	// The new tree's blocks are reserved while the scan runs, for as many
	// records as the pinned generation is expected to hold (the tree being
	// rebuilt may be damaged, so its count is only trusted within bounds);
	// what the scan finds beyond that is reserved after it, what is left
	// over is freed at the reaping. The reservation mostly waits (its
	// delayed refs are applied in slices that rest while writers wait, its
	// commits are written out), and the scan mostly computes. Its batches
	// keep pace with the scan, at most one ahead, rather than running back
	// to back: at 10M extents, back to back, writers ran at 37% of idle
	// through the scan.
	rv := &reservation{tree: format.TreeRmap, itemSize: format.RmapItemSize}
	expect := expectRecords(snap)
	rctx, stopReserving := context.WithCancel(ctx)
	var progress atomic.Uint64 // records scanned
	scanDone := make(chan struct{})
	keepPace := func(done, want int) {
		for uint64(done)*max(expect, 1) > uint64(want)*progress.Load() {
			select {
			case <-scanDone:
				return
			case <-rctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	reserving := make(chan error, 1)
	go func() {
		reserving <- rv.upTo(rctx, e, expect, opts.Fill, keepPace)
	}()
	var scanned []format.BlockNr
	err = lowPriority(func() (err error) {
		scanned, err = scanRmap(ctx, snap, tr, &throttle{yield: min(opts.Yield, 0.9)}, &progress)
		return err
	})
	close(scanDone)
	snap.Release()
	if err != nil {
		stopReserving()
		<-reserving
		return nil, err
	}
	err = <-reserving
	stopReserving()
	if err != nil {
		return nil, fmt.Errorf("reserve blocks for the new rmap tree: %w", err)
	}
	sh.mu.Lock()
	sh.oldBlocks = make(map[format.BlockNr]bool, len(scanned))
	for _, b := range scanned {
		sh.oldBlocks[b] = true
	}
	sh.mu.Unlock()
	// Catch up with what happened during the scan, then follow live.
	res.phase(e, start, "top-up")
	// In chunks: the events stay buffered (writers' hooks only append)
	// while a chunk is applied outside the lock, so no writer's commit
	// waits for the whole backlog.
	apply := func(ev engine.RmapEvent) error {
		sh.apply(ev)
		return sh.err
	}
	for {
		sh.mu.Lock()
		if sh.err == nil {
			sh.err = sh.qerr
		}
		if sh.err != nil || q.len() < 1024 {
			if sh.err == nil {
				sh.err = rmapEvents.each(q.cur, apply)
			}
			if sh.err == nil {
				sh.err = q.cur.Truncate(0)
			}
			sh.buffering = false
			err = sh.err
			sh.mu.Unlock()
			break
		}
		sh.mu.Unlock()
		// apply works on the shadow, which nothing else touches now.
		if _, err := sh.drain(func(a *xfile.Array) error { return rmapEvents.each(a, apply) }); err != nil {
			return nil, fmt.Errorf("apply live updates to the shadow: %w", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("apply live updates to the shadow: %w", err)
	}
	// 4. Top the reservation up to what the shadow holds (normally
	// nothing: it was reserved during the scan). The shadow holds the
	// reserved blocks' records already; upTo plans for them itself.
	sh.mu.Lock()
	n := tr.Items - min(tr.Items, uint64(len(rv.blocks)))
	sh.mu.Unlock()
	if err := rv.upTo(ctx, e, n, opts.Fill, nil); err != nil {
		return nil, fmt.Errorf("reserve blocks for the new rmap tree: %w", err)
	}
	reserved, ops := rv.blocks, rv.ops
	// 5. Freeze the shadow (events now go to the delta) and bulk-load it.
	res.phase(e, start, "load")
	sh.mu.Lock()
	if sh.err != nil {
		sh.mu.Unlock()
		return nil, fmt.Errorf("apply live updates to the shadow: %w", sh.err)
	}
	sh.deltaMode = true
	records := tr.Items
	loadGen := e.Pin()
	gen := loadGen.Gen() // the reservation is committed in gen or earlier
	loadGen.Release()
	sh.mu.Unlock()
	// The tree now also holds the reserved blocks' records; plan for what
	// it holds, within the reservation (blocks left over are freed at the
	// swap).
	plan, err := eb.PlanBulkFixed(records, format.RmapItemSize, opts.Fill)
	if err != nil {
		return nil, err
	}
	if plan.Blocks > uint64(len(reserved)) {
		return nil, fmt.Errorf("the rmap tree outgrew its reservation (%d records need %d blocks, %d reserved); run the repair again", records, plan.Blocks, len(reserved))
	}
	stage, err := newStageStore(opts.TempDir, "rmap bulk load", e.FSID(), gen, reserved)
	if err != nil {
		return nil, err
	}
	defer stage.close()
	var nt *eb.Tree
	err = lowPriority(func() error {
		var scanErr error
		var err error
		nt, err = plan.Build(stage, format.TreeRmap, treeRecords(tr, &scanErr), func(level int) (format.Node, eb.Ptr, error) {
			return stage.Alloc(format.TreeRmap, level)
		})
		if err == nil {
			err = scanErr
		}
		if err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
		res.phase(e, start, "write")
		return writeStaged(e, stage.nodes, true)
	})
	if err != nil {
		return nil, err
	}
	stage.clean()
	// The old tree's blocks as they stand (the reservation's blocks reached
	// oldBlocks through the hook as rmap-owned blocks; they are the new
	// tree's), logged now, in an ordinary transaction, as blocks to free
	// once no tree reaches them: before the swap they are the live tree's
	// and the operation leaves them alone.
	// Sorted lists searched rather than sets of 100k blocks at 10M
	// extents (the rebuild's heap alone went from 28.5 to 27.3-27.6 MiB).
	sortedReserved := slices.Sorted(slices.Values(reserved))
	isReserved := func(b format.BlockNr) bool { return inSorted(sortedReserved, b) }
	oldList := func() []format.BlockNr {
		var out []format.BlockNr
		for b := range sh.oldBlocks {
			if !isReserved(b) {
				out = append(out, b)
			}
		}
		slices.Sort(out)
		return out
	}
	listed := oldList()
	// One commit per operation of at most opChunk blocks.
	const opChunk = 64 * engine.LoggedOpPart
	for i := 0; i < len(listed); i += opChunk {
		part := listed[i:min(len(listed), i+opChunk)]
		err := commitPaced(e, func(tx *engine.Tx) error {
			op, err := tx.LogFreeUnreachable(format.TreeRmap, part)
			ops = append(ops, op)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("log the reaping of the old rmap tree: %w", err)
		}
	}
	// The old tree's blocks it gains from here on (the updates after the
	// freeze reach oldBlocks only through applyDelta).
	gained := map[format.BlockNr]bool{}
	// Catch up with the live updates gathered meanwhile, on the staged
	// tree, outside any lock, rewriting the nodes that changed, until few
	// are left for the exclusive section.
	res.phase(e, start, "catch-up")
	prev := -1
	for round := 0; round < 8; round++ {
		// Commit what writers queued meanwhile, so its updates reach the
		// delta now rather than in the exclusive section's commit.
		if err := e.Sync(); err != nil {
			return nil, err
		}
		n, err := sh.drain(func(a *xfile.Array) error { return applyDelta(nt, a, sh.oldBlocks, gained) })
		if err != nil {
			return nil, fmt.Errorf("catch up on the staged tree: %w", err)
		}
		if err := writeStaged(e, stage.dirtyNodes, false); err != nil {
			return nil, err
		}
		stage.clean()
		res.Events += uint64(n)
		// Done when few are left, or when a round no longer halves
		// them: a busy writer queues as many updates per round as a
		// round takes (thousands a second), and the exclusive section
		// applies that many in a few milliseconds.
		if n < 256 || prev >= 0 && n > prev/2 {
			break
		}
		prev = n
	}
	unused := stage.unused()
	res.phase(e, start, "swap")
	// 6. The exclusive section: catch up, swap, log the blocks the old
	// tree gained since the listing (known from the updates, so the
	// section's work scales with them, not with the old tree).
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		e.Hooks().Rmap.Unregister(h)
		unregistered = true
		if sh.qerr != nil {
			return fmt.Errorf("queue live updates: %w", sh.qerr)
		}
		res.Events += sh.events + q.len()
		x.ReplaceTree(format.TreeRmap, nt.Root, nt.Level, nt.Items)
		rt, _ := x.ReadTree(format.TreeRmap)
		if err := applyDelta(rt, q.cur, sh.oldBlocks, gained); err != nil {
			return fmt.Errorf("apply live updates to the new tree: %w", err)
		}
		var late []format.BlockNr
		for b := range gained {
			if !inSorted(listed, b) && !isReserved(b) {
				late = append(late, b)
			}
		}
		slices.Sort(late)
		if len(late) > 0 {
			op, err := x.LogFreeUnreachable(format.TreeRmap, late)
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
		e.SetRmapSick(false)
		res.Gen = x.Gen()
		res.ExclusivePause = x.Held()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rmap rebuild: %w", err)
	}
	// Nothing changes the old tree's block set any more (unregistered).
	old := oldList()
	// 7. Reap the old tree and the reserved blocks the load did not use
	// (reap.go).
	res.phase(e, start, "reap")
	if err := reap(e, format.TreeRmap, append(unused, old...), ops); err != nil {
		return nil, fmt.Errorf("reap the old rmap tree: %w", err)
	}
	res.phase(e, start, "")
	res.holds = nil
	res.Records, res.NewBlocks, res.OldBlocks = nt.Items, plan.Blocks, uint64(len(old))
	if st, err := store.Stats(); err == nil {
		res.XfileBytes = st.File.Allocated
	}
	res.Duration = time.Since(start)
	return res, nil
}

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

// applyDelta applies rmap events to tree t and keeps the set of the old
// tree's own blocks current, and the set of those it gained.
func applyDelta(t *eb.Tree, evs *xfile.Array, oldBlocks, gained map[format.BlockNr]bool) error {
	var val [format.RmapItemSize]byte
	return rmapEvents.each(evs, func(ev engine.RmapEvent) error {
		k := format.RmapKey(ev.Start, ev.Owner)
		own := !ev.Owner.IsData() && ev.Owner.Tree == format.TreeRmap
		var err error
		switch ev.Op {
		case engine.OpInsert:
			binary.LittleEndian.PutUint64(val[:], ev.Len)
			err = t.Put(k, val[:])
			if own {
				oldBlocks[ev.Start] = true
				gained[ev.Start] = true
			}
		case engine.OpDelete:
			_, err = t.Delete(k)
			if own {
				delete(oldBlocks, ev.Start)
				delete(gained, ev.Start)
			}
		}
		if err != nil {
			return fmt.Errorf("%s of %s: %w", ev.Op, k, err)
		}
		return nil
	})
}

// scanRmap puts into shadow every rmap record generation s implies,
// counting them in progress, and returns the blocks of the old rmap tree
// (which are among them).
func scanRmap(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	var val [format.RmapItemSize]byte
	put := func(start format.BlockNr, o format.Owner, n uint64) error {
		th.tick()
		progress.Add(1)
		binary.LittleEndian.PutUint64(val[:], n)
		return shadow.Put(format.RmapKey(start, o), val[:])
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
				// Even a wrong item count disqualifies a source tree: it
				// means a record went missing.
				if bad == nil {
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
