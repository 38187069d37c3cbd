package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The rmap tree's checker: every record must start an allocated extent
// of its length; every tree block in use must have a record naming its
// tree, and every metadata record must name the tree that uses the block
// (checked only when the walk reached every block); every file's record
// must name a file extent item that maps that extent, and (format 1.2)
// carry the part of the extent the item maps.
var rmapCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeRmap: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			ri, err := format.DecodeRmapItem(val)
			o, ok := format.RmapOwner(k)
			if err != nil || !ok || k.Obj+ri.Len > st.total {
				st.Reportf(engine.ErrItemBad, format.TreeRmap, format.BlockNr(k.Obj), "rmap item %s: bad key or value (%v)", k, err)
				return
			}
			// Format 1.2 records of files carry their mapping; no other
			// record does.
			if ri.Mapped() != (o.IsData() && st.maps) {
				want := format.RmapItemSize
				if o.IsData() && st.maps {
					want = format.RmapMappedItemSize
				}
				st.Reportf(engine.ErrItemBad, format.TreeRmap, format.BlockNr(k.Obj), "rmap item %s of %d bytes: this format's records of %s are %d bytes", k, len(val), o, want)
				return
			}
			st.rmaps.add(rmapRec{format.BlockNr(k.Obj), ri.Len, o, ri})
		},
	},
	cross: checkRmap,
}

func checkRmap(st *checkState) {
	if st.Broken(format.TreeRmap) {
		return
	}
	rmaps := st.sortedRmaps()
	if !st.Broken(format.TreeAlloc) {
		at := st.allocSeeker()
		rmaps.all(func(r rmapRec) {
			switch a, ok := at.last(r.start); {
			case !ok:
				st.Reportf(engine.ErrRmapOrphan, format.TreeRmap, r.start, "reverse mapping to %s for %d blocks, but no allocated extent starts there", r.owner, r.n)
			case a.n != r.n:
				st.Reportf(engine.ErrRmapLength, format.TreeRmap, r.start, "reverse mapping to %s says %d blocks, extent has %d", r.owner, r.n, a.n)
			}
		})
	}
	owners := st.rmapSeeker()
	for _, r := range st.refs {
		if uint64(r.Block) >= st.total {
			continue // reported by the walk as unreadable
		}
		if !owners.any(r.Block, func(o rmapRec) bool { return !o.owner.IsData() && o.owner.Tree == r.Tree }) {
			st.Reportf(engine.ErrRmapMissing, r.Tree, r.Block, "block of tree %s has no reverse mapping to it", r.Tree)
		}
	}
	if st.Complete() {
		rmaps.all(func(r rmapRec) {
			if r.owner.IsData() {
				return
			}
			if t, ok := st.usedBy(r.start); !ok || t != r.owner.Tree {
				st.Reportf(engine.ErrRmapOrphan, format.TreeRmap, r.start, "reverse mapping says tree %s owns block %d, but it does not use it", r.owner.Tree, r.start)
			}
		})
	}
	if st.Broken(format.TreeExtent) {
		return
	}
	// Files' records against the file extent items they name: both
	// sorted by (start, inode, file block); of two items of one key the
	// later counts.
	items := st.fextSeeker()
	rmaps.all(func(r rmapRec) {
		if !r.owner.IsData() {
			return
		}
		fe, ok := items.last(key3{uint64(r.start), r.owner.Inode, r.owner.Offset})
		switch {
		case !ok:
			st.Reportf(engine.ErrRmapDataOwner, format.TreeRmap, r.start, "reverse mapping says inode %d block %d maps extent %d+%d, but no such file extent item exists", r.owner.Inode, r.owner.Offset, r.start, r.n)
		case r.m.Mapped() && (r.m.Offset != fe.fe.Offset || r.m.Count != fe.fe.Count):
			st.Reportf(engine.ErrRmapMapping, format.TreeRmap, r.start, "reverse mapping says inode %d block %d maps blocks [%d,+%d) of extent %d+%d; its file extent item maps [%d,+%d)", r.owner.Inode, r.owner.Offset, r.m.Offset, r.m.Count, r.start, r.n, fe.fe.Offset, fe.fe.Count)
		}
	})
}
