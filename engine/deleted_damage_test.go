package engine

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// damageRoot flips a byte in the body of tree id's root block in img.
func damageRoot(t *testing.T, e *Engine, img []byte, id format.TreeID) format.BlockNr {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	ri, ok := s.Root(id)
	if !ok {
		t.Fatalf("no tree %s", id)
	}
	b := ri.Root.Block
	img[int64(b)*format.BlockSize+format.HeaderSize+7] ^= 0x10
	return b
}

// TestLoggedOpsDamageMounts: a damaged logged_ops tree holding a pending
// operation (a reservation a crash left) does not refuse the mount: the
// pass marks logged_ops sick and completes nothing (the reserved blocks
// stay allocated, not freed wrongly), writers go on, and the check finds
// the damage and nothing else. Replacing the tree (Exclusive.ResetTree,
// what the repairer does) frees the old tree's block and the reserved
// ones; the image is then clean and the next mount runs the pass normally.
func TestLoggedOpsDamageMounts(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	reserved := reserveCommitted(t, e, 5)
	img := slices.Clone(dev.Bytes()) // a crash: the reservation is pending
	old := damageRoot(t, e, img, format.TreeLoggedOps)
	e.Close()

	dev = disk.NewMemFrom(img)
	if e, err = Open(nopClose{dev}, Options{CommitInterval: -1}); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if !e.Sick(StructLoggedOps) {
		t.Fatal("logged_ops not marked sick")
	}
	if notes := strings.Join(e.MountInfo().Notes, "\n"); !strings.Contains(notes, "logged_ops tree is damaged") {
		t.Fatalf("mount notes:\n%s", notes)
	}
	// What writes the tree in use fails alone, before changing
	// anything: the engine stays writable.
	if err := e.Update(func(tx *Tx) error { return tx.SetScrubCursor(ScrubCursor{Run: 1, NextIno: 9}) }); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("scrub cursor into the damaged tree: %v", err)
	}
	if err := e.Update(func(tx *Tx) error {
		_, err := tx.LogFreeUnreachable(format.TreeRmap, reserved)
		return err
	}); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("logged operation into the damaged tree: %v", err)
	}
	if err := e.Update(func(tx *Tx) error {
		_, err := tx.ReserveMeta(format.TreeRmap, 2)
		return err
	}); err == nil {
		t.Fatal("a reservation while logged_ops is damaged")
	}
	w := newWorkload(3)
	for i := 0; i < 200; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := findingIDs(t, e); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return !strings.HasPrefix(s, "logged_ops:") }) {
		t.Fatalf("findings %v, want only the logged_ops tree's", got)
	}
	// Still allocated: the operation was not completed.
	for _, b := range reserved {
		if n, _, ok, err := e.extentAt(b); err != nil || !ok || n != 1 {
			t.Fatalf("reserved block %d: allocated %v (%v)", b, ok, err)
		}
	}

	cands := map[format.BlockNr]format.TreeID{old: format.TreeLoggedOps}
	for _, b := range reserved {
		cands[b] = format.TreeRmap
	}
	// A block in use is a candidate too: it must stay.
	s := e.Pin()
	inUse, _ := s.Root(format.TreeRmap)
	s.Release()
	cands[inUse.Root.Block] = format.TreeRmap
	freed := 0
	if err := e.RunExclusive(func(x *Exclusive) error {
		_, n, err := x.ResetTree(format.TreeLoggedOps, cands)
		freed = n
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if freed != len(reserved)+1 {
		t.Fatalf("freed %d blocks, want %d", freed, len(reserved)+1)
	}
	mustCheck(t, e)
	img = slices.Clone(dev.Bytes())
	e2 := reopen(t, img, Options{})
	defer e2.Close()
	if e2.Sick(StructLoggedOps) || !slices.Contains(e2.MountInfo().PassesRun, "logged_ops") {
		t.Fatalf("remount: sick %v, passes %v", e2.Sick(StructLoggedOps), e2.MountInfo().PassesRun)
	}
	mustCheck(t, e2)
}

// TestDeletedDamageMounts: a damaged deleted tree does not refuse the
// mount when the deleted_inodes pass meets it before changing anything:
// the deleted structure is marked sick, writers go on; an error after a
// change is still the transaction's.
func TestDeletedDamageMounts(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	img := slices.Clone(dev.Bytes())
	damageRoot(t, e, img, format.TreeDeleted)
	e.Close()

	purge := func(tx *Tx) error {
		tr, _ := tx.ReadTree(format.TreeDeleted)
		return tr.Ascend(format.Key{}, func(format.Key, []byte) bool { return true })
	}
	e = reopen(t, img, Options{DeletedInodes: purge})
	if !e.Sick(StructDeleted) || e.Sick(StructLoggedOps) {
		t.Fatalf("sick: deleted %v, logged_ops %v", e.Sick(StructDeleted), e.Sick(StructLoggedOps))
	}
	w := newWorkload(4)
	for i := 0; i < 100; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := findingIDs(t, e); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return !strings.HasPrefix(s, "deleted:") }) {
		t.Fatalf("findings %v, want only the deleted tree's", got)
	}
	e.Close()

	// Damage met after the pass changed something aborts, as in any
	// writer: the mount fails rather than commit half a pass.
	changeThenFail := func(tx *Tx) error {
		if _, err := tx.Tree(format.TreeDeleted); err != nil {
			return err
		}
		return purge(tx)
	}
	if _, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1, DeletedInodes: changeThenFail}); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("open with a pass failing after a change: %v", err)
	}
}
