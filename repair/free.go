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
			st.frees.add(freeRec{format.BlockNr(k.Obj), k.Off})
		},
	},
	cross: checkFree,
}

func checkFree(st *checkState) {
	var freeSum uint64
	var p freeRec
	for i := uint64(0); i < st.frees.len(); i++ {
		f := st.frees.at(i)
		freeSum += f.n
		if i > 0 && uint64(p.start)+p.n == uint64(f.start) {
			st.Reportf(engine.ErrFreeNotMerged, format.TreeFree, f.start, "free extent %d+%d adjoins the previous one", f.start, f.n)
		}
		p = f
	}
	if st.Broken(format.TreeFree) || st.Broken(format.TreeAlloc) {
		return
	}
	if sb := st.Snapshot().Super(); freeSum != sb.FreeBlocks {
		st.Reportf(engine.ErrSuperFreeCount, format.OwnerSuper, 0, "superblock counts %d free blocks, free-space tree holds %d", sb.FreeBlocks, freeSum)
	}
	// Both come by start: merge them and look for gaps and overlaps.
	na, nf := st.allocs.len(), st.frees.len()
	pos := uint64(0)
	ai, fi := uint64(0), uint64(0)
	var a allocRec
	var f freeRec
	if na > 0 {
		a = st.allocs.at(0)
	}
	if nf > 0 {
		f = st.frees.at(0)
	}
	for (ai < na || fi < nf) && st.err == nil {
		var start, n uint64
		isFree := false
		if fi < nf && (ai >= na || f.start <= a.start) {
			start, n, isFree = uint64(f.start), f.n, true
			if fi++; fi < nf {
				f = st.frees.at(fi)
			}
		} else {
			start, n = uint64(a.start), a.n
			if ai++; ai < na {
				a = st.allocs.at(ai)
			}
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
