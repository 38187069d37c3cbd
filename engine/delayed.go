package engine

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tidwall/btree"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Delayed references (the btrfs design).
//
// Every allocation, free, and reference increment or decrement of an extent
// becomes an entry in an ordered queue keyed by the rmap key of the change —
// (start block, owner) — instead of an immediate update of the alloc, rmap
// and free-space trees. Two updates of the same key add up; an increment and
// a decrement cancel and leave nothing: an extent allocated and freed again
// in the same transaction costs no tree update at all. That is the common
// case for data overwritten before the next commit (every copy-on-write
// overwrite allocates a new extent and frees the previous one) and for tree
// nodes born in a split and merged away again. A committed tree node copied
// on write is not such a case: it is copied once per transaction, and its
// free and its copy's allocation are different blocks. At commit, and
// whenever the queue grows past its limit, the queue is applied in
// disk-address order, so the three trees are modified in one sweep.
//
// Applying entries modifies the alloc, rmap and free trees, which copies
// their blocks and so queues more entries; the run repeats until the queue is
// empty. It converges because a block already copied in this transaction is
// modified in place: only node splits allocate, and they become rarer with
// each pass.
//
// Within one start block, an extent that only changes owners applies its
// increments first, so its count never passes through zero; when a
// different extent takes over the start block in the same transaction
// (the old one freed, a new one allocated), decrements apply first, so the
// block never has two alloc records and the free-space tree never has to
// hold it twice.

type refEntry struct {
	key   format.Key // format.RmapKey(start, owner)
	start format.BlockNr
	n     uint64
	owner format.Owner
	flags uint64
	delta int64
	// m is the part of the extent a file maps (format 1.2 rmap records):
	// the latest one queued; Count 0 when none was.
	m format.RmapItem
	// created: the first change queued was an increment, so the record
	// did not exist before. An entry whose changes cancel out is then
	// dropped; otherwise (a decrement and an increment, or a remap) it
	// stays, with delta 0, to rewrite the record's mapping.
	created bool
}

// RefStats counts delayed-ref activity.
type RefStats struct {
	Queued   uint64 // updates queued
	Merged   uint64 // updates that cancelled out and were never applied
	Applied  uint64 // entries applied to the trees
	Runs     uint64 // queue runs
	Throttle uint64 // runs forced by the queue limit
	TreeMods uint64 // modifications of the alloc, rmap and free trees
}

type delayedRefs struct {
	q *btree.BTreeG[*refEntry] // pointers: comparisons copy no entries
	// free is the free-space change being gathered: a run of adjacent
	// extents allocated (or freed) one after another is taken out of (or
	// put into) the free-space tree once, as one range.
	free  freeRun
	stats struct {
		queued, merged, applied, runs, throttle, treeMods atomic.Uint64
	}
}

// freeRun is a range of blocks the free-space tree has yet to lose (alloc)
// or gain; n == 0: none.
type freeRun struct {
	alloc bool
	start format.BlockNr
	n     uint64
}

func newDelayedRefs() *delayedRefs {
	// Only the writer (holding wmu) touches the queue: no locks.
	return &delayedRefs{q: btree.NewBTreeGOptions(func(a, b *refEntry) bool { return a.key.Less(b.key) }, btree.Options{NoLocks: true})}
}

func (d *delayedRefs) len() int { return d.q.Len() }

func (d *delayedRefs) snapshot() RefStats {
	return RefStats{
		Queued: d.stats.queued.Load(), Merged: d.stats.merged.Load(), Applied: d.stats.applied.Load(),
		Runs: d.stats.runs.Load(), Throttle: d.stats.throttle.Load(), TreeMods: d.stats.treeMods.Load(),
	}
}

// add queues delta references to extent [start, start+n) by owner, and
// (m.Count != 0) the part of it the owner maps. A delta of 0 only rewrites
// the mapping of an existing record.
func (d *delayedRefs) add(start format.BlockNr, n uint64, owner format.Owner, flags uint64, delta int64, m format.RmapItem) {
	d.stats.queued.Add(1)
	e := &refEntry{key: format.RmapKey(start, owner), start: start, n: n, owner: owner, flags: flags, delta: delta, m: m, created: delta > 0}
	// One search when the key is new (the common case); a second one to
	// merge with a queued entry.
	old, ok := d.q.Set(e)
	if !ok {
		return
	}
	old.delta += delta
	if m.Mapped() {
		old.m = m
	}
	if old.delta == 0 && (old.created || !old.m.Mapped()) {
		d.q.Delete(old)
		d.stats.merged.Add(2)
		return
	}
	d.q.Set(old)
}

// runDelayedRefs applies the whole queue to the trees of the running
// transaction.
func (e *Engine) runDelayedRefs() error { return e.runDelayedRefsN(0) }

// runDelayedRefsN applies the queue from its lowest start block, whole start
// blocks at a time, until at least limit entries are applied (limit 0: the
// whole queue). Entries the application itself queues (blocks of the alloc,
// rmap and free trees copied on write) join the queue like any other.
func (e *Engine) runDelayedRefsN(limit int) error {
	d := e.refs
	if d.len() == 0 {
		return nil
	}
	d.stats.runs.Add(1)
	var batch []*refEntry
	applied := 0
	for d.len() > 0 && (limit == 0 || applied < limit) {
		var err error
		if batch, err = e.applyStart(batch[:0]); err != nil {
			d.free = freeRun{}
			return err
		}
		applied += len(batch)
	}
	// The free-space change gathered last (its tree updates may queue
	// more refs: blocks of the free-space tree copied on write, left to
	// the next run).
	return e.freeFlush()
}

// applyStart takes the queued entries of the lowest start block out of the
// queue (into batch, which it returns) and applies them.
func (e *Engine) applyStart(batch []*refEntry) ([]*refEntry, error) {
	d := e.refs
	first, _ := d.q.Min()
	d.q.Ascend(first, func(r *refEntry) bool {
		if r.start != first.start {
			return false
		}
		batch = append(batch, r)
		return true
	})
	for _, r := range batch {
		d.q.Delete(r)
	}
	// One extent gaining and losing owners: increments first, so its
	// count never touches zero on the way. A different extent taking over
	// the start block (the old one freed, a new one allocated in the same
	// transaction): decrements first, and the new one's checksums (already
	// stored under the same start) stay.
	reuse, dataInc := false, false
	for _, r := range batch {
		reuse = reuse || r.n != batch[0].n || r.flags != batch[0].flags
		dataInc = dataInc || (r.delta > 0 && r.flags == format.ExtentData)
	}
	sign := 1
	if reuse {
		sign = -1
	}
	slices.SortStableFunc(batch, func(a, b *refEntry) int {
		return sign * (cmpSign(b.delta) - cmpSign(a.delta))
	})
	for _, r := range batch {
		if err := e.applyRef(*r, dataInc); err != nil {
			return batch, fmt.Errorf("apply delayed ref for %s at block %d: %w", r.owner, r.start, err)
		}
		d.stats.applied.Add(1)
	}
	return batch, nil
}

// settleSlice bounds how many delayed refs one step of settleAhead applies
// while it holds writers out (about 3 ms on the 10M-extent benchmark).
const settleSlice = 512

// settleAhead applies the delayed-ref queue in slices of settleSlice
// entries, taking wmu for each, until at most settleSlice are left: writers
// run between the slices, and a commit that follows settles under wmu only
// what they queued meanwhile. (btrfs runs most delayed refs of a
// transaction the same way, before the commit blocks new writers.) When
// writers are waiting, it rests as long as the slice took before taking
// the lock again: a mutex released and at once retaken lets a waiter in
// for one operation per slice (a writer of 4 KiB writes ran at 37% of its
// rate while a rebuild's reservations settled). Whether writers wait is
// asked before the lock is released, and only counted waits (lockWriter)
// are seen: a writer taking wmu uncounted on every write (the free-space
// check before it) once hid every wait, and the rest never came. The
// number of slices is
// bounded, so writers that queue faster than it applies cannot keep it
// running.
func (e *Engine) settleAhead() error {
	e.wmu.Lock()
	steps := 2*e.refs.len()/settleSlice + 4
	e.wmu.Unlock()
	for i := 0; i < steps; i++ {
		e.wmu.Lock()
		if e.writable() != nil || e.refs.len() <= settleSlice {
			e.wmu.Unlock()
			return nil
		}
		began := time.Now()
		if err := e.runDelayedRefsN(settleSlice); err != nil {
			e.abort(err)
			e.wmu.Unlock()
			return err
		}
		took := time.Since(began)
		// Asked while the lock is held: a waiting writer cannot have
		// taken it yet (once unlocked it may have, and counted itself out).
		contended := e.waiting.Load() > 0
		e.wmu.Unlock()
		if contended {
			time.Sleep(took)
		}
	}
	return nil
}

func cmpSign(v int64) int {
	if v < 0 {
		return -1
	}
	return 1
}

// applyRef updates the alloc, rmap and free-space trees for one entry.
func (e *Engine) applyRef(r refEntry, keepCsum bool) error {
	t := e.txn
	alloc, rmap := e.trees[format.TreeAlloc], e.trees[format.TreeRmap]
	item, found, err := e.refTarget(r)
	if err != nil {
		return err
	}
	ne := t.newExtents[r.start]
	if ne != nil && ne.n == r.n {
		ne.applied = true
	}
	mods := &e.refs.stats.treeMods
	if r.delta == 0 {
		return e.remapRef(r)
	}
	if r.delta > 0 {
		if !found {
			item = format.ExtentItem{Refs: 0, Flags: r.flags}
			if err := e.freeChange(true, r.start, r.n); err != nil {
				return err
			}
			e.freeCount -= r.n
		}
		item.Refs += uint64(r.delta)
		if err := e.allocUpdate(alloc, r.start, r.n, &item); err != nil {
			return err
		}
		mods.Add(1)
		e.hooks.Alloc.Call(AllocEvent{Gen: t.gen, Op: opFor(found, false), Start: r.start, Len: r.n, Refs: item.Refs, Flags: item.Flags})
		if !e.Degraded(StructRmap) {
			if err := rmap.Insert(r.key, e.rmapValue(r)); err != nil {
				if !e.rmapDamaged(err) {
					return fmt.Errorf("rmap insert %s: %w", r.key, err)
				}
			} else {
				mods.Add(1)
			}
		}
		e.hooks.Rmap.Call(RmapEvent{Gen: t.gen, Op: OpInsert, Start: r.start, Len: r.n, Owner: r.owner, Offset: r.m.Offset, Count: r.m.Count})
		return nil
	}
	if !e.Degraded(StructRmap) {
		ok, err := rmap.Delete(r.key)
		if err == nil && !ok {
			err = corruptf(format.TreeRmap, r.start, "no reverse mapping for %s", r.owner)
		}
		if err != nil {
			if !e.rmapDamaged(err) {
				return err
			}
		} else {
			mods.Add(1)
		}
	}
	e.hooks.Rmap.Call(RmapEvent{Gen: t.gen, Op: OpDelete, Start: r.start, Len: r.n, Owner: r.owner})
	item.Refs -= uint64(-r.delta)
	if item.Refs > 0 {
		mods.Add(1)
		e.hooks.Alloc.Call(AllocEvent{Gen: t.gen, Op: OpUpdate, Start: r.start, Len: r.n, Refs: item.Refs, Flags: item.Flags})
		return e.allocUpdate(alloc, r.start, r.n, &item)
	}
	if err := e.allocUpdate(alloc, r.start, r.n, nil); err != nil {
		return err
	}
	mods.Add(1)
	e.hooks.Alloc.Call(AllocEvent{Gen: t.gen, Op: OpDelete, Start: r.start, Len: r.n, Flags: item.Flags})
	if err := e.freeChange(false, r.start, r.n); err != nil {
		return err
	}
	e.freeCount += r.n
	if item.Flags == format.ExtentData && !keepCsum {
		// The extent's data checksums go with it.
		if err := e.deleteCsum(r.start); err != nil {
			return err
		}
	}
	switch {
	case ne == nil:
		// Refs are applied in block order, so a free adjacent to the
		// last one usually extends it: a pinned scan keeps every
		// generation's list while it runs (at 10M extents, with a
		// writer, tens of MiB as one extent per freed block).
		if n := len(t.pendingFree); n > 0 && t.pendingFree[n-1].start+format.BlockNr(t.pendingFree[n-1].n) == r.start {
			t.pendingFree[n-1].n += r.n
		} else {
			t.pendingFree = append(t.pendingFree, extent{r.start, r.n})
		}
	case ne.parked && ne.refs == 0:
		ne.parked = false
		e.releaseNew(r.start, r.n)
	}
	return nil
}

// rmapValue encodes the rmap record of r: with the mapping only on images
// whose format has it (IncompatRmapMaps).
func (e *Engine) rmapValue(r refEntry) []byte {
	it := format.RmapItem{Len: r.n}
	if r.owner.IsData() && e.super.Incompat&format.IncompatRmapMaps != 0 {
		it.Offset, it.Count = r.m.Offset, r.m.Count
	}
	return it.Encode()
}

// remapRef rewrites the mapping of an existing file rmap record (the
// file extent item kept its key and changed its range).
func (e *Engine) remapRef(r refEntry) error {
	if !e.Degraded(StructRmap) {
		rmap := e.trees[format.TreeRmap]
		found, err := rmap.Lookup(r.key, func([]byte) {})
		if err == nil && found {
			err = rmap.Put(r.key, e.rmapValue(r))
		} else if err == nil {
			err = corruptf(format.TreeRmap, r.start, "no reverse mapping for %s to remap", r.owner)
		}
		if err != nil {
			if !e.rmapDamaged(err) {
				return fmt.Errorf("rmap remap %s: %w", r.key, err)
			}
		} else {
			e.refs.stats.treeMods.Add(1)
		}
	}
	e.hooks.Rmap.Call(RmapEvent{Gen: e.txn.gen, Op: OpUpdate, Start: r.start, Len: r.n, Owner: r.owner, Offset: r.m.Offset, Count: r.m.Count})
	return nil
}

// refTarget returns the record of the extent r changes, and whether it
// exists, checked against r. A record of the alloc tree that contradicts
// the change (another length, a reference dropped that it does not
// count) is damage: the alloc tree is degraded and the record derived
// from the rmap instead.
func (e *Engine) refTarget(r refEntry) (format.ExtentItem, bool, error) {
	for {
		n, item, found, err := e.extentAt(r.start)
		switch {
		case err != nil:
		case found && n != r.n:
			err = corruptf(format.TreeAlloc, r.start, "extent of %d blocks recorded, reference is for %d", n, r.n)
		case r.delta < 0 && !found:
			err = corruptf(format.TreeAlloc, r.start, "dropping a reference of %s to an extent that is not allocated", r.owner)
		case r.delta < 0 && uint64(-r.delta) > item.Refs:
			err = corruptf(format.TreeAlloc, r.start, "dropping %d references of %d", -r.delta, item.Refs)
		case r.delta > 0 && !found && !e.Degraded(StructAlloc):
			err = e.lostRecord(r)
		}
		if err != nil && !e.Degraded(StructAlloc) && e.spaceDamaged(StructAlloc, err) {
			continue // again, from the rmap
		}
		return item, found, err
	}
}

// lostRecord tells, for a reference r gains to an extent the alloc tree
// has no record of, a new extent from one whose record damage dropped:
// an extent allocated in the running or the in-flight generation has
// none yet; any other is in use, its owners in the rmap. Taken for new,
// the latter would count r's reference alone, and the drop of an older
// owner (a file block's mapping moving to a later key gains the new owner
// and drops the old one) would free it while the file still maps it. So
// rmap records at the start (other owners: r's own is inserted after
// this) prove the record lost: damage, which degrades the alloc tree,
// and the extent is then read from the rmap. Only this rare path reads
// the rmap; a new extent's first reference costs nothing more.
func (e *Engine) lostRecord(r refEntry) error {
	if e.isNewExtent(r.start) || e.Degraded(StructRmap) {
		return nil
	}
	n, item, found, err := rmapExtent(e.trees[format.TreeRmap], r.start)
	if err != nil {
		if e.rmapDamaged(err) {
			return nil
		}
		return err
	}
	if !found {
		return nil
	}
	return corruptf(format.TreeAlloc, r.start, "no record of the extent at %d, which the rmap gives %d owners of %d blocks", r.start, item.Refs, n)
}

// allocUpdate puts the alloc record of extent [start, start+n) (deletes
// it when item is nil), unless the alloc tree is degraded; damage met
// doing so degrades it.
func (e *Engine) allocUpdate(alloc *eb.Tree, start format.BlockNr, n uint64, item *format.ExtentItem) error {
	if e.Degraded(StructAlloc) {
		return nil
	}
	var err error
	if item != nil {
		err = alloc.Put(format.ExtentKey(start, n), item.Encode())
	} else {
		_, err = alloc.Delete(format.ExtentKey(start, n))
	}
	if err != nil && e.spaceDamaged(StructAlloc, err) {
		return nil
	}
	return err
}

func opFor(existed, deleted bool) Op {
	switch {
	case deleted:
		return OpDelete
	case existed:
		return OpUpdate
	}
	return OpInsert
}

// freeChange gathers a change of the free-space tree: [start, start+n)
// allocated (alloc) or freed. A change that extends the range gathered so
// far, the same way, joins it; any other applies the gathered range first,
// so the tree sees the changes in their order. Allocations in a row (a
// reservation's blocks, a sequential write's extents) and frees of
// neighbours cost one update of the tree instead of one each.
func (e *Engine) freeChange(alloc bool, start format.BlockNr, n uint64) error {
	f := &e.refs.free
	if f.n > 0 && f.alloc == alloc && uint64(f.start)+f.n == uint64(start) {
		f.n += n
		return nil
	}
	if err := e.freeFlush(); err != nil {
		return err
	}
	*f = freeRun{alloc: alloc, start: start, n: n}
	return nil
}

// freeFlush applies the gathered free-space change.
func (e *Engine) freeFlush() error {
	f := e.refs.free
	if f.n == 0 {
		return nil
	}
	e.refs.free = freeRun{}
	if e.Degraded(StructFree) {
		return nil
	}
	var err error
	if f.alloc {
		err = e.freeTreeRemove(f.start, f.n)
	} else {
		err = e.freeTreeAdd(f.start, f.n)
	}
	if err != nil && e.spaceDamaged(StructFree, err) {
		return nil
	}
	return err
}

// freeTreeRemove takes [start, start+n) out of the free-space tree; it must
// be free. (A range gathered from several allocations lies within one free
// extent of a healthy tree, whose free neighbours are merged; one that
// spans unmerged neighbours is taken out of each.)
func (e *Engine) freeTreeRemove(start format.BlockNr, n uint64) error {
	ft := e.trees[format.TreeFree]
	for n > 0 {
		k, _, ok, err := ft.Last(format.FreeKey(start, ^uint64(0)))
		if err != nil {
			return err
		}
		if !ok || k.Type != format.TypeFreeExtent || k.Obj > uint64(start) || k.Obj+k.Off <= uint64(start) {
			return corruptf(format.TreeFree, start, "allocating %d blocks at %d that the free-space tree does not hold free", n, start)
		}
		s, l := format.BlockNr(k.Obj), k.Off
		take := min(n, uint64(s)+l-uint64(start))
		if _, err := ft.Delete(k); err != nil {
			return err
		}
		e.refs.stats.treeMods.Add(1)
		e.hooks.Free.Call(FreeEvent{Gen: e.txn.gen, Op: OpDelete, Start: s, Len: l})
		if start > s {
			if err := e.freeInsert(ft, s, uint64(start-s)); err != nil {
				return err
			}
		}
		if end := uint64(start) + take; end < uint64(s)+l {
			if err := e.freeInsert(ft, format.BlockNr(end), uint64(s)+l-end); err != nil {
				return err
			}
		}
		start, n = start+format.BlockNr(take), n-take
	}
	return nil
}

func (e *Engine) freeInsert(ft *eb.Tree, s format.BlockNr, l uint64) error {
	if err := ft.Insert(format.FreeKey(s, l), nil); err != nil {
		return err
	}
	e.refs.stats.treeMods.Add(1)
	e.hooks.Free.Call(FreeEvent{Gen: e.txn.gen, Op: OpInsert, Start: s, Len: l})
	return nil
}

// freeTreeAdd records [start, start+n) as free, merging with free neighbours.
func (e *Engine) freeTreeAdd(start format.BlockNr, n uint64) error {
	ft := e.trees[format.TreeFree]
	end := uint64(start) + n
	// The next free extent at or after start must begin at or after end.
	nk, _, ok, err := ft.First(format.FreeKey(start, 0))
	if err != nil {
		return err
	}
	if ok && nk.Type == format.TypeFreeExtent && nk.Obj < end {
		return corruptf(format.TreeFree, start, "freeing %d blocks at %d overlaps free extent %d+%d", n, start, nk.Obj, nk.Off)
	}
	if ok && nk.Type == format.TypeFreeExtent && nk.Obj == end {
		if _, err := ft.Delete(nk); err != nil {
			return err
		}
		e.refs.stats.treeMods.Add(1)
		e.hooks.Free.Call(FreeEvent{Gen: e.txn.gen, Op: OpDelete, Start: format.BlockNr(nk.Obj), Len: nk.Off})
		n += nk.Off
	}
	pk, _, ok, err := ft.Last(format.FreeKey(start, 0))
	if err != nil {
		return err
	}
	if ok && pk.Type == format.TypeFreeExtent {
		if pk.Obj+pk.Off > uint64(start) {
			return corruptf(format.TreeFree, start, "freeing %d blocks at %d overlaps free extent %d+%d", n, start, pk.Obj, pk.Off)
		}
		if pk.Obj+pk.Off == uint64(start) {
			if _, err := ft.Delete(pk); err != nil {
				return err
			}
			e.refs.stats.treeMods.Add(1)
			e.hooks.Free.Call(FreeEvent{Gen: e.txn.gen, Op: OpDelete, Start: format.BlockNr(pk.Obj), Len: pk.Off})
			start, n = format.BlockNr(pk.Obj), n+pk.Off
		}
	}
	return e.freeInsert(ft, start, n)
}

func corruptf(tree format.TreeID, b format.BlockNr, f string, args ...any) error {
	return &format.CorruptError{Kind: format.KindBadItem, Tree: tree, Block: b, Detail: fmt.Sprintf(f, args...)}
}

// rmapDamaged handles an error from the rmap tree while applying refs. The
// rmap tree is secondary metadata, rebuilt from the others: if it is
// corrupt, the engine marks it sick and goes on without it (a degraded
// mount) instead of aborting the transaction, and keeps publishing rmap
// events so an online rebuild can follow. It reports whether err was such
// damage.
func (e *Engine) rmapDamaged(err error) bool {
	return e.spaceDamagedAs(StructRmap, ErrRmapSick, err)
}
