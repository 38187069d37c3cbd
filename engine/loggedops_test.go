package engine

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TestLogFreeUnreachable: a conditional logged operation left behind by a
// crash frees, at the next mount, exactly the listed blocks that are still
// allocated as metadata and that no tree reaches — not a block in use, not
// a block already freed, not a superblock copy.
func TestLogFreeUnreachable(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var got []format.BlockNr
	if err := e.Update(func(tx *Tx) error {
		got, err = tx.ReserveMeta(format.TreeRmap, 9)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := e.Update(func(tx *Tx) error {
		tx.FreeMeta(format.TreeRmap, got[8:]) // freed already: skipped
		rt, _ := tx.ReadTree(format.TreeRmap)
		list := slices.Concat(got, []format.BlockNr{rt.Root.Block, 16}) // in use; a superblock copy
		_, err := tx.LogFreeUnreachable(format.TreeRmap, list)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	img := slices.Clone(dev.Bytes()) // a crash here: the operation is pending
	e.Close()

	e2 := reopen(t, img, Options{})
	defer e2.Close()
	want := fmt.Sprintf("completed 1 interrupted logged operations (%d blocks freed)", 8)
	if notes := strings.Join(e2.MountInfo().Notes, "\n"); !strings.Contains(notes, want) {
		t.Fatalf("mount notes:\n%s\nwant %q", notes, want)
	}
	mustCheck(t, e2)
	s := e2.Pin()
	defer s.Release()
	at, _ := s.ScanTree(format.TreeAlloc)
	for _, b := range got {
		if _, ok, err := at.Get(format.ExtentKey(b, 1), nil); err != nil || ok {
			t.Fatalf("block %d still allocated (%v)", b, err)
		}
	}
}
