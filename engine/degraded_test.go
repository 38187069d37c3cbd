package engine

import (
	"context"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// findingIDs returns the findings of a full check of e's last commit, as
// "tree:id" strings, sorted.
func findingIDs(t *testing.T, e *Engine) []string {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	var out []string
	if _, err := s.Check(context.Background(), func(f Finding) { out = append(out, f.Tree.String()+":"+f.ID.Name()) }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestSpaceTreeDegraded: with one of the space trees degraded, the engine
// goes on allocating and freeing without it (no error, no read-only), the
// commit persists the degraded state, a remount keeps running without the
// tree (the free space loaded from the alloc tree's gaps, or the extents'
// records derived from the rmap), and the check finds exactly one thing:
// the untrusted tree — the other two still agree with each other and with
// every tree they describe, so nothing was allocated twice or lost.
// (Run with the invariants build, the allocator is also compared with
// the free-space tree at every commit while that is trusted.)
func TestSpaceTreeDegraded(t *testing.T) {
	for _, s := range []Structure{StructFree, StructAlloc, StructRmap} {
		t.Run(s.Name(), func(t *testing.T) {
			dev := disk.NewMem(testBlocks * format.BlockSize)
			if err := Mkfs(dev, MkfsOptions{Label: "test"}); err != nil {
				t.Fatal(err)
			}
			e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			w := newWorkload(7)
			run := func(e *Engine, steps int) {
				t.Helper()
				for i := 0; i < steps; i++ {
					if err := e.Update(w.step); err != nil {
						t.Fatalf("step %d with %s degraded: %v", i, s, err)
					}
					if i%50 == 49 {
						if err := e.Sync(); err != nil {
							t.Fatal(err)
						}
					}
				}
				if err := e.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			run(e, 300)
			if got := findingIDs(t, e); len(got) != 0 {
				t.Fatalf("before: %v", got)
			}
			e.MarkSick(s, 1, ErrNodeBadChecksum)
			if !e.Degraded(s) {
				t.Fatal("not degraded")
			}
			run(e, 600)
			want := []string{treeOf(s).String() + ":tree_untrusted"}
			if got := findingIDs(t, e); !slices.Equal(got, want) {
				t.Fatalf("degraded: found %v, want %v", got, want)
			}
			pin := e.Pin()
			passes := pin.Super().RecoveryPasses
			pin.Release()
			if passes&(1<<degradedPass[s]) == 0 {
				t.Fatalf("recovery passes %#x lack the marker", passes)
			}
			e.Close()

			e = reopen(t, dev.Bytes(), Options{})
			if !e.Degraded(s) {
				t.Fatal("remount trusts the tree again")
			}
			run(e, 600)
			if got := findingIDs(t, e); !slices.Equal(got, want) {
				t.Fatalf("after remount: found %v, want %v", got, want)
			}
			// Only a repair ends it (package repair's tests rebuild
			// each tree and see the marker cleared).
			e.Close()
		})
	}
}

// treeOf is the tree of a space structure.
func treeOf(s Structure) format.TreeID { return format.TreeRoot + format.TreeID(s-StructRoot) }

func TestSubtractExtents(t *testing.T) {
	x := func(s, n uint64) extent { return extent{format.BlockNr(s), n} }
	for _, c := range []struct{ a, b, want []extent }{
		{nil, []extent{x(1, 5)}, nil},
		{[]extent{x(1, 5)}, nil, []extent{x(1, 5)}},
		{[]extent{x(0, 10)}, []extent{x(2, 2), x(6, 1)}, []extent{x(0, 2), x(4, 2), x(7, 3)}},
		{[]extent{x(0, 10), x(20, 5)}, []extent{x(5, 17)}, []extent{x(0, 5), x(22, 3)}},
		{[]extent{x(3, 4)}, []extent{x(0, 20)}, nil},
		{[]extent{x(3, 4), x(10, 2)}, []extent{x(3, 4)}, []extent{x(10, 2)}},
	} {
		if got := subtractExtents(c.a, c.b); !slices.Equal(got, c.want) {
			t.Errorf("%v - %v = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
