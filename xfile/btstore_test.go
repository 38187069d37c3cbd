package xfile

import (
	"errors"
	"maps"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/btree/storetest"
	"github.com/scrubd/scrubd/engine/format"
)

func newTestBTreeStore(t testing.TB) *BTreeStore {
	t.Helper()
	s, err := NewBTreeStore(Options{Dir: t.TempDir(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkStoreBookkeeping(t, s)
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// checkStoreBookkeeping checks the store's own accounting: the bitmap, the
// counters and the free lists agree, and every block below the extent is
// either in use or on exactly one free list.
func checkStoreBookkeeping(t testing.TB, s *BTreeStore) {
	t.Helper()
	if s.f.osf == nil {
		return
	}
	set := 0
	for _, w := range s.inUse {
		set += bits.OnesCount64(w)
	}
	if uint64(set) != s.count {
		t.Errorf("bitmap has %d blocks in use, counter %d", set, s.count)
	}
	if s.allocs-s.frees != s.count {
		t.Errorf("%d allocs - %d frees != %d in use", s.allocs, s.frees, s.count)
	}
	seen := map[format.BlockNr]bool{}
	for _, l := range [][]format.BlockNr{s.free, s.punched} {
		for _, b := range l {
			if b == 0 || b >= s.next || s.used(b) || seen[b] {
				t.Errorf("free block %d: extent %d, in use %v, listed twice %v", b, s.next, s.used(b), seen[b])
			}
			seen[b] = true
		}
	}
	if got, want := uint64(len(seen))+s.count, uint64(s.next)-1; got != want {
		t.Errorf("%d free + %d in use != %d blocks ever used", len(seen), s.count, want)
	}
}

// TestBTreeStoreSuite runs the shared B-tree model suite on the xfile
// store, once with the default punching policy and once punching freed
// blocks almost at once, so that reuse of punched blocks is exercised.
func TestBTreeStoreSuite(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) btree.Store {
			s := newTestBTreeStore(t)
			if strings.HasSuffix(t.Name(), "/GrowAndShrink") {
				t.Cleanup(func() {
					if len(s.f.views) < 3 {
						t.Errorf("the tree grew across %d remaps only", len(s.f.views))
					}
				})
			}
			return s
		})
	})
	t.Run("punchy", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) btree.Store {
			s := newTestBTreeStore(t)
			s.punchMin, s.punchShift = 1, 63
			return s
		})
	})
}

// TestBTreeStoreGrowthRemaps grows a tree across several remaps of the
// file and checks that nodes fetched before a remap still alias the file.
func TestBTreeStoreGrowthRemaps(t *testing.T) {
	s := newTestBTreeStore(t)
	tr, err := s.CreateTree(format.TreeRmap)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Read(tr.ID, tr.Root, 0)
	if err != nil {
		t.Fatal(err)
	}
	firstBlock := tr.Root.Block
	n := 60_000
	if raceEnabled || testing.Short() {
		n = 20_000
	}
	m := storetest.Model{}
	r := rand.New(rand.NewPCG(11, 11))
	for i := 0; i < n; i++ {
		k := format.Key{Obj: r.Uint64(), Type: format.TypeRmapInode, Off: uint64(i)}
		v := []byte{byte(i), 1, 2, 3, 4, 5, 6, 7}
		if err := tr.Insert(k, v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	if len(s.f.views) < 3 {
		t.Fatalf("only %d remaps (mapping %d bytes)", len(s.f.views), s.f.Size())
	}
	// The first node's slice came from the first view; it still reads the
	// file's current bytes of that block.
	cur, err := s.f.Bytes(int64(firstBlock)*format.BlockSize, format.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	if &first[0] == &cur[0] {
		t.Fatal("the test did not remap")
	}
	if string(first) != string(cur) {
		t.Fatal("node slice from before the remaps disagrees with the file")
	}
	storetest.VerifyAll(t, s, tr, m)
}

// TestBTreeStoreReadIsNoCopy checks that Read and Writable return the
// mapping itself, and that a node changed through Writable reads back.
func TestBTreeStoreReadIsNoCopy(t *testing.T) {
	s := newTestBTreeStore(t)
	tr, err := s.CreateTree(format.TreeInode)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Insert(format.Key{Obj: 1}, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	n, err := s.Read(tr.ID, tr.Root, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(tr.Root.Block) * format.BlockSize
	if unsafe.SliceData(n) != &s.f.mem[off] || len(n) != format.BlockSize || cap(n) != format.BlockSize {
		t.Fatal("Read did not return the block's slice of the mapping")
	}
	w, p, err := s.Writable(tr.ID, tr.Root, 0)
	if err != nil || p != tr.Root || unsafe.SliceData(w) != unsafe.SliceData(n) {
		t.Fatalf("Writable: %v, ptr %v (root %v), same node %v", err, p, tr.Root, unsafe.SliceData(w) == unsafe.SliceData(n))
	}
	if tr.Root.Gen != BTreeGen || tr.Root.Block != 1 {
		t.Fatalf("first root is %+v", tr.Root)
	}
}

// TestBTreeStoreFreeReuse checks that freed blocks are reused before the
// file is extended, and that a double free is refused.
func TestBTreeStoreFreeReuse(t *testing.T) {
	s := newTestBTreeStore(t)
	var ptrs []btree.Ptr
	for i := 0; i < 10; i++ {
		_, p, err := s.Alloc(format.TreeInode, 0)
		if err != nil {
			t.Fatal(err)
		}
		ptrs = append(ptrs, p)
	}
	for _, p := range ptrs[2:5] {
		if err := s.Free(format.TreeInode, p, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Free(format.TreeInode, ptrs[3], 0); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("double free: %v", err)
	}
	if err := s.Free(format.TreeDir, ptrs[6], 0); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("free by the wrong tree: %v", err)
	}
	for i := 0; i < 3; i++ {
		n, p, err := s.Alloc(format.TreeDir, 1)
		if err != nil {
			t.Fatal(err)
		}
		if p.Block < 3 || p.Block > 5 || n.Owner() != format.TreeDir || n.Level() != 1 || n.NrItems() != 0 {
			t.Fatalf("alloc %d got block %d (owner %s level %d items %d), want a freed one", i, p.Block, n.Owner(), n.Level(), n.NrItems())
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 10 || st.Extent != 10 || st.Free != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBTreeStoreGivesMemoryBack fills a tree, empties it, and checks that
// the freed blocks' storage went back to the system and is reused after.
func TestBTreeStoreGivesMemoryBack(t *testing.T) {
	s := newTestBTreeStore(t)
	tr, err := s.CreateTree(format.TreeExtent)
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(100_000)
	val := make([]byte, 24)
	for i := uint64(0); i < n; i++ {
		if err := tr.Insert(format.Key{Obj: i * 7919 % n, Off: i}, val); err != nil {
			t.Fatal(err)
		}
	}
	full, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < n; i++ {
		if ok, err := tr.Delete(format.Key{Obj: i * 7919 % n, Off: i}); err != nil || !ok {
			t.Fatal(ok, err)
		}
	}
	empty, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full: %+v", full)
	t.Logf("empty: %+v", empty)
	if empty.Blocks != 1 || empty.Punched == 0 || empty.Discards == 0 {
		t.Fatalf("after emptying: %+v", empty)
	}
	if empty.Free > keepResident+punchMin {
		t.Fatalf("%d free blocks kept backed", empty.Free)
	}
	// Allocated includes reservation ahead of use (up to 16 MiB); what was
	// punched must be gone from it.
	if given := full.File.Allocated - empty.File.Allocated; given < int64(empty.Punched)*format.BlockSize/2 {
		t.Fatalf("allocated %d -> %d bytes after punching %d blocks", full.File.Allocated, empty.File.Allocated, empty.Punched)
	}
	if err := s.Trim(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Stats(); st.Free != 0 {
		t.Fatalf("after Trim: %+v", st)
	}
	// Grow again: punched blocks are reused, lowest first, before the
	// file is extended.
	for i := uint64(0); i < n; i++ {
		if err := tr.Insert(format.Key{Obj: i}, val); err != nil {
			t.Fatal(err)
		}
	}
	again, _ := s.Stats()
	if again.Extent != full.Extent || again.Blocks+again.Punched+again.Free != again.Extent {
		t.Fatalf("regrown: %+v (full: %+v)", again, full)
	}
	storetest.Verify(t, tr, func() storetest.Model {
		m := storetest.Model{}
		for i := uint64(0); i < n; i++ {
			m[format.Key{Obj: i}] = val
		}
		return m
	}())
}

// TestBTreeStoreDetectsBadNodes damages node headers through the mapping
// and checks that Read names the damage.
func TestBTreeStoreDetectsBadNodes(t *testing.T) {
	s := newTestBTreeStore(t)
	tr, err := s.CreateTree(format.TreeInode)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); i < 1000; i++ {
		if err := tr.Insert(format.Key{Obj: i}, []byte("some value")); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := s.Read(tr.ID, tr.Root, tr.Level)
	b, g := n.Child(0)
	child := btree.Ptr{Block: b, Gen: g}
	for _, c := range []struct {
		off  int
		kind format.Kind
	}{
		{0, format.KindBadMagic},
		{24, format.KindMisdirected},
		{32, format.KindStale},
		{40, format.KindWrongOwner},
		{48, format.KindBadLevel},
		{51, format.KindBadLayout},
	} {
		node, _ := s.Read(tr.ID, child, 0)
		node[c.off] ^= 0x40
		_, err := s.Read(tr.ID, child, 0)
		ce, ok := format.AsCorrupt(err)
		if !ok || ce.Kind != c.kind || ce.Block != b {
			t.Errorf("flip at %d: %v, want %s", c.off, err, c.kind)
		}
		var probs []btree.Problem
		if err := tr.Check(btree.CheckVisitor{Problem: func(p btree.Problem) { probs = append(probs, p) }}); err != nil {
			t.Fatal(err)
		}
		if len(probs) == 0 || probs[0].Kind != c.kind || probs[0].Block != b {
			t.Errorf("flip at %d: check found %v", c.off, probs)
		}
		s.f.mem[int64(b)*format.BlockSize+int64(c.off)] ^= 0x40
	}
	storetest.Verify(t, tr, func() storetest.Model {
		m := storetest.Model{}
		for i := uint64(0); i < 1000; i++ {
			m[format.Key{Obj: i}] = []byte("some value")
		}
		return m
	}())
}

// TestBTreeStoreNoHeapPerRecord checks that inserts into a grown tree make
// no Go heap allocations.
func TestBTreeStoreNoHeapPerRecord(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	s := newTestBTreeStore(t)
	tr, err := s.CreateTree(format.TreeRmap)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	val := make([]byte, 8)
	insert := func() {
		k := format.Key{Obj: r.Uint64(), Type: format.TypeRmapTree, Off: 5}
		if err := tr.Insert(k, val); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50_000; i++ {
		insert()
	}
	if a := testing.AllocsPerRun(50_000, insert); a != 0 {
		t.Fatalf("%v heap allocations per insert", a)
	}
}

// TestBTreeStoreClosed checks that a closed store refuses everything.
func TestBTreeStoreClosed(t *testing.T) {
	s, err := NewBTreeStore(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := s.CreateTree(format.TreeInode)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := s.Read(tr.ID, tr.Root, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, _, err := s.Alloc(tr.ID, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("alloc after close: %v", err)
	}
	if err := s.Free(tr.ID, tr.Root, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("free after close: %v", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("stats after close: %v", err)
	}
	if err := s.Trim(); !errors.Is(err, ErrClosed) {
		t.Fatalf("trim after close: %v", err)
	}
}

// TestBTreeStoreBulkLoad bulk-loads an xfile tree from another xfile tree
// (the repair path: a shadow index read back in order), checks it, and
// continues the model test on it.
func TestBTreeStoreBulkLoad(t *testing.T) {
	src := newTestBTreeStore(t)
	st, err := src.CreateTree(format.TreeRmap)
	if err != nil {
		t.Fatal(err)
	}
	n := 80_000
	if raceEnabled || testing.Short() {
		n = 15_000
	}
	m := storetest.Model{}
	r := rand.New(rand.NewPCG(12, 12))
	for i := 0; i < n; i++ {
		k := format.Key{Obj: r.Uint64N(1 << 20), Type: format.TypeRmapInode, Off: r.Uint64N(100), Aux: uint64(i)}
		v := make([]byte, 8)
		v[0] = byte(i)
		if err := st.Insert(k, v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	loaded := m.Keys()
	var ascendErr error
	recs := func(yield func(format.Key, []byte) bool) {
		ascendErr = st.Ascend(format.Key{}, func(k format.Key, v []byte) bool { return yield(k, v) })
	}
	for _, fill := range []float64{1, 0.75} {
		dst := newTestBTreeStore(t)
		plan, err := btree.PlanBulkFixed(st.Items, 8, fill)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := plan.Build(dst, format.TreeRmap, recs, nil)
		if err != nil || ascendErr != nil {
			t.Fatal(err, ascendErr)
		}
		if uint64(dst.Len()) != plan.Blocks {
			t.Fatalf("store holds %d blocks, planned %d", dst.Len(), plan.Blocks)
		}
		mm := maps.Clone(m)
		storetest.VerifyAll(t, dst, tr, mm)
		storetest.RandomOps(t, dst, tr, mm, r, storetest.Random{
			Steps: 5000,
			Key: func(r *rand.Rand) format.Key {
				if r.IntN(2) == 0 {
					return loaded[r.IntN(len(loaded))] // often deleted or updated
				}
				return format.Key{Obj: r.Uint64N(1 << 20), Type: format.TypeRmapInode, Off: r.Uint64N(100), Aux: r.Uint64N(uint64(n))}
			},
			Value: func(r *rand.Rand) []byte { return make([]byte, 8) },
		})
	}
}
