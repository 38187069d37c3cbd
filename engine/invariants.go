package engine

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine/format"
)

// checkAllocator verifies, as a commit is prepared, that the allocator's
// free index plus the extents waiting for release (and extra, which the
// commit releases when it is durable) are exactly the free-space tree: the
// allocator can neither hand out a block the trees use nor have lost one.
// It panics on violation: that is a broken internal invariant.
func (e *Engine) checkAllocator(extra []extent) {
	if e.Degraded(StructFree) || e.freeDamaged.Load() {
		return // the tree is not maintained, or damaged on purpose: nothing to compare with
	}
	var tree, mem []extent
	ft := e.trees[format.TreeFree]
	if err := ft.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
		tree = append(tree, extent{format.BlockNr(k.Obj), k.Off})
		return true
	}); err != nil {
		panic(fmt.Sprintf("invariant: read free-space tree: %v", err))
	}
	e.alloc.mu.Lock()
	e.alloc.free.Scan(func(s format.BlockNr, n uint64) bool {
		mem = append(mem, extent{s, n})
		return true
	})
	var npending uint64
	for _, p := range e.alloc.pending {
		mem = append(mem, p.extents...)
		for _, x := range p.extents {
			npending += x.n
		}
	}
	counted := e.alloc.npending
	e.alloc.mu.Unlock()
	if npending != counted {
		panic(fmt.Sprintf("invariant: allocator counts %d pending blocks, holds %d", counted, npending))
	}
	mem = append(mem, extra...)
	if a, b := normalize(tree), normalize(mem); !slices.Equal(a, b) {
		panic(fmt.Sprintf("invariant: free-space tree %v differs from allocator %v", a, b))
	}
}

// normalize sorts and merges extents.
func normalize(xs []extent) []extent {
	slices.SortFunc(xs, func(a, b extent) int { return cmp.Compare(a.start, b.start) })
	var out []extent
	for _, x := range xs {
		if n := len(out); n > 0 && out[n-1].start+format.BlockNr(out[n-1].n) == x.start {
			out[n-1].n += x.n
			continue
		}
		out = append(out, x)
	}
	return out
}
