// Package storetest is the conformance suite every btree.Store must pass:
// the same randomized model tests (a Go map is the reference) run on the
// heap MemStore, copy-on-write or in place, and on the xfile store. Run
// takes a store factory; the helpers (Model, Verify, RandomOps) are
// exported so that other tests, such as the bulk loader's, can continue the
// model test on a tree they built.
//
// A store may implement two optional interfaces the suite uses:
// Len() int (nodes in use, for the leak check: every node the store holds
// must be reachable from a live tree) and Commit() (ends a generation, so a
// copy-on-write store copies again; the suite calls it at random).
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Lener is a store that counts its nodes in use.
type Lener interface{ Len() int }

// Committer is a store with generations (MemStore with CoW).
type Committer interface{ Commit() }

// Sizes of the suite's workloads. Under the race detector, or with -short,
// they shrink so that the suite stays within seconds per store.
type Sizes struct {
	RandomSteps int // random operations of TestRandom
	GrowKeys    int // keys of the grow-and-shrink test (> 100k in full runs)
}

// Small reports whether tests should shrink their workloads: under the race
// detector, or with -short.
func Small() bool { return raceEnabled || testing.Short() }

// DefaultSizes returns the sizes for this build and test mode.
func DefaultSizes() Sizes {
	if Small() {
		return Sizes{RandomSteps: 6_000, GrowKeys: 15_000}
	}
	return Sizes{RandomSteps: 40_000, GrowKeys: 120_000}
}

// Run runs the whole suite with the default sizes; newStore returns a new,
// empty store (and registers its cleanup with t).
func Run(t *testing.T, newStore func(t *testing.T) btree.Store) {
	RunSizes(t, DefaultSizes(), newStore)
}

// RunSizes runs the whole suite with the given sizes.
func RunSizes(t *testing.T, sz Sizes, newStore func(t *testing.T) btree.Store) {
	t.Run("Random", func(t *testing.T) { testRandom(t, sz, newStore(t)) })
	t.Run("GrowAndShrink", func(t *testing.T) { testGrowShrink(t, sz, newStore(t)) })
	t.Run("Ranges", func(t *testing.T) { testRanges(t, newStore(t)) })
	t.Run("SharedStore", func(t *testing.T) { testShared(t, sz, newStore(t)) })
	t.Run("BadPointers", func(t *testing.T) { testBadPointers(t, newStore(t)) })
}

// Model is the reference the trees are compared with.
type Model map[format.Key][]byte

// Keys returns the model's keys in order.
func (m Model) Keys() []format.Key {
	ks := make([]format.Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, format.Key.Compare)
	return ks
}

// Verify runs the full structural check of tr, fails t on any problem, and
// checks that the tree holds exactly the model's items, values included, in
// key order. It returns the number of nodes the tree reaches.
func Verify(t testing.TB, tr *btree.Tree, m Model) int {
	t.Helper()
	nodes := 0
	want := m.Keys()
	i := 0
	var bad []string
	err := tr.Check(btree.CheckVisitor{
		Node: func(format.Node, btree.Ptr) { nodes++ },
		Item: func(k format.Key, v []byte) {
			switch {
			case len(bad) > 5:
			case i >= len(want):
				bad = append(bad, fmt.Sprintf("extra item %d %s", i, k))
			case k != want[i]:
				bad = append(bad, fmt.Sprintf("item %d: tree %s, model %s", i, k, want[i]))
			case !bytes.Equal(v, m[k]):
				bad = append(bad, fmt.Sprintf("item %d %s: value %x, model %x", i, k, v, m[k]))
			}
			i++
		},
		Problem: func(p btree.Problem) { bad = append(bad, "check: "+p.String()) },
	})
	if err != nil {
		t.Fatalf("check tree %s: %v", tr.ID, err)
	}
	if len(bad) > 0 {
		t.Fatalf("tree %s (%d items, level %d):\n%s", tr.ID, tr.Items, tr.Level, joinLines(bad))
	}
	if i != len(want) || tr.Items != uint64(len(want)) {
		t.Fatalf("tree %s holds %d items (root says %d), model %d", tr.ID, i, tr.Items, len(want))
	}
	return nodes
}

// CheckNodes fails t if s counts its nodes and holds another number than
// the trees reach (a leak, or a node shared by two trees).
func CheckNodes(t testing.TB, s btree.Store, reached int) {
	t.Helper()
	if l, ok := s.(Lener); ok && l.Len() != reached {
		t.Fatalf("trees reach %d nodes, store holds %d (leak)", reached, l.Len())
	}
}

// VerifyAll verifies one tree and checks that the store holds no other node.
func VerifyAll(t testing.TB, s btree.Store, tr *btree.Tree, m Model) {
	t.Helper()
	CheckNodes(t, s, Verify(t, tr, m))
}

func joinLines(ss []string) string {
	var b bytes.Buffer
	for _, s := range ss {
		b.WriteString("\t" + s + "\n")
	}
	return b.String()
}

// Random configures RandomOps.
type Random struct {
	Steps int
	// Key returns the key of the next operation. Default: a small key
	// space, so operations hit existing keys often.
	Key func(r *rand.Rand) format.Key
	// Value returns a value to insert. Default: mostly small values, one in
	// eight up to format.MaxValueSize.
	Value func(r *rand.Rand) []byte
	// VerifyEvery runs VerifyAll every so many steps (default 500).
	VerifyEvery int
	// Shared says the store holds other trees too: skip the leak check.
	Shared bool
}

// SmallKey is the default key generator: about 24k distinct keys.
func SmallKey(r *rand.Rand) format.Key {
	return format.Key{Obj: r.Uint64N(2000), Type: uint8(r.IntN(3)), Off: r.Uint64N(4), Aux: r.Uint64N(2)}
}

// MixedValue is the default value generator.
func MixedValue(r *rand.Rand) []byte {
	n := r.IntN(24)
	if r.IntN(8) == 0 {
		n = r.IntN(format.MaxValueSize + 1)
	}
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(r.Uint32())
	}
	return v
}

// RandomOps applies random inserts, puts, in-place updates and deletes to tr
// and m, checking every result and a Get of the key after each step, and
// verifies the tree (and that s leaks nothing, if s is tr's only tree) every
// cfg.VerifyEvery steps and at the end. If s is a Committer it commits at
// random.
func RandomOps(t testing.TB, s btree.Store, tr *btree.Tree, m Model, r *rand.Rand, cfg Random) {
	t.Helper()
	keyOf, valOf := cfg.Key, cfg.Value
	if keyOf == nil {
		keyOf = SmallKey
	}
	if valOf == nil {
		valOf = MixedValue
	}
	every := cfg.VerifyEvery
	if every <= 0 {
		every = 500
	}
	com, _ := s.(Committer)
	for step := 0; step < cfg.Steps; step++ {
		k := keyOf(r)
		switch op := r.IntN(10); {
		case op < 4:
			v := valOf(r)
			err := tr.Insert(k, v)
			if _, ok := m[k]; ok {
				if !errors.Is(err, btree.ErrExists) {
					t.Fatalf("step %d: insert of existing %s: %v", step, k, err)
				}
			} else if err != nil {
				t.Fatalf("step %d: insert %s: %v", step, k, err)
			} else {
				m[k] = v
			}
		case op < 6:
			v := valOf(r)
			if err := tr.Put(k, v); err != nil {
				t.Fatalf("step %d: put %s: %v", step, k, err)
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
					t.Fatalf("step %d: update %s: %v", step, k, err)
				}
				nv := bytes.Clone(old)
				for i := range nv {
					nv[i]++
				}
				m[k] = nv
			} else if !errors.Is(err, btree.ErrNotFound) {
				t.Fatalf("step %d: update of missing %s: %v", step, k, err)
			}
		default:
			ok, err := tr.Delete(k)
			if err != nil {
				t.Fatalf("step %d: delete %s: %v", step, k, err)
			}
			if _, want := m[k]; ok != want {
				t.Fatalf("step %d: delete %s = %v, model %v", step, k, ok, want)
			}
			delete(m, k)
		}
		got, found, err := tr.Get(k, nil)
		if err != nil {
			t.Fatalf("step %d: get %s: %v", step, k, err)
		}
		if want, ok := m[k]; ok != found || !bytes.Equal(got, want) {
			t.Fatalf("step %d: get %s = %v %x, model %v %x", step, k, found, got, ok, want)
		}
		if com != nil && r.IntN(50) == 0 {
			com.Commit()
		}
		if step%every == 0 {
			verify(t, s, tr, m, cfg.Shared)
		}
	}
	verify(t, s, tr, m, cfg.Shared)
}

func verify(t testing.TB, s btree.Store, tr *btree.Tree, m Model, shared bool) {
	t.Helper()
	if shared {
		Verify(t, tr, m)
	} else {
		VerifyAll(t, s, tr, m)
	}
}

func testRandom(t *testing.T, sz Sizes, s btree.Store) {
	tr, err := btree.Create(s, format.TreeExtent)
	if err != nil {
		t.Fatal(err)
	}
	m := Model{}
	RandomOps(t, s, tr, m, rand.New(rand.NewPCG(1, 2)), Random{Steps: sz.RandomSteps})
	// Empty it, then use it again: freed blocks are reused.
	for _, k := range m.Keys() {
		if ok, err := tr.Delete(k); err != nil || !ok {
			t.Fatalf("delete %s: %v %v", k, ok, err)
		}
		delete(m, k)
	}
	VerifyAll(t, s, tr, m)
	if tr.Level != 0 {
		t.Fatalf("empty tree has level %d", tr.Level)
	}
	RandomOps(t, s, tr, m, rand.New(rand.NewPCG(3, 4)), Random{Steps: sz.RandomSteps / 4})
}

// growKey is the key of record p of the grow-and-shrink test: rmap-like.
func growKey(p int) format.Key {
	return format.Key{Obj: uint64(p) * 3, Type: format.TypeRmapTree + uint8(p%2), Off: uint64(p % 7), Aux: uint64(p % 5)}
}

func testGrowShrink(t *testing.T, sz Sizes, s btree.Store) {
	r := rand.New(rand.NewPCG(7, 7))
	tr, err := btree.Create(s, format.TreeRmap)
	if err != nil {
		t.Fatal(err)
	}
	com, _ := s.(Committer)
	n := sz.GrowKeys
	m := Model{}
	for i, p := range r.Perm(n) {
		k := growKey(p)
		v := make([]byte, 8)
		v[0], v[7] = byte(p), byte(p>>8)
		if err := tr.Insert(k, v); err != nil {
			t.Fatalf("insert %d %s: %v", i, k, err)
		}
		m[k] = v
		if i < 1500 || i%10_000 == 0 {
			VerifyAll(t, s, tr, m)
		}
		if com != nil && i%1000 == 0 {
			com.Commit()
		}
	}
	VerifyAll(t, s, tr, m)
	if n >= 100_000 && tr.Level < 2 {
		t.Fatalf("tree of %d keys has level %d", n, tr.Level)
	}
	keys := m.Keys()
	checkAscend(t, tr, keys, format.Key{}, -1)
	checkDescend(t, tr, keys, format.MaxKey, -1)
	for i, p := range r.Perm(n) {
		k := growKey(p)
		ok, err := tr.Delete(k)
		if err != nil || !ok {
			t.Fatalf("delete %d %s: %v %v", i, k, ok, err)
		}
		delete(m, k)
		if len(m) < 1500 || i%10_000 == 0 {
			VerifyAll(t, s, tr, m)
		}
		if com != nil && i%1000 == 0 {
			com.Commit()
		}
	}
	VerifyAll(t, s, tr, m)
	if tr.Level != 0 || tr.Items != 0 {
		t.Fatalf("empty tree: level %d, %d items", tr.Level, tr.Items)
	}
	CheckNodes(t, s, 1)
}

// checkAscend checks that Ascend from `from` yields keys[i:] (i: the first
// key >= from), stopping after limit items if limit >= 0.
func checkAscend(t testing.TB, tr *btree.Tree, keys []format.Key, from format.Key, limit int) {
	t.Helper()
	i, _ := slices.BinarySearchFunc(keys, from, format.Key.Compare)
	want := keys[i:]
	if limit >= 0 && limit < len(want) {
		want = want[:limit]
	}
	j := 0
	err := tr.Ascend(from, func(k format.Key, v []byte) bool {
		if j >= len(want) || k != want[j] {
			t.Fatalf("ascend from %s: item %d is %s, want %v", from, j, k, at(want, j))
		}
		j++
		return limit < 0 || j < limit
	})
	if err != nil || j != len(want) {
		t.Fatalf("ascend from %s: saw %d of %d: %v", from, j, len(want), err)
	}
}

// checkDescend checks that Descend from `from` yields the keys <= from in
// decreasing order, stopping after limit items if limit >= 0.
func checkDescend(t testing.TB, tr *btree.Tree, keys []format.Key, from format.Key, limit int) {
	t.Helper()
	i, found := slices.BinarySearchFunc(keys, from, format.Key.Compare)
	if found {
		i++
	}
	want := slices.Clone(keys[:i])
	slices.Reverse(want)
	if limit >= 0 && limit < len(want) {
		want = want[:limit]
	}
	j := 0
	err := tr.Descend(from, func(k format.Key, v []byte) bool {
		if j >= len(want) || k != want[j] {
			t.Fatalf("descend from %s: item %d is %s, want %v", from, j, k, at(want, j))
		}
		j++
		return limit < 0 || j < limit
	})
	if err != nil || j != len(want) {
		t.Fatalf("descend from %s: saw %d of %d: %v", from, j, len(want), err)
	}
}

func at(ks []format.Key, i int) any {
	if i < len(ks) {
		return ks[i]
	}
	return "nothing"
}

// CheckRanges checks Ascend, Descend, First and Last from random start keys
// (stored keys, keys between them, keys beyond both ends) against m.
func CheckRanges(t testing.TB, tr *btree.Tree, m Model, r *rand.Rand, trials int) {
	t.Helper()
	keys := m.Keys()
	for trial := 0; trial < trials; trial++ {
		var from format.Key
		switch c := r.IntN(4); {
		case c == 0 && len(keys) > 0:
			from = keys[r.IntN(len(keys))]
		case c == 1:
			from = format.Key{}
		case c == 2:
			from = format.MaxKey
		default:
			from = SmallKey(r)
			from.Obj = r.Uint64N(2 + 2*maxObj(keys))
		}
		limit := -1
		if r.IntN(2) == 0 {
			limit = 1 + r.IntN(300)
		}
		checkAscend(t, tr, keys, from, limit)
		checkDescend(t, tr, keys, from, limit)
		k, v, ok, err := tr.First(from)
		i, _ := slices.BinarySearchFunc(keys, from, format.Key.Compare)
		if err != nil || ok != (i < len(keys)) || (ok && (k != keys[i] || !bytes.Equal(v, m[k]))) {
			t.Fatalf("First(%s) = %s %v %v, want index %d of %d", from, k, ok, err, i, len(keys))
		}
		k, _, ok, err = tr.Last(from)
		i, found := slices.BinarySearchFunc(keys, from, format.Key.Compare)
		if !found {
			i--
		}
		if err != nil || ok != (i >= 0) || (ok && k != keys[i]) {
			t.Fatalf("Last(%s) = %s %v %v, want index %d", from, k, ok, err, i)
		}
	}
}

func maxObj(keys []format.Key) uint64 {
	if len(keys) == 0 {
		return 0
	}
	return keys[len(keys)-1].Obj
}

func testRanges(t *testing.T, s btree.Store) {
	r := rand.New(rand.NewPCG(5, 5))
	tr, err := btree.Create(s, format.TreeFree)
	if err != nil {
		t.Fatal(err)
	}
	m := Model{}
	CheckRanges(t, tr, m, r, 20) // empty tree
	for i := uint64(0); i < 6000; i++ {
		k := format.Key{Obj: i * 2, Type: format.TypeFreeExtent, Off: i % 3}
		v := []byte{byte(i), byte(i >> 8)}
		if err := tr.Insert(k, v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
		if i == 0 || i == 100 {
			CheckRanges(t, tr, m, r, 50)
		}
	}
	VerifyAll(t, s, tr, m)
	CheckRanges(t, tr, m, r, 300)
	// Thin it out so ranges cross many empty stretches.
	for _, k := range m.Keys() {
		if r.IntN(10) != 0 {
			if _, err := tr.Delete(k); err != nil {
				t.Fatal(err)
			}
			delete(m, k)
		}
	}
	VerifyAll(t, s, tr, m)
	CheckRanges(t, tr, m, r, 300)
}

// testShared interleaves operations on three trees of one store and checks
// that each sees only its own items and that the store leaks nothing.
func testShared(t *testing.T, sz Sizes, s btree.Store) {
	r := rand.New(rand.NewPCG(9, 9))
	ids := []format.TreeID{format.TreeInode, format.TreeDir, format.TreeCsum}
	trees := make([]*btree.Tree, len(ids))
	models := make([]Model, len(ids))
	for i, id := range ids {
		tr, err := btree.Create(s, id)
		if err != nil {
			t.Fatal(err)
		}
		trees[i], models[i] = tr, Model{}
	}
	verify := func() {
		t.Helper()
		nodes := 0
		for i := range trees {
			nodes += Verify(t, trees[i], models[i])
		}
		CheckNodes(t, s, nodes)
	}
	for round := 0; round < 12; round++ {
		i := r.IntN(len(trees))
		// Each round grows or shrinks one tree in a burst, so nodes of
		// different trees interleave in the store.
		RandomOps(t, s, trees[i], models[i], r, Random{Steps: sz.RandomSteps / 10, VerifyEvery: 1000, Shared: true})
		verify()
	}
	// Emptying one tree returns its blocks; the others are unaffected.
	for _, k := range models[0].Keys() {
		if _, err := trees[0].Delete(k); err != nil {
			t.Fatal(err)
		}
		delete(models[0], k)
	}
	verify()
}

// testBadPointers checks that a wrong pointer is a corruption error naming
// the problem, never a panic or a wrong node.
func testBadPointers(t *testing.T, s btree.Store) {
	tr, err := btree.Create(s, format.TreeInode)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < 2000; i++ {
		if err := tr.Insert(format.Key{Obj: i}, []byte("value")); err != nil {
			t.Fatal(err)
		}
	}
	if c, ok := s.(Committer); ok {
		c.Commit()
	}
	root, level := tr.Root, tr.Level
	if level == 0 {
		t.Fatal("2000 items fit one leaf")
	}
	wantKind := func(what string, kind format.Kind, n format.Node, err error) {
		t.Helper()
		ce, ok := format.AsCorrupt(err)
		if n != nil || !ok || !errors.Is(err, format.ErrCorrupt) || (kind != "" && ce.Kind != kind) {
			t.Fatalf("%s: node %v, err %v, want a corruption error of kind %q", what, n != nil, err, kind)
		}
	}
	n, err := s.Read(format.TreeDir, root, level)
	wantKind("wrong owner", format.KindWrongOwner, n, err)
	n, err = s.Read(tr.ID, root, level+1)
	wantKind("wrong level", format.KindBadLevel, n, err)
	n, err = s.Read(tr.ID, btree.Ptr{Block: root.Block, Gen: root.Gen + 1}, level)
	wantKind("wrong generation", format.KindStale, n, err)
	n, err = s.Read(tr.ID, btree.Ptr{Block: 1 << 40, Gen: root.Gen}, level)
	wantKind("beyond the store", "", n, err)
	n, err = s.Read(tr.ID, btree.Ptr{}, level)
	wantKind("zero pointer", "", n, err)
	// A block the tree freed: delete everything, the old root is gone.
	for i := uint64(0); i < 2000; i++ {
		if _, err := tr.Delete(format.Key{Obj: i}); err != nil {
			t.Fatal(err)
		}
	}
	if tr.Root == root {
		t.Fatal("root survived emptying the tree")
	}
	n, err = s.Read(tr.ID, root, level)
	wantKind("freed block", "", n, err)
	VerifyAll(t, s, tr, Model{})
}
