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
// naming the item. The walk also sums per file the blocks its items map,
// for the inode checker's block counts (inode.go).
var extentCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeExtent: func(st *checkState, _ format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeFileExtent {
				return
			}
			fe, err := format.DecodeFileExtent(val)
			if err != nil || uint64(fe.Start)+fe.Len > st.total {
				st.Reportf(engine.ErrItemBad, format.TreeExtent, format.BlockNr(k.Obj), "file extent %s: %v", k, err)
				st.countBlocks(k.Obj, 0, true)
				return
			}
			overlap := false
			if p := &st.lastFext; st.nfexts > 0 && p.ino == k.Obj && p.fb+p.fe.Count > k.Off {
				st.Reportf(engine.ErrExtentOverlap, format.TreeExtent, fe.Start, "inode %d: the item at block %d maps blocks up to %d, past the item at block %d", k.Obj, p.fb, p.fb+p.fe.Count, k.Off)
				overlap = true
			}
			st.countBlocks(k.Obj, fe.Count, overlap)
			x := fileExt{ino: k.Obj, fb: k.Off, seq: st.nfexts, fe: fe}
			st.nfexts++
			st.lastFext = x
			st.fexts.add(x)
		},
	},
	cross: checkExtents,
}

// countBlocks adds an item of file ino mapping n blocks to the file's
// sum (bad: the item could not be read whole, or overlaps another). The
// walk meets a file's items one after the other.
func (st *checkState) countBlocks(ino, n uint64, bad bool) {
	c := &st.curBlocks
	if st.blocksOpen && c.ino != ino {
		st.fileBlocks.add(*c)
		st.blocksOpen = false
	}
	if !st.blocksOpen {
		*c, st.blocksOpen = fileBlocks{ino: ino}, true
	}
	c.n += n
	c.bad = c.bad || bad
}

// sortedFileBlocks returns the files' block sums, by inode (once the walk
// is over).
func (st *checkState) sortedFileBlocks() *recArr[fileBlocks] {
	if st.blocksOpen {
		st.fileBlocks.add(st.curBlocks)
		st.blocksOpen = false
	}
	return st.fileBlocks
}

// sortedFexts returns the file extent items sorted by (extent start,
// inode, file block, walk order): the order of the rmap records naming
// them.
func (st *checkState) sortedFexts() *recArr[fileExt] {
	if !st.fexts.sorted {
		st.findPastEOF()
	}
	st.fexts.sortBy(32, nil)
	return st.fexts
}

// findPastEOF collects the file extent items that map blocks past their
// file's size, while the items are in the walk's order, which is the
// inodes' (checkExtents reports them).
func (st *checkState) findPastEOF() {
	if st.Broken(format.TreeExtent) || st.Broken(format.TreeInode) {
		return
	}
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	st.fexts.all(func(x fileExt) {
		in, ok := inodes.last(x.ino)
		if !ok {
			return
		}
		if end := (in.size + format.BlockSize - 1) / format.BlockSize; x.fb+x.fe.Count > end {
			x.seq = in.size // the file's size, for the report
			st.pastEOF.add(x)
		}
	})
}

// fextSeeker looks the file extent items up by (extent start, inode,
// file block).
func (st *checkState) fextSeeker() *seeker[fileExt, key3] {
	return newSeeker(st.sortedFexts(), func(x fileExt) key3 { return key3{uint64(x.fe.Start), x.ino, x.fb} }, cmpKey3)
}

func checkExtents(st *checkState) {
	if st.Broken(format.TreeExtent) {
		return
	}
	fexts := st.sortedFexts()
	if !st.Broken(format.TreeRmap) {
		owners := newSeeker(st.sortedRmaps(), func(r rmapRec) key3 { return key3{uint64(r.start), r.owner.Inode, r.owner.Offset} }, cmpKey3)
		fexts.all(func(x fileExt) {
			if !owners.any(key3{uint64(x.fe.Start), x.ino, x.fb}, func(r rmapRec) bool { return r.owner.IsData() }) {
				st.Reportf(engine.ErrExtentNoRmap, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which has no reverse mapping to it", x.ino, x.fb, x.fe.Start, x.fe.Len)
			}
		})
	}
	if !st.Broken(format.TreeAlloc) {
		at := st.allocSeeker()
		fexts.all(func(x fileExt) {
			if a, ok := at.last(x.fe.Start); !ok || a.n != x.fe.Len || a.item.Flags != format.ExtentData {
				st.Reportf(engine.ErrExtentNoAlloc, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which is not allocated as data", x.ino, x.fb, x.fe.Start, x.fe.Len)
			}
		})
	}
	if st.Broken(format.TreeInode) {
		return
	}
	st.pastEOF.all(func(x fileExt) {
		size := x.seq
		end := (size + format.BlockSize - 1) / format.BlockSize
		st.Reportf(engine.ErrExtentPastEOF, format.TreeExtent, x.fe.Start, "inode %d of %d bytes: the item at block %d maps blocks up to %d, past its last block %d", x.ino, size, x.fb, x.fb+x.fe.Count, end)
	})
}
