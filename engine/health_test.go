package engine

import (
	"sync"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestHealthStates: structures start unchecked; a check with findings
// makes one sick, one without healthy again; Sick follows; every tree of
// the format and the two owners map to a structure of the same name.
func TestHealthStates(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	for _, h := range e.Health() {
		if h.State != Unchecked || !h.CheckedAt.IsZero() || e.Sick(h.Structure) {
			t.Fatalf("new engine: %+v", h)
		}
	}
	e.MarkChecked(StructAlloc, 7, []ErrorID{ErrAllocMissing})
	if !e.Sick(StructAlloc) || e.Sick(StructFree) {
		t.Fatal("alloc not sick, or free sick")
	}
	h := e.Health()[StructAlloc]
	if h.State != Sick || h.Gen != 7 || len(h.Findings) != 1 || h.Findings[0] != ErrAllocMissing || h.CheckedAt.IsZero() {
		t.Fatalf("alloc after a check with a finding: %+v", h)
	}
	if e.Degraded(StructAlloc) {
		t.Fatal("a cross-reference finding degraded the alloc tree")
	}
	e.MarkChecked(StructAlloc, 8, nil)
	if e.Sick(StructAlloc) || e.Health()[StructAlloc].State != Healthy {
		t.Fatal("alloc still sick after a clean check")
	}
	if was := e.MarkSick(StructAlloc, 8, ErrNodeBadChecksum); was {
		t.Fatal("MarkSick reported alloc sick already")
	}
	if !e.Degraded(StructAlloc) {
		t.Fatal("a bad block did not degrade the alloc tree")
	}
	// Degraded: only a repair makes it healthy again.
	e.MarkChecked(StructAlloc, 9, nil)
	if !e.Sick(StructAlloc) || !e.Degraded(StructAlloc) {
		t.Fatal("a clean check ended the alloc tree's degraded mode")
	}
	e.MarkRepaired(StructAlloc, 10)
	if e.Sick(StructAlloc) || e.Degraded(StructAlloc) || e.Health()[StructAlloc].State != Healthy {
		t.Fatal("alloc still sick after its repair")
	}
	// Marking a degradable tree that is not one of the engine's changes
	// nothing else: inode damage degrades nothing.
	e.MarkSick(StructInode, 10, ErrNodeBadChecksum)
	if e.Degraded(StructInode) {
		t.Fatal("inode degraded")
	}
	e.MarkChecked(StructInode, 11, nil)
	e.SetRmapSick(true)
	if !e.RmapSick() || e.Health()[StructRmap].State != Sick {
		t.Fatal("SetRmapSick(true)")
	}
	e.SetRmapSick(false)
	if e.RmapSick() {
		t.Fatal("SetRmapSick(false)")
	}
	for _, id := range append(format.KnownTrees, format.OwnerSuper, format.OwnerData) {
		s, ok := StructureOfTree(id)
		want := id.String()
		if id == format.OwnerSuper {
			want = "superblock"
		}
		if !ok || s.Name() != want {
			t.Errorf("tree %s: structure %s %v", id, s, ok)
		}
		if back, ok := StructureByName(s.Name()); !ok || back != s {
			t.Errorf("StructureByName(%s) = %v %v", s.Name(), back, ok)
		}
	}
	if _, ok := StructureOfTree(format.TreeLog); ok {
		t.Error("the fsync log is no structure of its own")
	}
}

// TestHealthConcurrent marks and reads from many goroutines (run with
// -race): the registry is safe for concurrent use, and a copy returned by
// Health is the caller's.
func TestHealthConcurrent(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				s := Structure((g + i) % int(numStructures))
				if i%2 == 0 {
					e.MarkSick(s, format.Gen(i), ErrItemBad)
				} else {
					e.MarkChecked(s, format.Gen(i), nil)
				}
				hs := e.Health()
				hs[s].Findings = append(hs[s].Findings, ErrNlink)
				_ = e.Sick(s)
			}
		}(g)
	}
	wg.Wait()
	for _, s := range Structures() {
		e.MarkRepaired(s, 1) // the engine's cleanup check expects trusted trees
	}
	for _, h := range e.Health() {
		for _, id := range h.Findings {
			if id == ErrNlink {
				t.Fatal("a caller's copy reached the registry")
			}
		}
	}
}

// TestAbortMarksStructureSick: damage met during a transaction marks the
// structure it was met in sick.
func TestAbortMarksStructureSick(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	err := e.Update(func(tx *Tx) error {
		tx.touched = true
		return &format.CorruptError{Kind: format.KindBadChecksum, Tree: format.TreeInode, Block: 99, Detail: "test"}
	})
	if err == nil {
		t.Fatal("update did not fail")
	}
	h := e.Health()[StructInode]
	if h.State != Sick || len(h.Findings) != 1 || h.Findings[0] != ErrNodeBadChecksum {
		t.Fatalf("inode after damage met in use: %+v", h)
	}
}
