package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The file extent tree's checker: a file's items must not overlap (items
// come in key order, so only a damaged tree shows it) nor map blocks past
// the file's size (the write that extends a file sets its size in the
// same transaction, and a truncate drops the blocks past the new size);
// every item's extent must be allocated as data, with a reverse mapping
// naming the item.
var extentCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeExtent: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeFileExtent {
				return
			}
			fe, err := format.DecodeFileExtent(val)
			if err != nil || uint64(fe.Start)+fe.Len > st.total {
				st.Reportf(engine.ErrItemBad, format.TreeExtent, format.BlockNr(k.Obj), "file extent %s: %v", k, err)
				return
			}
			if n := len(st.fexts); n > 0 && st.fexts[n-1].ino == k.Obj && st.fexts[n-1].fb+st.fexts[n-1].fe.Count > k.Off {
				p := st.fexts[n-1]
				st.Reportf(engine.ErrExtentOverlap, format.TreeExtent, fe.Start, "inode %d: the item at block %d maps blocks up to %d, past the item at block %d", k.Obj, p.fb, p.fb+p.fe.Count, k.Off)
			}
			st.fexts = append(st.fexts, fileExt{ino: k.Obj, fb: k.Off, fe: fe})
		},
	},
	cross: checkExtents,
}

// fileExtKey names a file extent item by its extent and its place in the
// file: what a file's rmap record names.
type fileExtKey struct {
	start   format.BlockNr
	ino, fb uint64
}

// extentIndex returns the file extent items by extent and place.
func (st *checkState) extentIndex() map[fileExtKey]format.FileExtent {
	if st.items == nil {
		st.items = make(map[fileExtKey]format.FileExtent, len(st.fexts))
		for _, x := range st.fexts {
			st.items[fileExtKey{x.fe.Start, x.ino, x.fb}] = x.fe
		}
	}
	return st.items
}

func checkExtents(st *checkState) {
	if st.Broken(format.TreeExtent) {
		return
	}
	if !st.Broken(format.TreeRmap) {
		have := make(map[fileExtKey]bool, len(st.rmaps))
		for _, r := range st.rmaps {
			if r.owner.IsData() {
				have[fileExtKey{r.start, r.owner.Inode, r.owner.Offset}] = true
			}
		}
		for _, x := range st.fexts {
			if !have[fileExtKey{x.fe.Start, x.ino, x.fb}] {
				st.Reportf(engine.ErrExtentNoRmap, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which has no reverse mapping to it", x.ino, x.fb, x.fe.Start, x.fe.Len)
			}
		}
	}
	if !st.Broken(format.TreeAlloc) {
		allocAt := st.allocIndex()
		for _, x := range st.fexts {
			if a := allocAt[x.fe.Start]; a == nil || a.n != x.fe.Len || a.item.Flags != format.ExtentData {
				st.Reportf(engine.ErrExtentNoAlloc, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which is not allocated as data", x.ino, x.fb, x.fe.Start, x.fe.Len)
			}
		}
	}
	if st.Broken(format.TreeInode) {
		return
	}
	for _, x := range st.fexts {
		in, ok := st.inodes[x.ino]
		if !ok {
			continue
		}
		if end := (in.size + format.BlockSize - 1) / format.BlockSize; x.fb+x.fe.Count > end {
			st.Reportf(engine.ErrExtentPastEOF, format.TreeExtent, x.fe.Start, "inode %d of %d bytes: the item at block %d maps blocks up to %d, past its last block %d", x.ino, in.size, x.fb, x.fb+x.fe.Count, end)
		}
	}
}
