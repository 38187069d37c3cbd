package engine

import (
	"errors"
	"fmt"
	"slices"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Degraded modes of the space trees.
//
// The alloc, rmap and free-space trees are each derived from the others
// and the trees they describe, so the engine can run without any one of
// them: while one is sick it stops updating it (its contents are no longer
// trusted, so changing them could only spread the damage) and answers
// from the others, and goes on publishing the changes through the live
// hooks so an online rebuild can follow. The mount stays read-write; only
// damage to two of them at once leaves the engine without a source and
// aborts the transaction.
//
//   - free sick: the free-space tree is not updated; the allocator (always
//     an in-memory index) was loaded from it at mount, or, when it is
//     untrusted at mount, from the gaps of the alloc tree (or of the rmap,
//     when the alloc tree is untrusted too).
//   - alloc sick: the alloc tree is not updated; what applying a delayed
//     ref needs of it — does the extent exist, its length, its reference
//     count — comes from the rmap records at the extent's start (one
//     record per owner, so their count is the reference count).
//   - rmap sick: the rmap tree is not updated (see rmapDamaged).
//
// A degraded tree stays stale after the commit that follows, so its
// sickness is persisted: every commit mirrors it into the superblock's
// recovery_passes_required (passes free_untrusted, alloc_untrusted and
// rmap_untrusted), and a mount that finds the bit set marks the tree sick
// again before it is read. Only the tree's repairer clears it, in the
// exclusive section of its swap, so the commit that makes the new tree
// live also clears the bit; a clean check does not (MarkChecked leaves a
// degraded tree sick): a tree that was not updated for a while can look
// consistent at the checked generation and be stale by the time the mark
// is made.

// Recovery pass ids of the degraded markers (stable on disk).
const (
	PassFreeUntrusted  uint = 4
	PassAllocUntrusted uint = 5
	PassRmapUntrusted  uint = 6
	PassCsumUntrusted  uint = 7
)

// degradedPass maps each structure the engine can run degraded to its
// marker pass: the space trees, which it runs without, and the csum tree,
// which it runs around its damage (see below).
var degradedPass = map[Structure]uint{StructFree: PassFreeUntrusted, StructAlloc: PassAllocUntrusted,
	StructRmap: PassRmapUntrusted, StructCsum: PassCsumUntrusted}

// degradable reports whether s has a degraded mode: damage proven in it
// degrades it (persisted) until its repairer ends it.
func degradable(s Structure) bool { _, ok := degradedPass[s]; return ok }

// degradedBits returns passes with the marker bits set to the degraded
// trees' sickness.
func (e *Engine) degradedBits(passes uint64) uint64 {
	for s, id := range degradedPass {
		if e.Degraded(s) {
			passes |= 1 << id
		} else {
			passes &^= 1 << id
		}
	}
	return passes
}

// markUntrusted marks sick the trees the superblock says were degraded
// when it was written.
func (e *Engine) markUntrusted(sb *format.Super) {
	for s, id := range degradedPass {
		if sb.RecoveryPasses&(1<<id) != 0 {
			e.MarkSick(s, sb.Gen, ErrTreeUntrusted)
		}
	}
}

// spaceDamaged handles an error met while updating the space tree of
// structure s in a delayed-ref run: corruption there marks s sick (the
// engine goes on without it) and reports true; any other error is the
// caller's.
func (e *Engine) spaceDamaged(s Structure, err error) bool {
	return e.spaceDamagedAs(s, ErrTreeUntrusted, err)
}

// spaceDamagedAs is spaceDamaged, counting the damage as id.
func (e *Engine) spaceDamagedAs(s Structure, id ErrorID, err error) bool {
	if !errors.Is(err, format.ErrCorrupt) {
		return false
	}
	if !e.Degraded(s) {
		e.reportDamage(id, "space tree is damaged: marked sick, running without it until it is rebuilt", "tree", s.Name(), "err", err)
	}
	e.MarkSick(s, e.committedGen(), id)
	return true
}

// Degraded mode of the data checksum tree.
//
// A csum record is the crc32c of every block of one data extent, under the
// extent's start; the data is on disk, so a lost record can be computed
// again (without verification: repair/csum_repair.go), and nothing but
// reads of file data depends on it. So damage to the csum tree never
// fails a writer: when a Put, Delete or Get of a record meets corruption
// (format.ErrCorrupt from the tree's blocks: CsumDamaged), the csum
// structure is marked sick and degraded and the operation goes on without
// its csum change.
//
//   - A write (a Put, engine/fs): the data is written and mapped, its
//     record is not stored. The filesystem publishes the checksums on the
//     Csum hook all the same, so a rebuild running then keeps them; an
//     fsync whose log group would need them commits instead of logging
//     (engine/fs/fsync.go); the log replay drops them the same way.
//   - A free (a Delete, deleteCsum): the record stays where it is, in the
//     damaged part of the tree. It is unreadable both ways: a lookup of
//     its key walks the same path and meets the same damage, so it can
//     never be read as the checksums of a later extent at that start (the
//     path of a key below a block nobody can read stays below it: the
//     block cannot change, and what changes around it — nodes copied,
//     split, their first keys lowered — keeps every child's key range).
//     The rebuild drops it.
//   - A read (a Get): the blocks are served unverified and counted
//     (fs.Stats.UnverifiedReads), never EIO; so is a read that finds no
//     record while csum is sick (a Put dropped earlier, a record lost with
//     a dropped pointer). A record that is found and mismatches is EIO, as
//     always.
//
// The transaction stays consistent: a B-tree Put or Delete fails at the
// damaged block before it changes anything below it (Delete looks the key
// up first), and what it changed above it on the way — nodes copied on
// write, an interior node split, a first key lowered, or, after the item
// was removed, a rebalance that stopped at an unreadable sibling — leaves
// a valid tree, which commits like any other.
//
// Unlike a space tree the csum tree is still maintained: every change
// that does not meet the damage is made, so its healthy part stays exact
// and the check compares it as usual (the damage itself is what the check
// reports). The sickness persists (marker pass csum_untrusted), so a
// remount still serves records the damage hid as unverified instead of
// EIO; only the rebuild ends it, in the exclusive section of its swap.

// CsumDamaged handles an error met by a Put, Delete or Get of a csum
// record: corruption marks the csum tree sick and degraded (see above)
// and reports true, the caller going on without the record; any other
// error is the caller's.
func (e *Engine) CsumDamaged(err error) bool {
	if !errors.Is(err, format.ErrCorrupt) {
		return false
	}
	ids := []ErrorID{ErrTreeUntrusted}
	if ce, ok := format.AsCorrupt(err); ok {
		ids[0] = kindID(ce.Kind)
	}
	if !provesDamage(ids[0]) {
		ids = append(ids, ErrTreeUntrusted)
	}
	if !e.Degraded(StructCsum) {
		e.reportDamage(ids[0], "data checksum tree is damaged: marked sick; writes go on without the checksum changes the damage blocks, reads it hides are served unverified, until it is rebuilt", "err", err)
	}
	e.MarkSick(StructCsum, e.committedGen(), ids...)
	return true
}

// CsumDamaged is Engine.CsumDamaged, for a filesystem in a transaction
// (log replay runs before the engine is handed out).
func (tx *Tx) CsumDamaged(err error) bool { return tx.e.CsumDamaged(err) }

// deleteCsum deletes the checksums of the data extent at start (freed):
// damage met in the csum tree drops the delete (see above).
func (e *Engine) deleteCsum(start format.BlockNr) error {
	if _, err := e.trees[format.TreeCsum].Delete(format.CsumKey(start)); err != nil && !e.CsumDamaged(err) {
		return err
	}
	return nil
}

// extentAt returns what the engine knows of the extent starting at start:
// its length and record, from the alloc tree, or, while that is sick, from
// the rmap records at start. found is false when no extent starts there.
func (e *Engine) extentAt(start format.BlockNr) (n uint64, item format.ExtentItem, found bool, err error) {
	if !e.Degraded(StructAlloc) {
		n, item, found, err = e.allocRecord(start)
		if err == nil || !e.spaceDamaged(StructAlloc, err) {
			return n, item, found, err
		}
	}
	if e.Degraded(StructRmap) {
		return 0, item, false, corruptf(format.TreeAlloc, start, "the alloc and rmap trees are both damaged: no record of the extent at %d can be trusted", start)
	}
	return rmapExtent(e.trees[format.TreeRmap], start)
}

// allocRecord reads the alloc tree's record of the extent at start.
func (e *Engine) allocRecord(start format.BlockNr) (n uint64, item format.ExtentItem, found bool, err error) {
	ek, ev, ok, err := e.trees[format.TreeAlloc].First(format.Key{Obj: uint64(start), Type: format.TypeExtentItem})
	if err != nil || !ok || ek.Obj != uint64(start) || ek.Type != format.TypeExtentItem {
		return 0, item, false, err
	}
	if item, err = format.DecodeExtentItem(ev); err != nil {
		return 0, item, false, err
	}
	return ek.Off, item, true, nil
}

// rmapExtent derives the record of the extent at start from the rmap
// records there: one per owner, the length in each.
func rmapExtent(rmap *eb.Tree, start format.BlockNr) (n uint64, item format.ExtentItem, found bool, err error) {
	var derr error
	err = rmap.Ascend(format.Key{Obj: uint64(start)}, func(k format.Key, v []byte) bool {
		if k.Obj != uint64(start) {
			return false
		}
		it, err := format.DecodeRmapItem(v)
		if err != nil {
			derr = err
			return false
		}
		if found && it.Len != n {
			derr = corruptf(format.TreeRmap, start, "owners of the extent at %d disagree on its length (%d and %d)", start, n, it.Len)
			return false
		}
		found, n = true, it.Len
		item.Refs++
		item.Flags = format.ExtentMeta
		if k.Type == format.TypeRmapInode {
			item.Flags = format.ExtentData
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return n, item, found, err
}

// spaceSource walks the extents a tree says are in use, in order: the alloc
// tree's records, or the rmap's (several owners of one extent come one
// after another with the same start and length).
type spaceSource func(fn func(start format.BlockNr, n uint64) error) error

// allocSource walks the alloc tree t.
func allocSource(t *eb.Tree) spaceSource {
	return func(fn func(format.BlockNr, uint64) error) error {
		var ferr error
		err := t.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			if k.Type != format.TypeExtentItem {
				return true
			}
			ferr = fn(format.BlockNr(k.Obj), k.Off)
			return ferr == nil
		})
		if err == nil {
			err = ferr
		}
		return err
	}
}

// rmapSource walks the rmap tree t.
func rmapSource(t *eb.Tree) spaceSource {
	return func(fn func(format.BlockNr, uint64) error) error {
		var ferr error
		err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			it, err := format.DecodeRmapItem(v)
			if err != nil {
				ferr = err
				return false
			}
			ferr = fn(format.BlockNr(k.Obj), it.Len)
			return ferr == nil
		})
		if err == nil {
			err = ferr
		}
		return err
	}
}

// freeGaps calls fn for every maximal run of blocks of a device of total
// blocks that no extent of src covers, in order: the free space the
// source implies.
func freeGaps(total uint64, src spaceSource, fn func(start format.BlockNr, n uint64)) error {
	var pos uint64
	err := src(func(start format.BlockNr, n uint64) error {
		s := uint64(start)
		if n == 0 || s+n > total || s+n < s {
			return corruptf(format.TreeAlloc, start, "extent %d+%d out of range", s, n)
		}
		if s+n <= pos {
			return nil // another owner of an extent seen already
		}
		if s < pos {
			return corruptf(format.TreeAlloc, start, "extent %d+%d overlaps the one before it", s, n)
		}
		if s > pos {
			fn(format.BlockNr(pos), s-pos)
		}
		pos = s + n
		return nil
	})
	if err != nil {
		return err
	}
	if pos < total {
		fn(format.BlockNr(pos), total-pos)
	}
	return nil
}

// loadAllocator fills a new allocator from the committed free space: the
// free-space tree, or, when that is sick, the gaps of the alloc tree (of
// the rmap when the alloc tree is sick too). It returns the allocator and
// the free blocks it holds.
func (e *Engine) loadAllocator(trees map[format.TreeID]*eb.Tree) (*allocator, uint64, error) {
	a := newAllocator(e.totalBlocks)
	var free uint64
	add := func(s format.BlockNr, n uint64) {
		a.release(s, n)
		free += n
	}
	if !e.Degraded(StructFree) {
		var kerr error
		err := trees[format.TreeFree].Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			if k.Type != format.TypeFreeExtent || k.Off == 0 || k.Obj+k.Off > e.totalBlocks || k.Obj+k.Off < k.Obj {
				kerr = corruptf(format.TreeFree, format.BlockNr(k.Obj), "free extent %s out of range", k)
				return false
			}
			add(format.BlockNr(k.Obj), k.Off)
			return true
		})
		if err == nil {
			err = kerr
		}
		if err == nil {
			return a, free, nil
		}
		if !errors.Is(err, format.ErrCorrupt) {
			return nil, 0, err
		}
		e.MarkSick(StructFree, e.committedGen(), ErrTreeUntrusted)
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the free-space tree is damaged (%v): free space loaded from the alloc tree", err))
		a, free = newAllocator(e.totalBlocks), 0
	}
	if !e.Degraded(StructAlloc) {
		err := freeGaps(e.totalBlocks, allocSource(trees[format.TreeAlloc]), add)
		if err == nil {
			return a, free, nil
		}
		if !errors.Is(err, format.ErrCorrupt) {
			return nil, 0, fmt.Errorf("load free space from the alloc tree: %w", err)
		}
		e.MarkSick(StructAlloc, e.committedGen(), ErrTreeUntrusted)
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the alloc tree is damaged too (%v): free space loaded from the rmap", err))
		a, free = newAllocator(e.totalBlocks), 0
	}
	if e.Degraded(StructRmap) {
		return nil, 0, fmt.Errorf("load free space: the free-space, alloc and rmap trees are all untrusted: %w", format.ErrCorrupt)
	}
	if err := freeGaps(e.totalBlocks, rmapSource(trees[format.TreeRmap]), add); err != nil {
		return nil, 0, fmt.Errorf("load free space from the rmap: %w", err)
	}
	return a, free, nil
}

// DamagedFreeTree tells the engine that the free-space tree's committed
// blocks were damaged behind its back (fault injection, repair.InjectOnline):
// the invariants build, which compares the allocator with that tree at
// every commit to catch the engine's own mistakes, stops doing so until
// the tree is rebuilt — the damage is the point, not a bug. It changes
// nothing else: the engine finds the damage as it would any other.
func (e *Engine) DamagedFreeTree() { e.freeDamaged.Store(true) }

// ReconcileAllocator asks the commit that ends the exclusive section to
// bring the allocator in line with the free-space tree, once its delayed
// refs are applied: the free-space repairer's last step. The allocator
// was loaded from the old tree (or from the alloc tree's gaps) and kept
// current since; what the rebuilt tree holds free that the allocator
// never knew (space a damaged tree had lost) becomes allocatable, and
// what the allocator holds free that the tree says is used (space a
// damaged tree wrongly held free) is taken out of it.
func (x *Exclusive) ReconcileAllocator() { x.e.reconcileAlloc = true }

// reconcileAllocator does it; wmu held, delayed refs applied. held are
// the extents the commit releases when it is durable (free in the tree,
// not yet in the allocator). It returns how many blocks it gained and
// lost.
func (e *Engine) reconcileAllocator(held []extent) (gained, lost uint64, err error) {
	var tree []extent
	if err := e.trees[format.TreeFree].Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
		tree = append(tree, extent{format.BlockNr(k.Obj), k.Off})
		return true
	}); err != nil {
		return 0, 0, err
	}
	var free, busy []extent // the allocator's free index; its pending and held extents
	a := e.alloc
	a.mu.Lock()
	a.free.Scan(func(s format.BlockNr, n uint64) bool {
		free = append(free, extent{s, n})
		return true
	})
	for _, p := range a.pending {
		busy = append(busy, p.extents...)
	}
	a.mu.Unlock()
	busy = append(busy, held...)
	tree, free, busy = normalize(tree), normalize(free), normalize(busy)
	known := normalize(append(slices.Clone(free), busy...))
	for _, x := range subtractExtents(tree, known) {
		a.release(x.start, x.n)
		gained += x.n
	}
	for _, x := range subtractExtents(free, tree) {
		if err := a.claim(x.start, x.n); err != nil {
			return gained, lost, err
		}
		lost += x.n
	}
	return gained, lost, nil
}

// subtractExtents returns the blocks of a (sorted, merged extents) that
// are not in b (sorted, merged), as sorted extents.
func subtractExtents(a, b []extent) []extent {
	var out []extent
	j := 0
	for _, x := range a {
		s, end := uint64(x.start), uint64(x.start)+x.n
		for j < len(b) && uint64(b[j].start)+b[j].n <= s {
			j++
		}
		for k := j; k < len(b) && uint64(b[k].start) < end && s < end; k++ {
			bs, be := uint64(b[k].start), uint64(b[k].start)+b[k].n
			if bs > s {
				out = append(out, extent{format.BlockNr(s), bs - s})
			}
			s = max(s, be)
		}
		if s < end {
			out = append(out, extent{format.BlockNr(s), end - s})
		}
	}
	return out
}
