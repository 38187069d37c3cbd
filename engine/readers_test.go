package engine

import (
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// Views run at the same time: one view waits, inside its fn, for a second
// to run its own fn.
func TestViewsRunConcurrently(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	inB := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- e.View(func(tx *Tx) error {
			_, _, err := tx.e.trees[format.TreeInode].Get(key(1), nil)
			close(inB)
			return err
		})
	}()
	err := e.View(func(tx *Tx) error {
		select {
		case <-inB:
			return nil
		case <-time.After(20 * time.Second):
			t.Error("a second view did not run while the first held the lock")
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A writer waiting for the lock holds new views out (readers cannot starve
// writers), and runs before them once the views that had it are done.
func TestWaitingWriterHoldsViewsOut(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- e.View(func(tx *Tx) error { <-release; return nil })
	}()
	for until := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		// The first view holds the lock once a writer cannot take it.
		if !e.wmu.mu.TryLock() {
			break
		}
		e.wmu.mu.Unlock()
		if time.Now().After(until) {
			t.Fatal("the first view never took the lock")
		}
	}
	order := make(chan string, 2)
	go func() {
		e.Update(func(tx *Tx) error { order <- "update"; return nil })
	}()
	waitWaiting(t, e, 1)
	go func() {
		e.View(func(tx *Tx) error { order <- "view"; return nil })
	}()
	// The second view waits (is counted) although only a view holds the
	// lock: the writer queued before it.
	waitWaiting(t, e, 2)
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if a, b := <-order, <-order; a != "update" || b != "view" {
		t.Fatalf("ran %s then %s; want the waiting update first", a, b)
	}
}

func waitWaiting(t *testing.T, e *Engine, n int32) {
	t.Helper()
	for until := time.Now().Add(20 * time.Second); e.waiting.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(until) {
			t.Fatalf("%d of %d lock waits counted", e.waiting.Load(), n)
		}
	}
}

// isFree reports whether any block of [start, start+n) is allocatable.
func isFree(e *Engine, start format.BlockNr, n uint64) bool {
	e.alloc.mu.Lock()
	defer e.alloc.mu.Unlock()
	for b := start; b < start+format.BlockNr(n); b++ {
		if e.alloc.isFree(b) {
			return true
		}
	}
	return false
}

// A ReadHold keeps the blocks a view looked up from being reused, whether
// the running transaction allocated them (they return to the allocator at
// once when it drops them, without a hold) or a committed generation did
// (they return once the generation that dropped them is durable); Release
// lets them go.
func TestReadHoldKeepsBlocks(t *testing.T) {
	for _, committed := range []bool{false, true} {
		name := "new"
		if committed {
			name = "committed"
		}
		t.Run(name, func(t *testing.T) {
			e, _ := newTestEngine(t, Options{})
			const off, n = 7, 4
			var start format.BlockNr
			if err := e.Update(func(tx *Tx) (err error) {
				start, err = addDataExtent(tx, off, n)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if committed {
				if err := e.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			var hold *ReadHold
			if err := e.View(func(tx *Tx) error {
				tr, _ := tx.ReadTree(format.TreeExtent)
				v, ok, err := tr.Get(testExtentKey(off), nil)
				if err != nil || !ok {
					t.Fatalf("extent item: %v %v", ok, err)
				}
				if fe, err := format.DecodeFileExtent(v); err != nil || fe.Start != start {
					t.Fatalf("extent item %+v %v, want start %d", fe, err, start)
				}
				hold = tx.HoldBlocks()
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			defer hold.Release()
			// The writer drops the extent and commits, twice (the second
			// commit finds the first durable), and writes on.
			if err := e.Update(func(tx *Tx) error {
				et, _ := tx.Tree(format.TreeExtent)
				if _, err := et.Delete(testExtentKey(off)); err != nil {
					return err
				}
				return tx.DropRef(start, n, testOwner(off))
			}); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := e.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			if isFree(e, start, n) {
				t.Fatal("blocks a read holds were returned to the allocator")
			}
			if e.Stats().PendingBlocks < n {
				t.Fatalf("%d blocks pending, want the %d held", e.Stats().PendingBlocks, n)
			}
			hold.Release()
			if !isFree(e, start, n) {
				t.Fatal("blocks still held after the read released them")
			}
			if p := e.Stats().PendingBlocks; p != 0 {
				t.Fatalf("%d blocks still pending after the release", p)
			}
		})
	}
}

// Without a hold, an extent the running transaction allocated and dropped
// is reusable at once (holds change nothing while no read is out of the
// lock).
func TestNoHoldNewExtentFreedAtOnce(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	const off, n = 3, 2
	if err := e.Update(func(tx *Tx) error {
		start, err := addDataExtent(tx, off, n)
		if err != nil {
			return err
		}
		et, _ := tx.Tree(format.TreeExtent)
		if _, err := et.Delete(testExtentKey(off)); err != nil {
			return err
		}
		if err := tx.DropRef(start, n, testOwner(off)); err != nil {
			return err
		}
		if !isFree(e, start, n) {
			t.Error("an extent allocated and dropped in one transaction is not reusable")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
