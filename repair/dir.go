package repair

import (
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The directory tree's checker: every entry must decode, sit under a
// directory, name an inode that exists with the type the entry says, and
// be paired with its index twin (each entry is kept twice: by name hash
// and by readdir index).
var dirCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeDir: func(st *checkState, root format.BlockNr, k format.Key, val []byte) {
			if k.Type != format.TypeDirEntry && k.Type != format.TypeDirIndex {
				return
			}
			de, err := format.DecodeDirEntry(val)
			if err != nil {
				st.Reportf(engine.ErrItemBad, format.TreeDir, root, "directory entry %s: %v", k, err)
				return
			}
			st.dirents = append(st.dirents, nsDirent{dir: k.Obj, index: k.Type == format.TypeDirIndex, de: de})
		},
	},
	cross: checkDirs,
}

// nsDirent is a directory entry: by name (index false) or its index twin.
type nsDirent struct {
	dir   uint64
	index bool
	de    format.DirEntry
}

func checkDirs(st *checkState) {
	if len(st.inodes) == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeDir) {
		return // no filesystem on this image (engine-only use), or damage
	}
	type twin struct {
		dir, ino, index uint64
		name            string
	}
	names := map[twin]int{}
	for _, d := range st.dirents {
		t := twin{d.dir, d.de.Ino, d.de.Index, d.de.Name}
		if d.index {
			names[t]--
			continue
		}
		names[t]++
		if parent, ok := st.inodes[d.dir]; ok && !parent.isDir() {
			st.Reportf(engine.ErrDirNotDir, format.TreeDir, 0, "entry %q under inode %d, which is not a directory", d.de.Name, d.dir)
		}
		in, ok := st.inodes[d.de.Ino]
		if !ok {
			st.Reportf(engine.ErrDirentDangling, format.TreeDir, 0, "entry %q in directory %d names inode %d, which does not exist", d.de.Name, d.dir, d.de.Ino)
			continue
		}
		if uint32(d.de.Type) != (in.mode&modeType)>>12 {
			st.Reportf(engine.ErrDirentType, format.TreeDir, 0, "entry %q in directory %d says type %o, inode %d has mode %o", d.de.Name, d.dir, d.de.Type, d.de.Ino, in.mode)
		}
	}
	for t, n := range names {
		if n != 0 {
			st.Reportf(engine.ErrDirentIndex, format.TreeDir, 0, "entry %q (inode %d) in directory %d is not paired with its index entry %d", t.name, t.ino, t.dir, t.index)
		}
	}
}
