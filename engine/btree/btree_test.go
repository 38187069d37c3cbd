package btree

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// model is the reference: a Go map.
type model map[format.Key][]byte

func (m model) sortedKeys() []format.Key {
	ks := make([]format.Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, format.Key.Compare)
	return ks
}

// checkTree runs the full structural check, verifies the tree holds exactly
// the model's items in order, and that the store holds no leaked nodes.
func checkTree(t testing.TB, tr *Tree, s *MemStore, m model) {
	t.Helper()
	nodes := 0
	var got []format.Key
	err := tr.Check(CheckVisitor{
		Node:    func(format.Node, Ptr) { nodes++ },
		Item:    func(k format.Key, v []byte) { got = append(got, k) },
		Problem: func(p Problem) { t.Fatalf("check: %s", p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if nodes != s.Len() {
		t.Fatalf("tree reaches %d nodes, store holds %d (leak)", nodes, s.Len())
	}
	want := m.sortedKeys()
	if len(got) != len(want) || uint64(len(want)) != tr.Items {
		t.Fatalf("tree has %d items (root says %d), model %d", len(got), tr.Items, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("item %d: tree %s model %s", i, got[i], want[i])
		}
	}
}

func randKey(r *rand.Rand, space uint64) format.Key {
	return format.Key{Obj: r.Uint64N(space), Type: uint8(r.IntN(3)), Off: r.Uint64N(4), Aux: r.Uint64N(2)}
}

func randValue(r *rand.Rand, big bool) []byte {
	n := r.IntN(24)
	if big && r.IntN(8) == 0 {
		n = r.IntN(format.MaxValueSize + 1)
	}
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(r.Uint32())
	}
	return v
}

// TestModelRandom drives random inserts, puts, updates and deletes against
// the model on both a copy-on-write and an in-place store.
func TestModelRandom(t *testing.T) {
	for _, cow := range []bool{false, true} {
		t.Run(fmt.Sprintf("cow=%v", cow), func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(len(fmt.Sprint(cow)))))
			s := NewMemStore(cow)
			tr, err := Create(s, format.TreeExtent)
			if err != nil {
				t.Fatal(err)
			}
			m := model{}
			for step := 0; step < 30000; step++ {
				k := randKey(r, 3000)
				switch op := r.IntN(10); {
				case op < 4:
					v := randValue(r, true)
					err := tr.Insert(k, v)
					if _, ok := m[k]; ok {
						if err != ErrExists {
							t.Fatalf("step %d: insert of existing %s: %v", step, k, err)
						}
					} else if err != nil {
						t.Fatalf("step %d: insert: %v", step, err)
					} else {
						m[k] = v
					}
				case op < 6:
					v := randValue(r, true)
					if err := tr.Put(k, v); err != nil {
						t.Fatal(err)
					}
					m[k] = v
				case op < 7:
					err := tr.Update(k, func(v []byte) {
						for i := range v {
							v[i]++
						}
					})
					if old, ok := m[k]; ok {
						if err != nil {
							t.Fatal(err)
						}
						nv := bytes.Clone(old)
						for i := range nv {
							nv[i]++
						}
						m[k] = nv
					} else if err != ErrNotFound {
						t.Fatalf("update of missing key: %v", err)
					}
				default:
					ok, err := tr.Delete(k)
					if err != nil {
						t.Fatal(err)
					}
					if _, want := m[k]; ok != want {
						t.Fatalf("step %d: delete %s = %v, model %v", step, k, ok, want)
					}
					delete(m, k)
				}
				got, found, err := tr.Get(k, nil)
				if err != nil {
					t.Fatal(err)
				}
				if want, ok := m[k]; ok != found || !bytes.Equal(got, want) {
					t.Fatalf("step %d: get %s = %v %x, model %v %x", step, k, found, got, ok, want)
				}
				if cow && r.IntN(50) == 0 {
					s.Commit()
				}
				if step%500 == 0 {
					checkTree(t, tr, s, m)
				}
			}
			checkTree(t, tr, s, m)
		})
	}
}

// TestGrowAndShrink fills a tree from empty to more than 100k keys and back
// to empty, checking invariants along the way.
func TestGrowAndShrink(t *testing.T) {
	n := 120_000
	if testing.Short() {
		n = 20_000
	}
	for _, cow := range []bool{false, true} {
		t.Run(fmt.Sprintf("cow=%v", cow), func(t *testing.T) {
			r := rand.New(rand.NewPCG(7, 7))
			s := NewMemStore(cow)
			tr, _ := Create(s, format.TreeRmap)
			m := model{}
			perm := r.Perm(n)
			for i, p := range perm {
				k := format.Key{Obj: uint64(p), Type: format.TypeRmapTree, Off: uint64(p % 7)}
				v := make([]byte, 8)
				v[0] = byte(p)
				if err := tr.Insert(k, v); err != nil {
					t.Fatal(err)
				}
				m[k] = v
				if i < 2000 || i%5000 == 0 {
					checkTree(t, tr, s, m)
				}
				if cow && i%1000 == 0 {
					s.Commit()
				}
			}
			checkTree(t, tr, s, m)
			if tr.Level < 2 {
				t.Fatalf("tree of %d keys has level %d", n, tr.Level)
			}
			// Ordered iteration both ways.
			keys := m.sortedKeys()
			i := 0
			if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
				if k != keys[i] {
					t.Fatalf("ascend %d: %s want %s", i, k, keys[i])
				}
				i++
				return true
			}); err != nil || i != len(keys) {
				t.Fatalf("ascend saw %d of %d: %v", i, len(keys), err)
			}
			i = len(keys) - 1
			if err := tr.Descend(format.MaxKey, func(k format.Key, v []byte) bool {
				if k != keys[i] {
					t.Fatalf("descend %d: %s want %s", i, k, keys[i])
				}
				i--
				return true
			}); err != nil || i != -1 {
				t.Fatalf("descend stopped at %d: %v", i, err)
			}
			perm = r.Perm(n)
			for i, p := range perm {
				k := format.Key{Obj: uint64(p), Type: format.TypeRmapTree, Off: uint64(p % 7)}
				ok, err := tr.Delete(k)
				if err != nil || !ok {
					t.Fatalf("delete %s: %v %v", k, ok, err)
				}
				delete(m, k)
				if len(m) < 2000 || i%5000 == 0 {
					checkTree(t, tr, s, m)
				}
				if cow && i%1000 == 0 {
					s.Commit()
				}
			}
			checkTree(t, tr, s, m)
			if tr.Level != 0 || tr.Items != 0 || s.Len() != 1 {
				t.Fatalf("empty tree: level %d items %d nodes %d", tr.Level, tr.Items, s.Len())
			}
		})
	}
}

// TestRangeIteration checks Ascend/Descend from arbitrary start keys,
// including keys between and beyond stored ones.
func TestRangeIteration(t *testing.T) {
	s := NewMemStore(false)
	tr, _ := Create(s, format.TreeFree)
	var keys []format.Key
	for i := uint64(0); i < 5000; i++ {
		k := format.Key{Obj: i * 2, Type: format.TypeFreeExtent}
		keys = append(keys, k)
		if err := tr.Insert(k, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, from := range []uint64{0, 1, 2, 777, 4001, 9998, 9999, 20000} {
		fk := format.Key{Obj: from}
		k, _, ok, err := tr.First(fk)
		want := slices.IndexFunc(keys, func(x format.Key) bool { return !x.Less(fk) })
		if err != nil || ok != (want >= 0) || (ok && k != keys[want]) {
			t.Fatalf("First(%d) = %s %v %v, want index %d", from, k, ok, err, want)
		}
		fk = format.Key{Obj: from, Type: format.TypeFreeExtent}
		k, _, ok, err = tr.Last(fk)
		wantL := -1
		for i, x := range keys {
			if !fk.Less(x) {
				wantL = i
			}
		}
		if err != nil || ok != (wantL >= 0) || (ok && k != keys[wantL]) {
			t.Fatalf("Last(%d) = %s %v %v, want index %d", from, k, ok, err, wantL)
		}
	}
}

// TestCorruptionFound flips bytes in nodes and checks that Check names the
// block and that reads return ErrCorrupt instead of panicking.
func TestCorruptionFound(t *testing.T) {
	s := NewMemStore(true)
	tr, _ := Create(s, format.TreeInode)
	for i := uint64(0); i < 3000; i++ {
		if err := tr.Insert(format.Key{Obj: i}, []byte("value")); err != nil {
			t.Fatal(err)
		}
	}
	s.Commit()
	r := rand.New(rand.NewPCG(3, 3))
	var blocks []format.BlockNr
	for b := range s.blocks {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	for trial := 0; trial < 50; trial++ {
		b := blocks[r.IntN(len(blocks))]
		n := s.Block(b)
		saved := bytes.Clone(n)
		off := r.IntN(format.BlockSize)
		n[off] ^= 1 << r.IntN(8)
		var probs []Problem
		if err := tr.Check(CheckVisitor{Problem: func(p Problem) { probs = append(probs, p) }}); err != nil {
			t.Fatal(err)
		}
		if len(probs) == 0 || probs[0].Block != b || probs[0].Kind != format.KindBadChecksum {
			t.Fatalf("flip at block %d offset %d: problems %v", b, off, probs)
		}
		for i := uint64(0); i < 3000; i += 97 {
			if _, _, err := tr.Get(format.Key{Obj: i}, nil); err != nil && !isCorrupt(err) {
				t.Fatal(err)
			}
		}
		copy(n, saved)
	}
}

func isCorrupt(err error) bool {
	_, ok := format.AsCorrupt(err)
	return ok
}

// TestBlocks: the interior-only walk reports exactly the blocks a full
// check visits, each with its level, and stops when asked.
func TestBlocks(t *testing.T) {
	s := NewMemStore(false)
	tr, _ := Create(s, format.TreeRmap)
	for i := range 30_000 {
		if err := tr.Insert(format.Key{Obj: uint64(i), Type: format.TypeRmapTree}, make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[Ptr]int{}
	if err := tr.Check(CheckVisitor{Block: func(p Ptr, level int) { want[p] = level }}); err != nil {
		t.Fatal(err)
	}
	got := map[Ptr]int{}
	if err := tr.Blocks(func(p Ptr, level int) bool {
		if _, dup := got[p]; dup {
			t.Fatalf("block %v reported twice", p)
		}
		got[p] = level
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if tr.Level < 2 || len(got) != len(want) {
		t.Fatalf("level %d: %d blocks, check saw %d", tr.Level, len(got), len(want))
	}
	for p, l := range want {
		if gl, ok := got[p]; !ok || gl != l {
			t.Fatalf("block %v level %d: got %v %d", p, l, ok, gl)
		}
	}
	n := 0
	if err := tr.Blocks(func(Ptr, int) bool { n++; return n < 10 }); err != nil || n != 10 {
		t.Fatalf("early stop: %d calls, %v", n, err)
	}
}

// TestSplitRootLeafBelowFirstKey inserts, into a full root leaf, a key below
// every key it holds: the split makes the root's parent, whose first key
// must be the new smallest key (it once kept the old first key, which the
// check reports as a leaf below its parent's bound).
func TestSplitRootLeafBelowFirstKey(t *testing.T) {
	for _, cow := range []bool{false, true} {
		s := NewMemStore(cow)
		tr, _ := Create(s, format.TreeCsum)
		m := model{}
		v := make([]byte, 16)
		n := format.Capacity / format.ItemSize(len(v))
		for i := 0; i < n; i++ {
			k := format.Key{Obj: uint64(100 + i)}
			if err := tr.Insert(k, v); err != nil {
				t.Fatal(err)
			}
			m[k] = v
		}
		if tr.Level != 0 {
			t.Fatalf("cow=%v: %d items did not fit one leaf", cow, n)
		}
		k := format.Key{Obj: 1}
		if err := tr.Insert(k, v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
		if tr.Level != 1 {
			t.Fatalf("cow=%v: the insert did not split the root leaf", cow)
		}
		checkTree(t, tr, s, m)
	}
}

// prefetchStore is a MemStore that records what Ascend hands it to read
// ahead, and which reads it was handed beforehand.
type prefetchStore struct {
	*MemStore
	ahead  map[[2]uint64]bool // {block, level} handed to Prefetch
	calls  int
	reads  int
	missed []string // reads below the root not handed to Prefetch first
	root   format.BlockNr
}

func (s *prefetchStore) Prefetch(tree format.TreeID, kids []Ptr, level int) {
	s.calls++
	for _, k := range kids {
		s.ahead[[2]uint64{uint64(k.Block), uint64(level)}] = true
	}
}

func (s *prefetchStore) Read(tree format.TreeID, p Ptr, level int) (format.Node, error) {
	s.reads++
	if p.Block != s.root && !s.ahead[[2]uint64{uint64(p.Block), uint64(level)}] {
		s.missed = append(s.missed, fmt.Sprintf("block %d level %d", p.Block, level))
	}
	return s.MemStore.Read(tree, p, level)
}

// TestAscendPrefetch checks Ascend over a Prefetcher: the same items from
// every start key as over a plain store, and every node below the root it
// reads handed to Prefetch, for its level, before it is read.
func TestAscendPrefetch(t *testing.T) {
	s := NewMemStore(false)
	tr, _ := Create(s, format.TreeFree)
	for i := uint64(0); i < 40000; i++ {
		if err := tr.Insert(format.Key{Obj: i * 2, Type: format.TypeFreeExtent}, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if tr.Level < 2 {
		t.Fatalf("tree of level %d: want at least 2, so that interior nodes below the root are read ahead", tr.Level)
	}
	collect := func(tt *Tree, from format.Key) []format.Key {
		var out []format.Key
		if err := tt.Ascend(from, func(k format.Key, v []byte) bool {
			out = append(out, k)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, from := range []uint64{0, 1, 2, 777, 40001, 79998, 79999, 90000} {
		fk := format.Key{Obj: from}
		ps := &prefetchStore{MemStore: s, ahead: map[[2]uint64]bool{}, root: tr.Root.Block}
		pt := Open(ps, tr.ID, tr.Root, tr.Level, tr.Items)
		got, want := collect(pt, fk), collect(tr, fk)
		if !slices.Equal(got, want) {
			t.Fatalf("from %d: %d items with prefetch, %d without", from, len(got), len(want))
		}
		if len(ps.missed) > 0 {
			t.Fatalf("from %d: %d of %d reads not handed to Prefetch first, e.g. %s", from, len(ps.missed), ps.reads, ps.missed[0])
		}
		if len(want) > 0 && ps.calls == 0 {
			t.Fatalf("from %d: Prefetch never called", from)
		}
	}
}
