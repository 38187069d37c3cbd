package engine

import (
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// An extent in use whose alloc record damage dropped is not new: when a
// file's mapping of it moves to a later file block (its new owner gains a
// reference, its old owner drops one, in one transaction, as a write over
// the front of the extent does), the engine must not count the new
// reference alone and free the extent at the drop. It once did: the
// blocks went back to the allocator while the file still mapped them, the
// next allocation took them, and a file read another's bytes
// (TestScrubRepairDamageOnline/alloc_drop-record, about one run in 80).
// The missing record is damage: the alloc tree is degraded and the
// extent read from the rmap, and nothing is freed.
func TestLostAllocRecordNotFreed(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{Label: "test"}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	old := format.Owner{Inode: 300, Offset: 13}
	var start format.BlockNr
	must(e.Update(func(tx *Tx) error {
		var err error
		start, err = tx.AllocExtent(4, old)
		return err
	}))
	must(e.Sync())
	// The damage: the extent's alloc record is gone (inject's
	// drop-record does this to a leaf).
	must(e.Update(func(tx *Tx) error {
		tx.touched = true
		ok, err := e.trees[format.TreeAlloc].Delete(format.ExtentKey(start, 4))
		if err == nil && !ok {
			t.Fatalf("no alloc record of %d+4", start)
		}
		return err
	}))
	must(e.Sync())
	if e.Degraded(StructAlloc) {
		t.Fatal("degraded before the damage was met")
	}
	moved := format.Owner{Inode: 300, Offset: 15}
	must(e.Update(func(tx *Tx) error {
		tx.AddRef(moved, format.FileExtent{Start: start, Len: 4, Offset: 2, Count: 2})
		return tx.DropRef(start, 4, old)
	}))
	must(e.Sync())
	if !e.Degraded(StructAlloc) {
		t.Fatal("the lost record was not taken for damage: the alloc tree is not degraded")
	}
	overlaps := func(s format.BlockNr, n uint64) bool { return s < start+4 && start < s+format.BlockNr(n) }
	e.alloc.mu.Lock()
	var free []string
	e.alloc.free.Scan(func(s format.BlockNr, n uint64) bool {
		if overlaps(s, n) {
			free = append(free, "free")
		}
		return true
	})
	for _, p := range e.alloc.pending {
		for _, x := range p.extents {
			if overlaps(x.start, x.n) {
				free = append(free, "pending")
			}
		}
	}
	e.alloc.mu.Unlock()
	if len(free) > 0 {
		t.Fatalf("the extent %d+4, still mapped, went back to the allocator (%v)", start, free)
	}
	// Every later allocation keeps off it.
	must(e.Update(func(tx *Tx) error {
		for i := uint64(0); i < 64; i++ {
			s, err := tx.AllocExtent(4, format.Owner{Inode: 400 + i})
			if err != nil {
				return err
			}
			if overlaps(s, 4) {
				t.Fatalf("allocation %d got %d+4, which the file still maps", i, s)
			}
		}
		return nil
	}))
	must(e.Sync())
	// The rmap holds the moved owner alone; the check finds the degraded
	// alloc tree and nothing else (besides rmap_data_owner for every data
	// record: this test makes extents, not files).
	pin := e.Pin()
	rt, _ := pin.Tree(format.TreeRmap)
	n, item, found, err := rmapExtent(rt, start)
	pin.Release()
	if err != nil || !found || n != 4 || item.Refs != 1 {
		t.Fatalf("rmap at %d: %d blocks, %d owners, found %v, %v", start, n, item.Refs, found, err)
	}
	got := slices.DeleteFunc(findingIDs(t, e), func(id string) bool { return id == "rmap:rmap_data_owner" })
	if want := []string{"alloc:tree_untrusted"}; !slices.Equal(got, want) {
		t.Fatalf("check: %v, want %v", got, want)
	}
}
