package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// The inode tree's checker: every inode item must decode, and every link
// count must be what the directory entries imply (a directory: two plus
// its subdirectories, none once unlinked while open; an inode on the
// deleted list: none).
var inodeCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeInode: func(st *checkState, root format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeInodeItem {
				return
			}
			in, err := format.DecodeInodeItem(val)
			if err != nil {
				st.Reportf(engine.ErrItemBad, format.TreeInode, root, "inode item %d: %v", k.Obj, err)
				return
			}
			st.inodes[k.Obj] = nsInode{mode: in.Mode, nlink: in.Nlink, size: in.Size}
		},
	},
	cross: checkNlinks,
}

// nsInode is what the namespace checks read of an inode.
type nsInode struct {
	mode  uint32
	nlink uint32
	size  uint64
}

const (
	modeType = 0o170000
	modeDir  = 0o040000
)

func (in nsInode) isDir() bool { return in.mode&modeType == modeDir }

func checkNlinks(st *checkState) {
	if len(st.inodes) == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeDir) {
		return // no filesystem on this image (engine-only use), or damage
	}
	links := map[uint64]uint32{}
	subdirs := map[uint64]uint32{}
	for _, d := range st.dirents {
		if d.index {
			continue
		}
		in, ok := st.inodes[d.de.Ino]
		if !ok {
			continue
		}
		links[d.de.Ino]++
		if in.isDir() {
			subdirs[d.dir]++
		}
	}
	for ino, in := range st.inodes {
		want := links[ino]
		if in.isDir() {
			want = 2 + subdirs[ino]
			if links[ino] == 0 && ino != fs.RootIno {
				want = 0 // an unlinked directory still open
			}
		}
		if st.deleted[ino] && links[ino] == 0 {
			want = 0
		}
		if in.nlink != want {
			st.Reportf(engine.ErrNlink, format.TreeInode, 0, "inode %d has link count %d, the directory tree implies %d", ino, in.nlink, want)
		}
	}
}
