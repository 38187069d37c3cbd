package engine

import (
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestScanTreeAhead walks the inode tree of an image file, three levels
// deep, with ScanTreeAhead (several walks at once; the kernel's read-ahead
// off, on by Options.ReadAhead, and on by Snapshot.AllowReadAhead) and
// checks it reads exactly what Tree reads.
func TestScanTreeAhead(t *testing.T) {
	img := filepath.Join(t.TempDir(), "scan.img")
	if err := MkfsPath(img, 64<<20, false, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, mode := range []string{"off", "engine", "snapshot"} {
		ra := i > 0
		e, err := OpenPath(img, Options{CommitInterval: -1, ReadAhead: mode == "engine"})
		if err != nil {
			t.Fatal(err)
		}
		if !ra {
			// Enough items for a tree of three levels, in several
			// commits so that its nodes lie apart.
			for c := uint64(0); c < 8; c++ {
				err := e.Update(func(tx *Tx) error {
					tr, err := tx.Tree(format.TreeInode)
					if err != nil {
						return err
					}
					for i := range uint64(8000) {
						if err := tr.Insert(key(i*8+c), val(i, c)); err != nil {
							return err
						}
					}
					return nil
				})
				if err == nil {
					err = e.Sync()
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		s := e.Pin()
		if mode == "snapshot" {
			s.AllowReadAhead()
		}
		if ri, _ := s.Root(format.TreeInode); ri.Root.Level < 2 {
			t.Fatalf("inode tree of level %d: want at least 2", ri.Root.Level)
		}
		want := contents(t, s, format.TreeInode)
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr, ok := s.ScanTreeAhead(format.TreeInode)
				if !ok {
					t.Error("no inode tree")
					return
				}
				n := 0
				if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
					if w, ok := want[k]; !ok || w != string(v) {
						t.Errorf("read ahead %v: key %s: %x, want %x", ra, k, v, w)
						return false
					}
					n++
					return true
				}); err != nil {
					t.Error(err)
				}
				if n != len(want) {
					t.Errorf("read ahead %v: %d items, want %d", ra, n, len(want))
				}
			}()
		}
		wg.Wait()
		// With ReadAhead the walks had the kernel read ahead (one
		// adviser, shared); without, not.
		advised := s.adv != nil && slices.ContainsFunc(s.adv.done, func(w uint64) bool { return w != 0 })
		if advised != ra {
			t.Errorf("read ahead %s: adviser used %v", mode, advised)
		}
		s.Release()
		mustCheck(t, e)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
