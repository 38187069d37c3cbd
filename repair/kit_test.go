package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
	"github.com/scrubd/scrubd/xfile"
)

// kitEngine opens an engine on a fresh in-memory device of blocks blocks
// (through dev, if given, which then sees every write and flush), with
// the full check on cleanup.
func kitEngine(t *testing.T, mem *disk.Mem, dev disk.Device) *engine.Engine {
	t.Helper()
	if dev == nil {
		dev = mem
	}
	e, err := engine.Open(nopClose{dev}, engine.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Sync(); err != nil {
			t.Error(err)
		}
		mustClean(t, e)
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

func kitDevice(t *testing.T, blocks int64) *disk.Mem {
	t.Helper()
	dev := disk.NewMem(blocks * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return dev
}

// loggedOpParts counts the parts of logged operations in the last commit.
func loggedOpParts(t *testing.T, e *engine.Engine) uint64 {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	tr, ok := s.ScanTree(format.TreeLoggedOps)
	if !ok {
		return 0
	}
	return tr.Items
}

// completedOps parses the mount note of the logged_ops pass: how many
// operations a crash left, and how many blocks completing them freed.
func completedOps(t *testing.T, e *engine.Engine) (ops, blocks int) {
	t.Helper()
	for _, n := range e.MountInfo().Notes {
		if strings.Contains(n, "interrupted logged operations") {
			if _, err := fmt.Sscanf(n, "completed %d interrupted logged operations (%d blocks freed)", &ops, &blocks); err != nil {
				t.Fatalf("note %q: %v", n, err)
			}
		}
	}
	return ops, blocks
}

// TestNewTreeReserveCancel reserves blocks for a tree that records not
// its own blocks, checks the count against the bulk-load plan and the
// logged operations, and cancels: the blocks are free again and the
// operations gone, and the engine checks clean (on cleanup).
func TestNewTreeReserveCancel(t *testing.T) {
	e := kitEngine(t, kitDevice(t, 16384), nil)
	free0 := e.Stats().FreeBlocks
	const records, itemSize = 40_000, 40
	nt := newNewTree(e, newTreeOptions{Tree: format.TreeExtent, ItemSize: itemSize, Fill: 0.9, Name: "test"})
	if err := nt.reserve(context.Background(), records, nil); err != nil {
		t.Fatal(err)
	}
	plan, err := eb.PlanBulkFixed(records, itemSize, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	if n := uint64(len(nt.blocks)); n < plan.Blocks || n > plan.Blocks+max(16, plan.Blocks/32) {
		t.Fatalf("%d blocks reserved for a plan of %d", n, plan.Blocks)
	}
	if got := e.Stats().FreeBlocks; got > free0-uint64(len(nt.blocks)) {
		t.Fatalf("free blocks %d after reserving %d of %d", got, len(nt.blocks), free0)
	}
	var wantParts uint64
	covered := 0
	for _, op := range nt.ops {
		if op.from != covered {
			t.Fatalf("operations cover blocks [%d, %d) after %d", op.from, op.to, covered)
		}
		covered = op.to
		wantParts += uint64((op.to - op.from + engine.LoggedOpPart - 1) / engine.LoggedOpPart)
	}
	if covered != len(nt.blocks) || len(nt.ops) < 2 {
		t.Fatalf("%d operations cover %d of %d blocks", len(nt.ops), covered, len(nt.blocks))
	}
	if parts := loggedOpParts(t, e); parts != wantParts {
		t.Fatalf("%d logged operation parts, want %d", parts, wantParts)
	}
	// Topping up for as many records changes nothing.
	n := len(nt.blocks)
	if err := nt.topUp(context.Background(), records); err != nil || len(nt.blocks) != n {
		t.Fatalf("top-up for the same records: %v, %d -> %d blocks", err, n, len(nt.blocks))
	}
	nt.cancel()
	if len(nt.blocks) != 0 || len(nt.ops) != 0 {
		t.Fatalf("cancel left %d blocks, %d operations", len(nt.blocks), len(nt.ops))
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if parts := loggedOpParts(t, e); parts != 0 {
		t.Fatalf("%d logged operation parts after cancel", parts)
	}
	if got := e.Stats().FreeBlocks; got != free0 {
		t.Fatalf("free blocks %d after cancel, %d before", got, free0)
	}
}

// TestNewTreeSelfRecords: a tree that records its own blocks (rmap,
// alloc) reserves for them too.
func TestNewTreeSelfRecords(t *testing.T) {
	e := kitEngine(t, kitDevice(t, 16384), nil)
	const records = 100_000
	plain := newNewTree(e, newTreeOptions{Tree: format.TreeRmap, ItemSize: format.RmapItemSize, Fill: 0.9})
	self := newNewTree(e, newTreeOptions{Tree: format.TreeRmap, ItemSize: format.RmapItemSize, Fill: 0.9, SelfRecords: true})
	p, err := plain.planFor(records)
	if err != nil {
		t.Fatal(err)
	}
	s, err := self.planFor(records)
	if err != nil {
		t.Fatal(err)
	}
	want, err := eb.PlanBulkFixed(records+s.Blocks, format.RmapItemSize, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	if s.Blocks <= p.Blocks || s.Blocks != want.Blocks {
		t.Fatalf("self-recording plan %d blocks, plain %d, fixed point %d", s.Blocks, p.Blocks, want.Blocks)
	}
}

// TestNewTreeCrashLeaksNothing: a reservation the rebuild never got to
// cancel (the engine closed as a crash would leave it) is freed by the
// mount's logged_ops pass.
func TestNewTreeCrashLeaksNothing(t *testing.T) {
	dev := kitDevice(t, 16384)
	e, err := engine.Open(nopClose{dev}, engine.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	free0 := e.Stats().FreeBlocks
	nt := newNewTree(e, newTreeOptions{Tree: format.TreeFree, ItemSize: 8, Fill: 0.9})
	if err := nt.reserve(context.Background(), 30_000, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = kitEngine(t, dev, nil)
	ops, blocks := completedOps(t, e)
	if ops != len(nt.ops) || blocks != len(nt.blocks) {
		t.Fatalf("mount completed %d operations freeing %d blocks; %d operations of %d blocks were logged", ops, blocks, len(nt.ops), len(nt.blocks))
	}
	if got := e.Stats().FreeBlocks; got != free0 {
		t.Fatalf("free blocks %d after the mount, %d before the reservation", got, free0)
	}
}

// TestReapShrinks reaps a reservation's blocks in small batches and cuts
// the reaping at every flush: each cut mounts clean with nothing leaked,
// and the operations left to the mount only ever shrink, from all of them
// to none.
func TestReapShrinks(t *testing.T) {
	skipShort(t)
	mem := kitDevice(t, 8192)
	rec := disk.NewRecorder(mem.Bytes())
	e, err := engine.Open(nopClose{rec}, engine.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	free0 := e.Stats().FreeBlocks
	nt := newNewTree(e, newTreeOptions{Tree: format.TreeExtent, ItemSize: 40, Fill: 0.9})
	if err := nt.reserve(context.Background(), 60_000, nil); err != nil {
		t.Fatal(err)
	}
	var groups []reapGroup
	for _, op := range nt.ops {
		groups = append(groups, reapGroup{op: op.id, blocks: nt.blocks[op.from:op.to]})
	}
	// One operation whose blocks are all in use elsewhere: dropped with
	// the first batch.
	groups = append([]reapGroup{{op: nt.ops[0].id}}, groups...)
	groups[1].op = 0
	total := len(nt.ops)
	if total < 4 {
		t.Fatalf("only %d operations", total)
	}
	start := rec.Flushes()
	n, err := reapIn(e, format.TreeExtent, groups, len(nt.blocks)/4+1)
	if err != nil {
		t.Fatal(err)
	}
	if n != uint64(len(nt.blocks)) {
		t.Fatalf("reaped %d of %d blocks", n, len(nt.blocks))
	}
	end := rec.Flushes()
	if parts := loggedOpParts(t, e); parts != 0 {
		t.Fatalf("%d logged operation parts left", parts)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll} {
		prev, between := total, false
		for k := start; k <= end; k++ {
			img := rec.CrashImage(k, mode, rng)
			ce, err := engine.Open(disk.NewMemFrom(img), engine.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("flush %d %v: %v", k, mode, err)
			}
			ops, _ := completedOps(t, ce)
			if ops > prev {
				t.Fatalf("flush %d %v: %d operations left, %d at the cut before", k, mode, ops, prev)
			}
			between = between || ops > 0 && ops < total
			prev = ops
			mustClean(t, ce)
			if got := ce.Stats().FreeBlocks; got != free0 {
				t.Fatalf("flush %d %v: %d free blocks, %d before the reservation", k, mode, got, free0)
			}
			ce.Close()
		}
		if prev != 0 || !between {
			t.Fatalf("%v: %d operations at the last cut, some cut between all and none: %v", mode, prev, between)
		}
	}
}

// toyEvent is a stand-in for a structure's live updates: key set to val,
// or deleted.
type toyEvent struct {
	Gen      format.Gen
	Del      bool
	Key, Val uint64
}

var toyEvents = eventCodec[toyEvent]{
	size: 32,
	put: func(b []byte, ev toyEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		del := uint64(0)
		if ev.Del {
			del = 1
		}
		le.PutUint64(b[8:], del)
		le.PutUint64(b[16:], ev.Key)
		le.PutUint64(b[24:], ev.Val)
	},
	get: func(b []byte) toyEvent {
		le := binary.LittleEndian
		return toyEvent{Gen: format.Gen(le.Uint64(b[0:])), Del: le.Uint64(b[8:]) == 1, Key: le.Uint64(b[16:]), Val: le.Uint64(b[24:])}
	},
}

func applyToy(t *eb.Tree, ev toyEvent) error {
	k := format.Key{Obj: ev.Key, Type: 1}
	if ev.Del {
		_, err := t.Delete(k)
		return err
	}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], ev.Val)
	return t.Put(k, v[:])
}

// TestShadowFollowsLiveUpdates drives the generic shadow with toy events
// from concurrent publishers through every state — buffered during a
// "scan", caught up in chunks, live, frozen with the delta applied to a
// copy in rounds and the rest after stop — and checks that the copy ends
// up exactly as the scan's state plus every event after the pinned
// generation, events of the pinned generation or earlier skipped, and
// every event counted once.
func TestShadowFollowsLiveUpdates(t *testing.T) {
	e := kitEngine(t, kitDevice(t, 4096), nil)
	var chain hooks.Chain[toyEvent]
	sh, err := newShadow(t.TempDir(), "toy", format.TreeExtent, toyEvents, func(ev toyEvent) format.Gen { return ev.Gen }, applyToy)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.close()
	snap, err := sh.subscribe(e, &chain)
	if err != nil {
		t.Fatal(err)
	}
	g := snap.Gen()
	snap.Release()
	const keys, writers = 4000, 4
	// The scan: the state at g.
	model := make([]map[uint64]uint64, writers) // each writer's keys
	for w := range model {
		model[w] = map[uint64]uint64{}
	}
	for k := uint64(0); k < keys; k += 3 {
		if err := applyToy(sh.tree, toyEvent{Key: k, Val: k}); err != nil {
			t.Fatal(err)
		}
		model[k%writers][k] = k
	}
	var published atomic.Int64 // events after g
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			m := model[w]
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := uint64(r.IntN(keys/writers))*writers + uint64(w)
				if r.IntN(10) == 0 {
					// Already in the scan: must be skipped.
					chain.Call(toyEvent{Gen: g - format.Gen(r.IntN(2)), Key: k, Val: 1 << 40})
					continue
				}
				// Writers publish far slower than a shadow applies (the
				// catch-up converges only then): a pause every 32 events.
				if i%32 == 0 {
					time.Sleep(time.Millisecond)
				}
				ev := toyEvent{Gen: g + 1 + format.Gen(r.IntN(3)), Key: k, Val: r.Uint64() >> 1, Del: r.IntN(3) == 0}
				chain.Call(ev)
				if ev.Del {
					delete(m, k)
				} else {
					m[k] = ev.Val
				}
				published.Add(1)
			}
		}(w)
	}
	waitFor := func(n int64) {
		for published.Load() < n {
			runtime.Gosched()
		}
	}
	waitFor(5000) // buffered: more than one chunk of catch-up
	if err := sh.catchUp(); err != nil {
		t.Fatal(err)
	}
	waitFor(published.Load() + 2000) // live
	records, fgen, err := sh.freeze(e)
	if err != nil {
		t.Fatal(err)
	}
	if fgen < g {
		t.Fatalf("freeze at generation %d, before the pinned %d", fgen, g)
	}
	// The "bulk load": a copy of the frozen shadow.
	store, err := xfile.NewBTreeStore(xfile.Options{Name: "toy copy"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cp, err := store.CreateTree(format.TreeExtent)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.tree.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		err = cp.Put(k, v)
		return err == nil
	}); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if cp.Items != records {
		t.Fatalf("frozen shadow holds %d records, freeze said %d", cp.Items, records)
	}
	var drained int64
	for round := 0; round < 3; round++ {
		waitFor(published.Load() + 1000)
		n, err := sh.drainTo(cp)
		if err != nil {
			t.Fatal(err)
		}
		drained += int64(n)
	}
	close(stop)
	wg.Wait()
	n, err := sh.stop()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.applyPending(cp); err != nil {
		t.Fatal(err)
	}
	if got := int64(n) + drained; got != published.Load() {
		t.Fatalf("%d events counted, %d published after the pinned generation", got, published.Load())
	}
	// No event reaches the queue after stop.
	pending := sh.q.len()
	chain.Call(toyEvent{Gen: g + 1, Key: 1, Val: 1})
	if sh.q.len() != pending {
		t.Fatal("an event reached the queue after stop")
	}
	want := map[uint64]uint64{}
	for _, m := range model {
		for k, v := range m {
			want[k] = v
		}
	}
	got := map[uint64]uint64{}
	if err := cp.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		got[k.Obj] = binary.LittleEndian.Uint64(v)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("key %d = %d, want %d", k, got[k], v)
		}
	}
}
