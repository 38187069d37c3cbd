package engine

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestHooksShadowTrees subscribes to the alloc, rmap and free-space hooks,
// keeps a shadow of each tree from a snapshot plus the events after it, and
// checks that after a random workload the shadows equal the trees: every
// change was seen exactly once and in order.
func TestHooksShadowTrees(t *testing.T) {
	e, _ := newTestEngine(t, Options{MaxDelayedRefs: 300})
	w := newWorkload(21)
	for i := 0; i < 300; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	g0 := s.Gen()
	rmap := map[format.Key]uint64{}
	alloc := map[format.BlockNr]format.ExtentItem{}
	free := map[format.BlockNr]uint64{}
	load := func(s *Snapshot) (map[format.Key]uint64, map[format.BlockNr]format.ExtentItem, map[format.BlockNr]uint64) {
		r, a, f := map[format.Key]uint64{}, map[format.BlockNr]format.ExtentItem{}, map[format.BlockNr]uint64{}
		tr, _ := s.Tree(format.TreeRmap)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			ri, _ := format.DecodeRmapItem(v)
			r[k] = ri.Len
			return true
		})
		tr, _ = s.Tree(format.TreeAlloc)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			it, _ := format.DecodeExtentItem(v)
			a[format.BlockNr(k.Obj)] = it
			return true
		})
		tr, _ = s.Tree(format.TreeFree)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			f[format.BlockNr(k.Obj)] = k.Off
			return true
		})
		return r, a, f
	}
	rmap, alloc, free = load(s)
	s.Release()
	var mu sync.Mutex
	lastGen := g0
	var errs []string
	check := func(g format.Gen) {
		if g <= g0 || g < lastGen {
			errs = append(errs, fmt.Sprintf("event generation %d after %d (snapshot %d)", g, lastGen, g0))
		}
		lastGen = g
	}
	h1 := e.Hooks().Rmap.Register(func(ev RmapEvent) {
		mu.Lock()
		defer mu.Unlock()
		check(ev.Gen)
		k := format.RmapKey(ev.Start, ev.Owner)
		switch ev.Op {
		case OpInsert:
			if _, dup := rmap[k]; dup {
				errs = append(errs, fmt.Sprintf("rmap insert of existing %s", k))
			}
			rmap[k] = ev.Len
		case OpDelete:
			if _, ok := rmap[k]; !ok {
				errs = append(errs, fmt.Sprintf("rmap delete of missing %s", k))
			}
			delete(rmap, k)
		}
	})
	h2 := e.Hooks().Alloc.Register(func(ev AllocEvent) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Op == OpDelete {
			delete(alloc, ev.Start)
		} else {
			alloc[ev.Start] = format.ExtentItem{Refs: ev.Refs, Flags: ev.Flags}
		}
	})
	h3 := e.Hooks().Free.Register(func(ev FreeEvent) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Op == OpDelete {
			delete(free, ev.Start)
		} else {
			free[ev.Start] = ev.Len
		}
	})
	for round := 0; round < 10; round++ {
		for i := 0; i < 200; i++ {
			if err := e.Update(w.step); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	e.Hooks().Rmap.Unregister(h1)
	e.Hooks().Alloc.Unregister(h2)
	e.Hooks().Free.Unregister(h3)
	if len(errs) > 0 {
		t.Fatalf("%d event problems, first: %s", len(errs), errs[0])
	}
	s = e.Pin()
	defer s.Release()
	r2, a2, f2 := load(s)
	if fmt.Sprint(r2) != fmt.Sprint(rmap) || fmt.Sprint(a2) != fmt.Sprint(alloc) || fmt.Sprint(f2) != fmt.Sprint(free) {
		t.Fatalf("shadows differ from the trees: rmap %d/%d alloc %d/%d free %d/%d", len(rmap), len(r2), len(alloc), len(a2), len(free), len(f2))
	}
}

// TestHooksUnsubscribeUnderLoad registers and unregisters subscribers while
// a writer runs (race detector).
func TestHooksUnsubscribeUnderLoad(t *testing.T) {
	e, _ := newTestEngine(t, Options{MaxDelayedRefs: 100})
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := newWorkload(22)
		for i := 0; i < 2000; i++ {
			if err := e.Update(w.step); err != nil {
				t.Error(err)
				return
			}
			if i%100 == 0 {
				e.Sync()
			}
		}
		stop.Store(true)
	}()
	var calls atomic.Int64
	for !stop.Load() {
		h := e.Hooks().Rmap.Register(func(RmapEvent) { calls.Add(1) })
		e.Hooks().Rmap.Unregister(h)
	}
	wg.Wait()
}
