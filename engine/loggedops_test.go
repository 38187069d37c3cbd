package engine

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

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
	got := reserveCommitted(t, e, 9)
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

// TestWriteMetaRuns: WriteMeta writes nodes of adjacent blocks in one write
// (at most maxWriteRun blocks), starts a new write at every gap or step
// back, and every block ends up holding its own sealed node.
func TestWriteMetaRuns(t *testing.T) {
	skipShort(t)
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	cd := &countingDev{Device: nopClose{dev}}
	e, err := Open(cd, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	got := reserveCommitted(t, e, maxWriteRun+40)
	// Order: the first maxWriteRun+10 in order (split at the cap and at
	// any gap the allocator left), then skip two, then three blocks
	// backwards.
	order := slices.Clone(got[:maxWriteRun+10])
	order = append(order, got[maxWriteRun+12:maxWriteRun+14]...)
	order = append(order, got[maxWriteRun+20], got[maxWriteRun+19], got[maxWriteRun+18])
	want, run := 0, 0
	for i, b := range order {
		if i == 0 || b != order[i-1]+1 || run == maxWriteRun {
			want, run = want+1, 0
		}
		run++
	}
	if want < 5 {
		t.Fatalf("test order makes only %d runs", want)
	}
	nodes := make([]format.Node, len(order))
	for i, b := range order {
		n := format.Node(make([]byte, format.BlockSize))
		format.InitNode(n, e.FSID(), b, 7, format.TreeRmap, 0)
		nodes[i] = n
	}
	before := cd.writes.Load()
	if err := e.WriteMeta(nodes); err != nil {
		t.Fatal(err)
	}
	if err := e.FlushMeta(); err != nil {
		t.Fatal(err)
	}
	if n := cd.writes.Load() - before; n != int64(want) {
		t.Errorf("%d writes, want %d", n, want)
	}
	for _, n := range nodes {
		verifyOnDevice(t, e, dev, n.Block())
	}
	// The nodes are not linked anywhere: give the blocks back.
	if err := e.Update(func(tx *Tx) error {
		tx.FreeMeta(format.TreeRmap, got)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, e)
}

// TestWriteMetaBehindGivesWay: a bulk write does not go on while a commit
// is being written out, and its nodes land like WriteMeta's.
func TestWriteMetaBehindGivesWay(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	got := reserveCommitted(t, e, 8)
	nodes := make([]format.Node, len(got))
	for i, b := range got {
		nodes[i] = format.InitNode(make([]byte, format.BlockSize), e.FSID(), b, 7, format.TreeRmap, 0)
	}
	const hold = 30 * time.Millisecond
	e.writingOut.Add(1) // as if a commit were being written out
	done := make(chan error, 1)
	var took time.Duration
	go func() {
		began := time.Now()
		err := e.WriteMetaBehind(nodes)
		took = time.Since(began)
		done <- err
	}()
	time.Sleep(hold)
	e.writingOut.Add(-1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// It started a little after the write-out did: half the hold is the
	// bound it must have waited at least.
	if took < hold/2 {
		t.Errorf("WriteMetaBehind returned after %v, while a write-out went on for %v", took, hold)
	}
	for _, b := range got {
		verifyOnDevice(t, e, dev, b)
	}
	if err := e.Update(func(tx *Tx) error {
		tx.FreeMeta(format.TreeRmap, got)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// verifyOnDevice checks that block b of dev holds the sealed generation-7
// rmap leaf the WriteMeta tests write there.
func verifyOnDevice(t *testing.T, e *Engine, dev *disk.Mem, b format.BlockNr) {
	t.Helper()
	on := dev.Bytes()[int64(b)*format.BlockSize:][:format.BlockSize]
	if err := format.VerifyNode(on, format.Expect{FSID: e.FSID(), Block: b, Tree: format.TreeRmap, Gen: 7, Level: 0}); err != nil {
		t.Fatalf("block %d: %v", b, err)
	}
}

// reserveCommitted reserves n rmap blocks (ReserveMeta) and commits.
func reserveCommitted(t *testing.T, e *Engine, n int) []format.BlockNr {
	t.Helper()
	var got []format.BlockNr
	if err := e.Update(func(tx *Tx) error {
		var err error
		got, err = tx.ReserveMeta(format.TreeRmap, n)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	return got
}
