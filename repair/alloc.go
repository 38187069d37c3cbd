package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The allocation tree's checker: records in key order must not overlap;
// every tree block in use must have a one-block metadata record; each
// record's reference count is the number of reverse mappings at its
// start, and its kind (data or metadata) must be its owners'; no
// metadata record may be left that no tree uses (checked only when the
// walk reached every block).
var allocCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeAlloc: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			it, err := format.DecodeExtentItem(val)
			if err != nil || k.Type != format.TypeExtentItem || k.Off == 0 || k.Obj+k.Off > st.total || k.Obj+k.Off < k.Obj {
				st.Reportf(engine.ErrItemBad, format.TreeAlloc, format.BlockNr(k.Obj), "alloc item %s: bad key or value (%v)", k, err)
				return
			}
			st.allocs.add(allocRec{format.BlockNr(k.Obj), k.Off, it})
		},
	},
	cross: checkAlloc,
}

func checkAlloc(st *checkState) {
	allocOK, rmapOK := !st.Broken(format.TreeAlloc), !st.Broken(format.TreeRmap)
	var p allocRec
	for i := uint64(0); i < st.allocs.len(); i++ {
		a := st.allocs.at(i)
		if i > 0 && uint64(p.start)+p.n > uint64(a.start) {
			st.Reportf(engine.ErrAllocOverlap, format.TreeAlloc, a.start, "extent %d+%d overlaps extent %d+%d", a.start, a.n, p.start, p.n)
		}
		p = a
	}
	if !allocOK {
		return
	}
	// Both trees walked without damage: their records come by start.
	if rmapOK {
		at := st.allocSeeker()
		st.sortedRmaps().all(func(r rmapRec) {
			if a, ok := at.last(r.start); ok && a.n == r.n && r.owner.IsData() != (a.item.Flags == format.ExtentData) {
				st.Reportf(engine.ErrAllocKind, format.TreeAlloc, r.start, "extent flags %#x but owner is %s", a.item.Flags, r.owner)
			}
		})
		owners := st.rmapSeeker()
		st.allocs.all(func(a allocRec) {
			if got := owners.seek(a.start); got != a.item.Refs {
				st.Reportf(engine.ErrAllocRefcount, format.TreeAlloc, a.start, "extent %d+%d has %d references recorded, %d reverse mappings", a.start, a.n, a.item.Refs, got)
			}
		})
	}
	at := st.allocSeeker()
	for _, r := range st.refs {
		if uint64(r.Block) >= st.total {
			continue // reported by the walk as unreadable
		}
		switch a, ok := at.last(r.Block); {
		case !ok:
			st.Reportf(engine.ErrAllocMissing, r.Tree, r.Block, "block of tree %s has no alloc record", r.Tree)
		case a.n != 1 || a.item.Flags != format.ExtentMeta:
			st.Reportf(engine.ErrAllocKind, r.Tree, r.Block, "block of tree %s is recorded as a %d-block extent with flags %#x", r.Tree, a.n, a.item.Flags)
		}
	}
	if st.Complete() {
		st.allocs.all(func(a allocRec) {
			if a.item.Flags != format.ExtentMeta {
				return
			}
			if _, ok := st.usedBy(a.start); !ok {
				st.Reportf(engine.ErrAllocLeaked, format.TreeAlloc, a.start, "metadata block is allocated but no tree uses it")
			}
		})
	}
}
