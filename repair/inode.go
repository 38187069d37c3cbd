package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// The inode tree's checker: every inode item must decode, and every link
// count must be what the directory entries imply (a directory: two plus
// its subdirectories, none once unlinked while open; an inode on the
// deleted list: none). A regular file's block count (st_blocks) must be
// the sum of the counts of its file extent items: every change to a
// file's mapping stores its item with the new count in the same
// transaction, and blocks only buffered (delayed allocation) are counted
// in memory, never stored; a clone counts the blocks it maps, shared or
// not.
var inodeCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeInode: func(st *checkState, root format.BlockNr, k format.Key, val []byte) {
			checkSymlinkItem(st, root, k, val) // inode_repair.go
			if k.Type != format.TypeInodeItem {
				return
			}
			in, err := format.DecodeInodeItem(val)
			if err != nil {
				st.Reportf(engine.ErrItemBad, format.TreeInode, root, "inode item %d: %v", k.Obj, err)
				return
			}
			st.inodes.add(nsInode{ino: k.Obj, mode: in.Mode, nlink: in.Nlink, size: in.Size, blocks: in.Blocks})
		},
	},
	cross: func(st *checkState) { checkNlinks(st); checkBlocks(st); checkSymlinkTargets(st) },
}

// nsInode is what the namespace checks read of an inode.
type nsInode struct {
	ino    uint64
	mode   uint32
	nlink  uint32
	size   uint64
	blocks uint64
}

const (
	modeType = 0o170000
	modeDir  = 0o040000
	modeReg  = 0o100000
)

func (in nsInode) isDir() bool { return in.mode&modeType == modeDir }

func (in nsInode) isReg() bool { return in.mode&modeType == modeReg }

func inodeNr(in nsInode) uint64 { return in.ino }

func ident(v uint64) uint64 { return v }

// sortedDeleted returns the deleted list sorted by inode.
func (st *checkState) sortedDeleted() *recArr[uint64] {
	st.deleted.sortBy(8, nil)
	return st.deleted
}

func checkNlinks(st *checkState) {
	if st.inodes.len() == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeDir) {
		return // no filesystem on this image (engine-only use), or damage
	}
	// The entries by the inode they name, against the inodes (by number):
	// first the subdirectories of each directory, then the links of each
	// inode.
	names := st.sortedNames()
	subdirs := newRecArr(st, "subdirectories", u64Codec)
	defer subdirs.close()
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	names.all(func(d nsName) {
		if in, ok := inodes.last(d.ino); ok && in.isDir() {
			subdirs.add(d.dir)
		}
	})
	subdirs.sortBy(8, nil)
	links := newSeeker(names, func(d nsName) uint64 { return d.ino }, cmpUint)
	subs := newSeeker(subdirs, ident, cmpUint)
	deleted := newSeeker(st.sortedDeleted(), ident, cmpUint)
	distinct(st.inodes, inodeNr, cmpUint, func(in nsInode) {
		if st.halfFreed(in.ino) {
			return // a subvolume being deleted (subvol.go)
		}
		ino, n := in.ino, uint32(links.seek(in.ino))
		want := n
		if in.isDir() {
			want = 2 + uint32(subs.seek(ino))
			if n == 0 && ino != fs.RootIno {
				want = 0 // an unlinked directory still open
			}
		}
		if n == 0 && deleted.seek(ino) > 0 {
			want = 0
		}
		if in.nlink != want {
			st.Reportf(engine.ErrNlink, format.TreeInode, 0, "inode %d has link count %d, the directory tree implies %d", ino, in.nlink, want)
		}
	})
}

// checkBlocks compares each regular file's block count with the blocks
// its file extent items map: the inodes by number against the walk's
// per-file sums (by inode too). A file some of whose items could not be
// read, or overlap, is left to the findings about them, and every file
// when the extent tree's walk counted items missing (it cannot tell
// whose); so are the inodes of a subvolume being deleted or a snapshot
// being filled (halfFreed), as the namespace checks leave them.
func checkBlocks(st *checkState) {
	if st.inodes.len() == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeExtent) || st.extentItemsLost {
		return
	}
	sums := newSeeker(st.sortedFileBlocks(), func(b fileBlocks) uint64 { return b.ino }, cmpUint)
	distinct(st.inodes, inodeNr, cmpUint, func(in nsInode) {
		if !in.isReg() {
			return
		}
		sum, _ := sums.last(in.ino)
		if sum.bad || in.blocks == sum.n || st.halfFreed(in.ino) {
			return
		}
		st.Reportf(engine.ErrInodeBlocks, format.TreeInode, 0, "inode %d has a block count of %d, its file extent items map %d blocks", in.ino, in.blocks, sum.n)
	})
}
