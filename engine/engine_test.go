package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

const testBlocks = 4096 // 16 MiB

// mustCheck runs the full self-check on the engine's last commit and fails
// the test on any finding.
func mustCheck(t testing.TB, e *Engine) *CheckResult {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	var fs []string
	res, err := s.Check(context.Background(), func(f Finding) { fs = append(fs, f.String()) })
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if len(fs) > 0 {
		t.Fatalf("check of generation %d found %d problems:\n%s", s.Gen(), len(fs), strings.Join(fs, "\n"))
	}
	return res
}

// newTestEngine makes a filesystem on an in-memory device and opens it; the
// full self-check runs when the test ends.
func newTestEngine(t testing.TB, opts Options) (*Engine, *disk.Mem) {
	t.Helper()
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{Label: "test"}); err != nil {
		t.Fatal(err)
	}
	if opts.CommitInterval == 0 {
		opts.CommitInterval = -1
	}
	e, err := Open(nopClose{dev}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Sync(); err != nil && !errors.Is(err, ErrReadOnly) {
			t.Errorf("final sync: %v", err)
		}
		mustCheck(t, e)
		e.Close()
	})
	return e, dev
}

// nopClose keeps a test device usable after the engine closes it.
type nopClose struct{ disk.Device }

func (nopClose) Close() error { return nil }

func reopen(t testing.TB, img []byte, opts Options) *Engine {
	t.Helper()
	if opts.CommitInterval == 0 {
		opts.CommitInterval = -1
	}
	e, err := Open(disk.NewMemFrom(img), opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func key(i uint64) format.Key { return format.Key{Obj: i, Type: 1} }

func val(i uint64, salt uint64) []byte {
	v := make([]byte, 8+int(i%40))
	binary.LittleEndian.PutUint64(v, i^salt)
	return v
}

// contents reads tree id of a snapshot into a map.
func contents(t testing.TB, s *Snapshot, id format.TreeID) map[format.Key]string {
	t.Helper()
	tr, ok := s.Tree(id)
	if !ok {
		t.Fatalf("no tree %s", id)
	}
	m := map[format.Key]string{}
	if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		m[k] = string(v)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMkfsOpenEmptyClean(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	res := mustCheck(t, e)
	if len(res.Trees) != len(format.KnownTrees) {
		t.Fatalf("%d trees, want %d", len(res.Trees), len(format.KnownTrees))
	}
	if e.MountInfo().FellBack {
		t.Fatalf("fresh image fell back: %v", e.MountInfo().Notes)
	}
}

// workload is a random mix of item inserts, updates, deletes and data
// extent allocations and frees, mirrored in a model.
type workload struct {
	r       *rand.Rand
	items   map[format.Key]string
	extents map[format.BlockNr]uint64 // data extents owned by inode 1000+start
}

func newWorkload(seed uint64) *workload {
	return &workload{r: rand.New(rand.NewPCG(seed, seed)), items: map[format.Key]string{}, extents: map[format.BlockNr]uint64{}}
}

func (w *workload) clone() map[format.Key]string {
	m := make(map[format.Key]string, len(w.items))
	for k, v := range w.items {
		m[k] = v
	}
	return m
}

// Synthetic file extents are all of inode 1000, slot i at file block
// 256·i: no two overlap (an extent is at most 224 blocks).
func testExtentKey(i uint64) format.Key { return format.FileExtentKey(1000, 256*i) }
func testOwner(i uint64) format.Owner   { return format.Owner{Inode: 1000, Offset: 256 * i} }

// addDataExtent makes a data extent of n blocks as the filesystem does:
// allocated for inode 1000 at offset off, mapped by a file extent item,
// with its checksums.
func addDataExtent(tx *Tx, off, n uint64) (format.BlockNr, error) {
	start, err := tx.AllocExtent(n, testOwner(off))
	if err != nil {
		return 0, err
	}
	et, _ := tx.Tree(format.TreeExtent)
	if err := et.Insert(testExtentKey(off), format.FileExtent{Start: start, Len: n, Count: n}.Encode()); err != nil {
		return 0, err
	}
	ct, _ := tx.Tree(format.TreeCsum)
	return start, ct.Put(format.CsumKey(start), make([]byte, 4*n))
}

func (w *workload) step(tx *Tx) error {
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	i := w.r.Uint64N(3000)
	switch op := w.r.IntN(10); {
	case op < 5:
		v := val(i, w.r.Uint64())
		if err := tr.Put(key(i), v); err != nil {
			return err
		}
		w.items[key(i)] = string(v)
	case op < 8:
		if _, err := tr.Delete(key(i)); err != nil {
			return err
		}
		delete(w.items, key(i))
	case op < 9:
		// A data extent as the filesystem makes one: allocated, mapped by
		// a file extent item, with its checksums.
		n := 1 + w.r.Uint64N(8)
		if _, ok, _ := tx.e.trees[format.TreeExtent].Get(testExtentKey(i), nil); ok {
			return nil
		}
		start, err := addDataExtent(tx, i, n)
		if err != nil {
			return err
		}
		w.extents[start] = n<<32 | i
	default:
		for s, x := range w.extents {
			et, _ := tx.Tree(format.TreeExtent)
			if _, err := et.Delete(testExtentKey(x & 0xffffffff)); err != nil {
				return err
			}
			if err := tx.DropRef(s, x>>32, testOwner(x&0xffffffff)); err != nil {
				return err
			}
			delete(w.extents, s)
			break
		}
	}
	return nil
}

func TestRandomWorkloadReopen(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	w := newWorkload(1)
	for round := 0; round < 20; round++ {
		for i := 0; i < 300; i++ {
			if err := e.Update(w.step); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Sync(); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, e)
	}
	want := w.clone()
	e2 := reopen(t, dev.Bytes(), Options{ReadOnly: true})
	defer e2.Close()
	mustCheck(t, e2)
	s := e2.Pin()
	defer s.Release()
	got := contents(t, s, format.TreeInode)
	if len(got) != len(want) {
		t.Fatalf("reopened image has %d items, model %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("item %s differs", k)
		}
	}
	st := e.Stats()
	if st.Refs.Merged == 0 || st.Refs.Applied == 0 {
		t.Fatalf("delayed refs never merged or applied: %+v", st.Refs)
	}
}

// TestCrashAtEveryFlush runs a random workload on a recording device and,
// for every flush boundary, opens the image as a crash there could leave it
// (unflushed writes dropped, all kept, or a random torn subset): it must
// open, pass the self-check, and hold exactly one committed generation.
func TestCrashAtEveryFlush(t *testing.T) {
	base := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(base, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(base.Bytes())
	e, err := Open(nopClose{rec}, Options{CommitInterval: -1, MaxDelayedRefs: 200})
	if err != nil {
		t.Fatal(err)
	}
	// Mount commits once (it sets up the fsync log).
	committed := map[format.Gen]map[format.Key]string{1: {}}
	s := e.Pin()
	committed[s.Gen()] = map[format.Key]string{}
	durableAt := map[int]format.Gen{0: 1, rec.Flushes(): s.Gen()} // flush count -> gen durable after it
	s.Release()
	w := newWorkload(2)
	rounds := 25
	if testing.Short() {
		rounds = 8
	}
	for round := 0; round < rounds; round++ {
		n := 1 + w.r.IntN(150)
		for i := 0; i < n; i++ {
			if err := e.Update(w.step); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Sync(); err != nil {
			t.Fatal(err)
		}
		s := e.Pin()
		committed[s.Gen()] = w.clone()
		durableAt[rec.Flushes()] = s.Gen()
		s.Release()
	}
	e.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	lastDurable := format.Gen(1)
	for k := 0; k <= rec.Flushes(); k++ {
		if g, ok := durableAt[k]; ok {
			lastDurable = g
		}
		if !checkBoundary(k, rec.Flushes()) {
			continue
		}
		modes := []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom, disk.CrashRandom}
		for mi, mode := range modes {
			img := rec.CrashImage(k, mode, rng)
			name := fmt.Sprintf("flush %d mode %v #%d", k, mode, mi)
			ce, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			snap := ce.Pin()
			g := snap.Gen()
			if g != lastDurable && g != lastDurable+1 {
				t.Fatalf("%s: opened generation %d, durable was %d", name, g, lastDurable)
			}
			want, ok := committed[g]
			if !ok {
				t.Fatalf("%s: generation %d was never committed", name, g)
			}
			got := contents(t, snap, format.TreeInode)
			snap.Release()
			if len(got) != len(want) {
				t.Fatalf("%s: gen %d has %d items, committed %d", name, g, len(got), len(want))
			}
			for k, v := range want {
				if got[k] != v {
					t.Fatalf("%s: gen %d item %s differs", name, g, k)
				}
			}
			mustCheck(t, ce)
			// The image stays usable: write and commit on top.
			if err := ce.Update(newWorkload(uint64(k)).step); err != nil {
				t.Fatalf("%s: write after crash: %v", name, err)
			}
			if err := ce.Sync(); err != nil {
				t.Fatalf("%s: commit after crash: %v", name, err)
			}
			mustCheck(t, ce)
			ce.Close()
		}
	}
}

// TestReadersSeeConsistentGenerations runs readers that pin generations and
// verify them while a writer commits; run it with -race.
func TestReadersSeeConsistentGenerations(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	// The writer keeps the invariant: the items of every committed
	// generation hold values whose first 8 bytes sum to zero mod 2^64.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(5, 5))
		for round := 0; round < 150; round++ {
			err := e.Update(func(tx *Tx) error {
				tr, err := tx.Tree(format.TreeInode)
				if err != nil {
					return err
				}
				a, b := r.Uint64N(500), 500+r.Uint64N(500)
				x := r.Uint64()
				va, vb := make([]byte, 16), make([]byte, 16)
				old := func(k format.Key) uint64 {
					v, ok, _ := tr.Get(k, nil)
					if !ok {
						return 0
					}
					return binary.LittleEndian.Uint64(v)
				}
				binary.LittleEndian.PutUint64(va, old(key(a))+x)
				binary.LittleEndian.PutUint64(vb, old(key(b))-x)
				if err := tr.Put(key(a), va); err != nil {
					return err
				}
				return tr.Put(key(b), vb)
			})
			if err == nil && round%5 == 0 {
				err = e.Sync()
			}
			if err != nil {
				errc <- err
				return
			}
		}
		close(stop)
	}()
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := e.Pin()
				tr, _ := s.Tree(format.TreeInode)
				var sum uint64
				n := uint64(0)
				err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
					sum += binary.LittleEndian.Uint64(v)
					n++
					return true
				})
				if err == nil && (sum != 0 || n != tr.Items) {
					err = fmt.Errorf("generation %d: sum %d over %d items (root says %d)", s.Gen(), sum, n, tr.Items)
				}
				s.Release()
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestPinnedBlocksNotReused pins a generation, rewrites everything many
// times, and checks the pinned view is still intact.
func TestPinnedBlocksNotReused(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	w := newWorkload(3)
	for i := 0; i < 500; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	want := contents(t, s, format.TreeInode)
	for round := 0; round < 30; round++ {
		for i := 0; i < 200; i++ {
			if err := e.Update(w.step); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if e.Stats().PendingBlocks == 0 {
		t.Fatal("nothing pending while a reader pins an old generation")
	}
	var fs []Finding
	if _, err := s.Check(context.Background(), func(f Finding) { fs = append(fs, f) }); err != nil || len(fs) > 0 {
		t.Fatalf("pinned generation damaged: %v %v", err, fs)
	}
	got := contents(t, s, format.TreeInode)
	if len(got) != len(want) {
		t.Fatalf("pinned view changed: %d items, was %d", len(got), len(want))
	}
	s.Release()
	if p := e.Stats().PendingBlocks; p != 0 {
		t.Fatalf("%d blocks still pending after release", p)
	}
}

func TestSuperblockFallback(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	if err := e.Update(newWorkload(4).step); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	img := dev.Bytes()
	img[100] ^= 0xff // primary superblock
	e2 := reopen(t, img, Options{ReadOnly: true})
	defer e2.Close()
	mi := e2.MountInfo()
	if !mi.FellBack || mi.SuperBlock == 0 || len(mi.Notes) == 0 {
		t.Fatalf("mount info %+v", mi)
	}
	s := e2.Pin()
	defer s.Release()
	var ids []ErrorID
	s.Check(context.Background(), func(f Finding) { ids = append(ids, f.ID) })
	if len(ids) != 1 || ids[0] != ErrSuperCopyBad {
		t.Fatalf("findings %v, want one super_copy_bad", ids)
	}
}

func TestUnknownIncompatRefused(t *testing.T) {
	_, dev := newTestEngine(t, Options{})
	img := dev.Bytes()
	for _, at := range format.SuperBlocks(testBlocks) {
		b := img[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
		s, err := format.DecodeSuper(b, at)
		if err != nil {
			t.Fatal(err)
		}
		s.Incompat |= 1 << 50
		s.Encode(b)
	}
	_, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
	if err == nil || !strings.Contains(err.Error(), "incompat") {
		t.Fatalf("open with unknown incompat feature: %v", err)
	}
}

func TestDelayedRefsSaveTreeModifications(t *testing.T) {
	run := func(noDelay bool) RefStats {
		e, _ := newTestEngine(t, Options{NoDelayedRefs: noDelay})
		w := newWorkload(6)
		for round := 0; round < 5; round++ {
			for i := 0; i < 400; i++ {
				if err := e.Update(w.step); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		return e.Stats().Refs
	}
	queued, immediate := run(false), run(true)
	if queued.TreeMods*2 > immediate.TreeMods {
		t.Fatalf("delayed refs made %d tree modifications, immediate %d: expected at least 2x fewer", queued.TreeMods, immediate.TreeMods)
	}
	t.Logf("tree modifications: delayed %d, immediate %d (merged %d)", queued.TreeMods, immediate.TreeMods, queued.Merged)
}

func TestNoSpace(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	err := e.Update(func(tx *Tx) error {
		_, err := tx.AllocExtent(testBlocks*2, format.Owner{Inode: 5})
		return err
	})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("oversized allocation: %v", err)
	}
}

func TestCorruptRootNamed(t *testing.T) {
	skipShort(t)
	for _, id := range format.KnownTrees {
		t.Run(id.String(), func(t *testing.T) {
			e, dev := newTestEngine(t, Options{})
			s := e.Pin()
			ri, _ := s.Root(id)
			s.Release()
			img := dev.Bytes()
			img[int(ri.Root.Block)*format.BlockSize+300] ^= 0x10
			res, fs, err := CheckImage(disk.NewMemFrom(img), CheckOptions{})
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			if len(fs) == 0 || fs[0].Tree != id || fs[0].Block != ri.Root.Block {
				t.Fatalf("flipped byte in %s root %d: findings %v (%+v)", id, ri.Root.Block, fs, res)
			}
		})
	}
}

func TestUnknownTreeKept(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	const unknown = format.TreeID(77)
	if err := e.createTreeForTest(unknown); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	e2 := reopen(t, dev.Bytes(), Options{})
	defer e2.Close()
	if err := e2.Update(newWorkload(8).step); err != nil {
		t.Fatal(err)
	}
	if err := e2.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e2.Pin()
	defer s.Release()
	if _, ok := s.Root(unknown); !ok {
		t.Fatal("unknown tree dropped")
	}
	mustCheck(t, e2)
	_ = bytes.MinRead
}

// TestCheckColdWideTree checks, with a cold cache, a tree whose interior
// nodes have many children: the scan's recycled buffers must never be
// reused while a node that owns one is still being walked.
func TestCheckColdWideTree(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	for i := uint64(0); i < 40000; i += 1000 {
		if err := e.Update(func(tx *Tx) error {
			tr, err := tx.Tree(format.TreeInode)
			if err != nil {
				return err
			}
			for j := i; j < i+1000; j++ {
				if err := tr.Put(key(j), val(j, 1)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	cold := reopen(t, dev.Bytes(), Options{ReadOnly: true, CacheBlocks: 1})
	defer cold.Close()
	res := mustCheck(t, cold)
	for _, tc := range res.Trees {
		if tc.Tree == format.TreeInode && (tc.Level < 1 || tc.Blocks < 100) {
			t.Fatalf("inode tree too small to test: level %d, %d blocks", tc.Level, tc.Blocks)
		}
	}
}

// TestDelayedRefsInSlices applies the delayed-ref queue in slices of random
// size between updates (as settleAhead does before a commit, and the
// throttle when the queue outgrows its limit) and checks every commit
// against the full self-check and the model: applying part of the queue
// early must leave the same trees as applying it all at commit.
func TestDelayedRefsInSlices(t *testing.T) {
	e, dev := newTestEngine(t, Options{MaxDelayedRefs: 64})
	w := newWorkload(11)
	r := rand.New(rand.NewPCG(11, 12))
	// Mostly data extents allocated and dropped: blocks freed and reused
	// within a transaction, after some of their references were applied.
	churn := func(tx *Tx) error {
		if r.IntN(4) == 0 {
			return w.step(tx)
		}
		if len(w.extents) > 200 || (r.IntN(3) == 0 && len(w.extents) > 0) {
			for s, x := range w.extents {
				et, _ := tx.Tree(format.TreeExtent)
				if _, err := et.Delete(testExtentKey(x & 0xffffffff)); err != nil {
					return err
				}
				delete(w.extents, s)
				return tx.DropRef(s, x>>32, testOwner(x&0xffffffff))
			}
		}
		i := 3000 + r.Uint64N(3000)
		et, _ := tx.Tree(format.TreeExtent)
		if _, ok, _ := et.Get(testExtentKey(i), nil); ok {
			return nil
		}
		n := 1 + r.Uint64N(8)
		start, err := addDataExtent(tx, i, n)
		if err != nil {
			return err
		}
		w.extents[start] = n<<32 | i
		return nil
	}
	for round := 0; round < 15; round++ {
		for i := 0; i < 300; i++ {
			if err := e.Update(churn); err != nil {
				t.Fatal(err)
			}
			if r.IntN(40) == 0 {
				e.wmu.Lock()
				err := e.runDelayedRefsN(1 + r.IntN(40))
				e.wmu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
			}
			if e.Stats().QueuedRefs > 64+settleSlice {
				t.Fatalf("queue at %d entries: the throttle did not settle it", e.Stats().QueuedRefs)
			}
		}
		if err := e.Sync(); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, e)
	}
	st := e.Stats()
	if st.Refs.Throttle == 0 || st.Refs.Runs < 30 {
		t.Fatalf("the throttle or the slices never ran: %+v", st.Refs)
	}
	e2 := reopen(t, dev.Bytes(), Options{ReadOnly: true})
	defer e2.Close()
	s := e2.Pin()
	defer s.Release()
	got, want := contents(t, s, format.TreeInode), w.clone()
	if len(got) != len(want) {
		t.Fatalf("reopened image has %d items, model %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("item %s differs", k)
		}
	}
}

// TestSettleAheadLeavesTheCommitLittle: a commit applies its delayed refs
// in slices before it holds writers out, so what its settle applies under
// the writer lock is at most a slice.
func TestSettleAheadLeavesTheCommitLittle(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	for i := 0; i < 3000; i++ {
		err := e.Update(func(tx *Tx) error {
			_, err := addDataExtent(tx, uint64(i), 1)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	queued := e.Stats().QueuedRefs
	if queued < 4*settleSlice {
		t.Fatalf("only %d refs queued: the test needs several slices", queued)
	}
	if err := e.settleAhead(); err != nil {
		t.Fatal(err)
	}
	if left := e.Stats().QueuedRefs; left > settleSlice {
		t.Fatalf("%d of %d refs left after settleAhead, want at most %d", left, queued, settleSlice)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestWriterLockWaitsCounted checks that every path that takes the writer
// lock for a caller counts its wait: settleAhead rests between slices only
// when it sees one, so an uncounted path starves the writers behind it.
func TestWriterLockWaitsCounted(t *testing.T) {
	e, _ := newTestEngine(t, Options{CommitInterval: -1})
	e.wmu.Lock()
	done := make(chan struct{}, 4)
	go func() { e.Update(func(tx *Tx) error { return nil }); done <- struct{}{} }()
	go func() { e.View(func(tx *Tx) error { return nil }); done <- struct{}{} }()
	go func() { e.FsyncView(func(tx *Tx) error { return nil }); done <- struct{}{} }()
	go func() { e.Stats(); done <- struct{}{} }()
	for until := time.Now().Add(30 * time.Second); e.waiting.Load() < 4; time.Sleep(time.Millisecond) {
		if time.Now().After(until) {
			e.wmu.Unlock()
			t.Fatalf("%d of 4 writer-lock waits counted", e.waiting.Load())
		}
	}
	e.wmu.Unlock()
	for range 4 {
		<-done
	}
	if n := e.waiting.Load(); n != 0 {
		t.Fatalf("%d waits still counted after all got the lock", n)
	}
}

// A run of adjacent allocations, and the frees of the same blocks, each
// change the free-space tree once, not once per block.
func TestAdjacentRefsOneFreeSpaceUpdate(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	var events int
	h := e.Hooks().Free.Register(func(FreeEvent) { events++ })
	defer e.Hooks().Free.Unregister(h)
	const n = 1000
	got := reserveCommitted(t, e, n)
	runs := runsOf(got)
	allocated := events
	events = 0
	if err := e.Update(func(tx *Tx) error { tx.FreeMeta(format.TreeRmap, got); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	// Each gathered range is one delete and at most two inserts; the
	// node blocks the trees copy on write (some in the middle of the
	// blocks allocated) add a few more.
	t.Logf("%d blocks in %d runs: %d free-space tree changes to allocate them, %d to free them", n, runs, allocated, events)
	if runs > 10 {
		t.Fatalf("%d blocks reserved in %d runs: the test wants them mostly adjacent", n, runs)
	}
	if allocated > 40 || events > 40 {
		t.Fatalf("%d adjacent blocks: %d free-space tree changes to allocate them, %d to free them", n, allocated, events)
	}
}

// An allocation gathered across two free extents that adjoin (a tree that
// failed to merge them) is taken out of both.
func TestGatheredAllocationSpansUnmergedFreeExtents(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	s := e.Pin()
	ft, _ := s.Tree(format.TreeFree)
	var big format.Key
	if err := ft.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
		if k.Off > big.Off {
			big = k
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	s.Release()
	if big.Off < 64 {
		t.Fatalf("largest free extent %s too small", big)
	}
	start, half := format.BlockNr(big.Obj), big.Off/2
	err := e.Update(func(tx *Tx) error {
		tx.touched = true
		ft := e.trees[format.TreeFree]
		if _, err := ft.Delete(big); err != nil {
			return err
		}
		if err := ft.Insert(format.FreeKey(start, half), nil); err != nil {
			return err
		}
		return ft.Insert(format.FreeKey(start+format.BlockNr(half), big.Off-half), nil)
	})
	if err == nil {
		err = e.Sync()
	}
	if err != nil {
		t.Fatal(err)
	}
	var got []format.BlockNr
	err = e.Update(func(tx *Tx) error {
		e.txn.metaHint = start
		got, err = tx.ReserveMeta(format.TreeRmap, int(half)+2)
		return err
	})
	if err == nil {
		err = e.Sync()
	}
	if err != nil {
		t.Fatalf("allocating across the unmerged free extents: %v", err)
	}
	if got[0] != start || got[len(got)-1] != start+format.BlockNr(half)+1 {
		t.Fatalf("reserved %d..%d, want %d..%d", got[0], got[len(got)-1], start, start+format.BlockNr(half)+1)
	}
	if err := e.Update(func(tx *Tx) error { tx.FreeMeta(format.TreeRmap, got); return nil }); err != nil {
		t.Fatal(err)
	}
}

// Blocks freed while a reader pins an older generation wait as pending
// extents: adjacent ones are kept as one, and the count writers ask for
// stays exact.
func TestAdjacentPendingFreesKeptAsOne(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	const n = 1000
	got := reserveCommitted(t, e, n)
	runs := runsOf(got)
	snap := e.Pin()
	defer snap.Release()
	if err := e.Update(func(tx *Tx) error { tx.FreeMeta(format.TreeRmap, got); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	e.alloc.mu.Lock()
	var exts int
	for _, p := range e.alloc.pending {
		exts += len(p.extents)
	}
	e.alloc.mu.Unlock()
	_, pending := e.Allocatable()
	t.Logf("%d blocks in %d runs freed under a pin: %d pending extents, %d pending blocks", n, runs, exts, pending)
	if pending < n {
		t.Fatalf("%d pending blocks, want at least the %d freed under the pin", pending, n)
	}
	// The commits copied a few tree blocks on write too (pending as well).
	if exts > runs+40 {
		t.Fatalf("%d blocks in %d runs kept as %d pending extents", n, runs, exts)
	}
}

// runsOf counts the runs of adjacent blocks in blocks.
func runsOf(blocks []format.BlockNr) int {
	runs := 1
	for i := 1; i < len(blocks); i++ {
		if blocks[i] != blocks[i-1]+1 {
			runs++
		}
	}
	return runs
}
