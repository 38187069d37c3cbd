package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The free-space tree's checker: adjoining free extents must be merged;
// free and allocated extents tile the device exactly (every block is
// either free or allocated, never both); and the superblock's free-block
// count is the free extents' sum.
var freeCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeFree: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeFreeExtent || k.Off == 0 || k.Obj+k.Off > st.total || k.Obj+k.Off < k.Obj || len(val) != 0 {
				st.Reportf(engine.ErrItemBad, format.TreeFree, format.BlockNr(k.Obj), "free item %s out of range", k)
				return
			}
			st.frees = append(st.frees, freeRec{format.BlockNr(k.Obj), k.Off})
		},
	},
	cross: checkFree,
}

func checkFree(st *checkState) {
	var freeSum uint64
	for i, f := range st.frees {
		freeSum += f.n
		if i > 0 && uint64(st.frees[i-1].start)+st.frees[i-1].n == uint64(f.start) {
			st.Reportf(engine.ErrFreeNotMerged, format.TreeFree, f.start, "free extent %d+%d adjoins the previous one", f.start, f.n)
		}
	}
	if st.Broken(format.TreeFree) || st.Broken(format.TreeAlloc) {
		return
	}
	if sb := st.Snapshot().Super(); freeSum != sb.FreeBlocks {
		st.Reportf(engine.ErrSuperFreeCount, format.OwnerSuper, 0, "superblock counts %d free blocks, free-space tree holds %d", sb.FreeBlocks, freeSum)
	}
	allocs, frees := st.allocs, st.frees
	pos := uint64(0)
	ai, fi := 0, 0
	for ai < len(allocs) || fi < len(frees) {
		var start, n uint64
		isFree := false
		if fi < len(frees) && (ai >= len(allocs) || frees[fi].start <= allocs[ai].start) {
			start, n, isFree = uint64(frees[fi].start), frees[fi].n, true
			fi++
		} else {
			start, n = uint64(allocs[ai].start), allocs[ai].n
			ai++
		}
		switch {
		case start > pos:
			st.Reportf(engine.ErrSpaceLost, format.TreeFree, format.BlockNr(pos), "blocks %d..%d are neither free nor allocated", pos, start-1)
		case start < pos && isFree:
			st.Reportf(engine.ErrFreeOverlap, format.TreeFree, format.BlockNr(start), "free extent %d+%d overlaps allocated or free blocks below %d", start, n, pos)
		case start < pos:
			st.Reportf(engine.ErrFreeOverlap, format.TreeAlloc, format.BlockNr(start), "allocated extent %d+%d overlaps free or allocated blocks below %d", start, n, pos)
		}
		pos = max(pos, start+n)
	}
	if pos < st.total {
		st.Reportf(engine.ErrSpaceLost, format.TreeFree, format.BlockNr(pos), "blocks %d..%d are neither free nor allocated", pos, st.total-1)
	}
}
