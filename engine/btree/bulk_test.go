package btree_test

import (
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"testing"

	"github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/btree/storetest"
	"github.com/scrubd/scrubd/engine/format"
)

// TestStoreSuite runs the shared store suite on the heap store, in place
// and copy-on-write (the xfile store runs it in package xfile).
func TestStoreSuite(t *testing.T) {
	for _, cow := range []bool{false, true} {
		t.Run(fmt.Sprintf("memstore/cow=%v", cow), func(t *testing.T) {
			storetest.Run(t, func(*testing.T) btree.Store { return newMemStore(cow) })
		})
	}
}

// newMemStore returns a MemStore; an in-place one is wrapped to hide its
// Commit: after MemStore.Commit an in-place store no longer reseals the
// nodes it changes (Writable does not mark them dirty again), so its next
// Read reports a bad checksum.
func newMemStore(cow bool) btree.Store {
	s := btree.NewMemStore(cow)
	if cow {
		return s
	}
	return inPlaceMem{s, s}
}

type inPlaceMem struct {
	btree.Store
	m *btree.MemStore
}

func (s inPlaceMem) Len() int { return s.m.Len() }

// source is a replayable sorted record stream: record i has a key derived
// from i (increasing) and a value of size vsize(i) derived from i.
type source struct {
	n     uint64
	vsize func(i uint64) int
}

func (s source) key(i uint64) format.Key {
	return format.Key{Obj: i * 3, Type: format.TypeRmapTree + uint8(i%2), Off: i % 11, Aux: i % 5}
}

func (s source) fill(i uint64, v []byte) {
	for j := range v {
		v[j] = byte(i) + byte(j)
	}
}

// All yields the records, reusing one value buffer (Build must copy).
func (s source) All() iter.Seq2[format.Key, []byte] {
	return func(yield func(format.Key, []byte) bool) {
		buf := make([]byte, format.MaxValueSize)
		for i := uint64(0); i < s.n; i++ {
			v := buf[:s.vsize(i)]
			s.fill(i, v)
			if !yield(s.key(i), v) {
				return
			}
		}
	}
}

func (s source) model() storetest.Model {
	m := storetest.Model{}
	for i := uint64(0); i < s.n; i++ {
		v := make([]byte, s.vsize(i))
		s.fill(i, v)
		m[s.key(i)] = v
	}
	return m
}

func fixed(size int) func(uint64) int { return func(uint64) int { return size } }

// mixed sizes: mostly small, sometimes up to the maximum.
func mixed(i uint64) int {
	h := i * 0x9E3779B97F4A7C15
	if h>>60 == 0 {
		return int(h>>40) % (format.MaxValueSize + 1)
	}
	return int(h>>50) % 40
}

// leafCap is how many items of a fixed value size fill a leaf.
func leafCap(vsize int) uint64 { return uint64(format.Capacity / format.ItemSize(vsize)) }

// checkBulkTree checks a freshly loaded tree: Check is clean, the items
// equal the model, the nodes per level are the plan's, and no node but the
// root is underfull (the bound btree.go's underfull uses).
func checkBulkTree(t *testing.T, tr *btree.Tree, s btree.Store, plan *btree.BulkPlan, m storetest.Model) {
	t.Helper()
	reached := storetest.Verify(t, tr, m)
	storetest.CheckNodes(t, s, reached)
	if uint64(reached) != plan.Blocks || tr.Level != plan.Level() || tr.Items != plan.Records {
		t.Fatalf("tree has %d nodes, level %d, %d items; %s", reached, tr.Level, tr.Items, plan)
	}
	perLevel := make([]uint64, len(plan.Levels))
	var bad []string
	err := tr.Check(btree.CheckVisitor{Node: func(n format.Node, p btree.Ptr) {
		perLevel[n.Level()]++
		if p == tr.Root {
			return
		}
		if n.IsLeaf() && n.LeafUsed() < format.Capacity/4 || !n.IsLeaf() && n.NrItems() < format.MaxPtrs/4 {
			bad = append(bad, fmt.Sprintf("level %d block %d underfull: %d items, %d bytes", n.Level(), p.Block, n.NrItems(), n.LeafUsed()))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%s\n%v", plan, bad)
	}
	for l := range perLevel {
		if perLevel[l] != plan.Levels[l] {
			t.Fatalf("level %d has %d nodes; %s", l, perLevel[l], plan)
		}
	}
}

// counting wraps a Store's Alloc as a BulkAlloc and counts the calls.
func counting(s btree.Store, tree format.TreeID, calls *uint64) btree.BulkAlloc {
	return func(level int) (format.Node, btree.Ptr, error) {
		*calls++
		return s.Alloc(tree, level)
	}
}

// TestBulkLoadShapes loads many sizes, fill factors and value sizes, planned
// both from the count (fixed-size values) and from the stream, and checks
// each tree; a sample then takes random inserts and deletes.
func TestBulkLoadShapes(t *testing.T) {
	type vcase struct {
		name  string
		size  func(uint64) int
		fixed int // -1: plan from the stream only
	}
	vcases := []vcase{
		{"v0", fixed(0), 0}, {"v8", fixed(8), 8}, {"v100", fixed(100), 100},
		{"v1024", fixed(format.MaxValueSize), format.MaxValueSize}, {"mixed", mixed, -1},
	}
	fills := []float64{0.05, 0.25, 0.5, 0.7, 0.9, 1}
	big, longSteps, sample := uint64(60_000), 20_000, 8
	if storetest.Small() {
		fills = []float64{0.05, 0.7, 1}
		big, longSteps, sample = 12_000, 3000, 30
	}
	r := rand.New(rand.NewPCG(4, 4))
	for _, vc := range vcases {
		c := uint64(40) // mixed: about a leaf
		if vc.fixed >= 0 {
			c = leafCap(vc.fixed)
		}
		sizes := []uint64{0, 1, 2, c - 1, c, c + 1, 2*c - 1, 2 * c, 2*c + 1, 5*c + 3, uint64(format.MaxPtrs) * c, uint64(format.MaxPtrs)*c + 1, big}
		for _, fill := range fills {
			for _, n := range sizes {
				name := fmt.Sprintf("%s/fill=%.2f/n=%d", vc.name, fill, n)
				src := source{n: n, vsize: vc.size}
				plans := map[string]*btree.BulkPlan{}
				sp, err := btree.PlanBulk(src.All(), fill)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				plans["stream"] = sp
				if vc.fixed >= 0 {
					fp, err := btree.PlanBulkFixed(n, vc.fixed, fill)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					plans["fixed"] = fp
				}
				for how, plan := range plans {
					s := newMemStore(false)
					var calls uint64
					tr, err := plan.Build(s, format.TreeRmap, src.All(), counting(s, format.TreeRmap, &calls))
					if err != nil {
						t.Fatalf("%s %s: %v (%s)", name, how, err, plan)
					}
					if calls != plan.Blocks {
						t.Fatalf("%s %s: %d allocations, planned %d", name, how, calls, plan.Blocks)
					}
					if n == c && fill == 1 && plan.Blocks != 1 {
						t.Fatalf("%s %s: one full leaf took %d blocks", name, how, plan.Blocks)
					}
					if n == c+1 && fill == 1 && vc.fixed >= 0 && plan.Levels[0] != 2 {
						t.Fatalf("%s %s: one more than a leaf took %d leaves", name, how, plan.Levels[0])
					}
					m := src.model()
					checkBulkTree(t, tr, s, plan, m)
					// The loaded tree is an ordinary tree: continue the
					// model test on a sample, with keys that hit the
					// loaded ones.
					if longRun := n == big && (fill == 0.7 || fill == 1) && how == "stream"; longRun || r.IntN(sample) == 0 {
						steps := 2000
						if longRun {
							steps = longSteps
						}
						storetest.RandomOps(t, s, tr, m, r, storetest.Random{
							Steps: steps,
							Key: func(r *rand.Rand) format.Key {
								if n > 0 && r.IntN(3) > 0 {
									return src.key(r.Uint64N(n + n/8))
								}
								return storetest.SmallKey(r)
							},
							VerifyEvery: steps / 4,
						})
					}
				}
			}
		}
	}
}

// TestBulkLoadPlanIsCheap checks the shape of a 10M-record rmap plan made
// from the count alone, against the capacity arithmetic.
func TestBulkLoadPlanIsCheap(t *testing.T) {
	p, err := btree.PlanBulkFixed(10_000_000, 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	perLeaf := uint64(format.Capacity / format.ItemSize(8))
	if want := (p.Records + perLeaf - 1) / perLeaf; p.Levels[0] != want {
		t.Fatalf("%s: want %d leaves", p, want)
	}
	if p.Level() != 3 {
		t.Fatalf("%s: want 4 levels", p)
	}
	half, _ := btree.PlanBulkFixed(10_000_000, 8, 0.5)
	if half.Levels[0] < 2*p.Levels[0]-1 || half.Levels[0] > 2*p.Levels[0]+1 {
		t.Fatalf("fill 0.5: %s vs fill 1: %s", half, p)
	}
}

// TestBulkLoadReserved builds into blocks reserved before Build, as the
// image store will: the alloc function hands out exactly the reserved
// blocks, formatting each for the level asked.
func TestBulkLoadReserved(t *testing.T) {
	src := source{n: 25_000, vsize: mixed}
	plan, err := btree.PlanBulk(src.All(), 0.8)
	if err != nil {
		t.Fatal(err)
	}
	s := btree.NewMemStore(true)
	s.Commit()
	var reserved []btree.Ptr
	var nodes []format.Node
	for i := uint64(0); i < plan.Blocks; i++ {
		n, p, err := s.Alloc(format.TreeAlloc, 0)
		if err != nil {
			t.Fatal(err)
		}
		reserved, nodes = append(reserved, p), append(nodes, n)
	}
	used := 0
	alloc := func(level int) (format.Node, btree.Ptr, error) {
		if used == len(reserved) {
			return nil, btree.Ptr{}, errors.New("reservation exhausted")
		}
		p, n := reserved[used], nodes[used]
		used++
		return format.InitNode(n, s.FSID, p.Block, p.Gen, format.TreeAlloc, level), p, nil
	}
	tr, err := plan.Build(s, format.TreeAlloc, src.All(), alloc)
	if err != nil {
		t.Fatal(err)
	}
	if used != len(reserved) {
		t.Fatalf("used %d of %d reserved blocks", used, len(reserved))
	}
	m := src.model()
	checkBulkTree(t, tr, s, plan, m)
	s.Commit()
	storetest.RandomOps(t, s, tr, m, rand.New(rand.NewPCG(8, 8)), storetest.Random{
		Steps: 5000,
		Key:   func(r *rand.Rand) format.Key { return src.key(r.Uint64N(src.n + 100)) },
	})
}

// TestBulkLoadMismatch feeds Build streams that differ from the plan and
// alloc functions that misbehave.
func TestBulkLoadMismatch(t *testing.T) {
	const n = 5000
	src := source{n: n, vsize: fixed(8)}
	plan, err := btree.PlanBulkFixed(n, 8, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	build := func(recs iter.Seq2[format.Key, []byte], alloc func(s btree.Store) btree.BulkAlloc) error {
		s := btree.NewMemStore(false)
		var a btree.BulkAlloc
		if alloc != nil {
			a = alloc(s)
		}
		_, err := plan.Build(s, format.TreeRmap, recs, a)
		return err
	}
	if err := build(src.All(), nil); err != nil {
		t.Fatalf("the planned stream: %v", err)
	}
	for _, c := range []struct {
		name string
		recs iter.Seq2[format.Key, []byte]
		want error
	}{
		{"fewer", source{n: n - 1, vsize: fixed(8)}.All(), btree.ErrPlanMismatch},
		{"more", source{n: n + 1, vsize: fixed(8)}.All(), btree.ErrPlanMismatch},
		{"none", source{n: 0, vsize: fixed(8)}.All(), btree.ErrPlanMismatch},
		{"value size", source{n: n, vsize: func(i uint64) int { return 8 + int(i/4000) }}.All(), btree.ErrPlanMismatch},
		{"unsorted", func(yield func(format.Key, []byte) bool) {
			for k, v := range src.All() {
				if k.Obj == 3*777 {
					k.Obj = 1
				}
				if !yield(k, v) {
					return
				}
			}
		}, btree.ErrUnsorted},
		{"duplicate", func(yield func(format.Key, []byte) bool) {
			for k, v := range src.All() {
				if !yield(k, v) || (k.Obj == 3*4000 && !yield(k, v)) {
					return
				}
			}
		}, btree.ErrUnsorted},
	} {
		if err := build(c.recs, nil); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A variable-size plan fed other sizes.
	vplan, err := btree.PlanBulk(source{n: n, vsize: mixed}.All(), 0.7)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vplan.Build(btree.NewMemStore(false), format.TreeRmap, source{n: n, vsize: func(i uint64) int { return mixed(i+1) % 300 }}.All(), nil)
	if !errors.Is(err, btree.ErrPlanMismatch) {
		t.Errorf("variable sizes changed: %v", err)
	}
	// Misbehaving alloc functions.
	failing := errors.New("no space")
	if err := build(src.All(), func(s btree.Store) btree.BulkAlloc {
		calls := 0
		return func(level int) (format.Node, btree.Ptr, error) {
			if calls++; calls > 10 {
				return nil, btree.Ptr{}, failing
			}
			return s.Alloc(format.TreeRmap, level)
		}
	}); !errors.Is(err, failing) {
		t.Errorf("failing alloc: %v", err)
	}
	if err := build(src.All(), func(s btree.Store) btree.BulkAlloc {
		return func(level int) (format.Node, btree.Ptr, error) { return s.Alloc(format.TreeRmap, 0) }
	}); !errors.Is(err, btree.ErrPlanMismatch) {
		t.Errorf("alloc ignoring the level: %v", err)
	}
	if err := build(src.All(), func(s btree.Store) btree.BulkAlloc {
		return func(level int) (format.Node, btree.Ptr, error) { return s.Alloc(format.TreeFree, level) }
	}); !errors.Is(err, btree.ErrPlanMismatch) {
		t.Errorf("alloc for another tree: %v", err)
	}
	// Plans refuse bad input.
	for _, fill := range []float64{0, -1, 1.01} {
		if _, err := btree.PlanBulkFixed(10, 8, fill); err == nil {
			t.Errorf("fill %v accepted", fill)
		}
	}
	if _, err := btree.PlanBulkFixed(10, format.MaxValueSize+1, 1); !errors.Is(err, btree.ErrValueTooLarge) {
		t.Errorf("value size over the maximum: %v", err)
	}
	if _, err := btree.PlanBulk(func(yield func(format.Key, []byte) bool) {
		_ = yield(format.Key{Obj: 2}, nil) && yield(format.Key{Obj: 1}, nil)
	}, 1); !errors.Is(err, btree.ErrUnsorted) {
		t.Errorf("unsorted plan: %v", err)
	}
}
