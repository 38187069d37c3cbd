package repair

import (
	"bytes"

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
			name := st.nameBuf.add(de.Name)
			isIndex := k.Type == format.TypeDirIndex
			st.twins.add(nsTwin{dir: k.Obj, index: de.Index, ino: de.Ino, name: name, isIndex: isIndex})
			if !isIndex {
				st.names.add(nsName{ino: de.Ino, dir: k.Obj, name: name, typ: de.Type})
			}
		},
	},
	cross: checkDirs,
}

// sortedNames returns the entries by name sorted by (inode named,
// directory, place).
func (st *checkState) sortedNames() *recArr[nsName] {
	st.names.sortBy(24, nil)
	return st.names
}

func checkDirs(st *checkState) {
	if st.inodes.len() == 0 || st.Broken(format.TreeInode) || st.Broken(format.TreeDir) {
		return // no filesystem on this image (engine-only use), or damage
	}
	// Each entry's directory: the entries come by directory (until
	// sorted by inode), the inodes by number.
	parents := newSeeker(st.inodes, inodeNr, cmpUint)
	st.names.all(func(d nsName) {
		if parent, ok := parents.last(d.dir); ok && !parent.isDir() {
			st.Reportf(engine.ErrDirNotDir, format.TreeDir, 0, "entry %q under inode %d, which is not a directory", st.nameBuf.get(d.name), d.dir)
		}
	})
	// Each entry's inode: the entries sorted by the inode they name.
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	st.sortedNames().all(func(d nsName) {
		in, ok := inodes.last(d.ino)
		if !ok {
			if st.halfFreed(d.dir) {
				return // a subvolume being deleted (subvol.go)
			}
			st.Reportf(engine.ErrDirentDangling, format.TreeDir, 0, "entry %q in directory %d names inode %d, which does not exist", st.nameBuf.get(d.name), d.dir, d.ino)
			return
		}
		if uint32(d.typ) != (in.mode&modeType)>>12 {
			st.Reportf(engine.ErrDirentType, format.TreeDir, 0, "entry %q in directory %d says type %o, inode %d has mode %o", st.nameBuf.get(d.name), d.dir, d.typ, d.ino, in.mode)
		}
	})
	// Each entry and its index twin: sorted by (directory, index, inode,
	// name), a group of equal ones must hold as many of each.
	st.twins.sortBy(32, func(a, b []byte) int {
		return bytes.Compare(st.nameBuf.bytes(twinName(a)), st.nameBuf.bytes(twinName(b)))
	})
	n := st.twins.len()
	var sum int64
	for i := uint64(0); i < n && st.err == nil; i++ {
		t := st.twins.at(i)
		if t.isIndex {
			sum--
		} else {
			sum++
		}
		if i+1 < n {
			u := st.twins.at(i + 1)
			if u.dir == t.dir && u.index == t.index && u.ino == t.ino && u.name.hash == t.name.hash && bytes.Equal(st.nameBuf.bytes(u.name), st.nameBuf.bytes(t.name)) {
				continue
			}
		}
		if sum != 0 {
			st.Reportf(engine.ErrDirentIndex, format.TreeDir, 0, "entry %q (inode %d) in directory %d is not paired with its index entry %d", st.nameBuf.get(t.name), t.ino, t.dir, t.index)
		}
		sum = 0
	}
}

// twinName is the name of a twin record as stored.
func twinName(b []byte) nameRef {
	return nameRef{off: be.Uint64(b[32:]), n: be.Uint16(b[40:])}
}
