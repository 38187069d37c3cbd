package fs

import (
	"fmt"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// What the namespace repairs need of the filesystem layer: setting a link
// count, and linking an inode no directory names any more into
// /lost+found (created on demand), under its inode number; and what the
// block-count repair needs: setting a file's block count.

// LostFoundName is the directory in the root that adopts inodes no
// directory names.
const LostFoundName = "lost+found"

// SetNlink sets inode ino's link count to n in tx and returns the count
// it replaced; ok is false when there is no such inode.
func SetNlink(tx *engine.Tx, ino uint64, n uint32) (old uint32, ok bool, err error) {
	in, ok, err := getInode(tx, ino)
	if err != nil || !ok {
		return 0, ok, err
	}
	old = in.Nlink
	if old == n {
		return old, true, nil
	}
	in.Nlink = n
	in.Ctime = ts(time.Now())
	return old, true, putInode(tx, ino, in)
}

// SetBlocks sets inode ino's block count to n in tx, changing nothing
// else, and returns the count it replaced; ok is false when there is no
// such inode.
func SetBlocks(tx *engine.Tx, ino uint64, n uint64) (old uint64, ok bool, err error) {
	in, ok, err := getInode(tx, ino)
	if err != nil || !ok {
		return 0, ok, err
	}
	old = in.Blocks
	if old == n {
		return old, true, nil
	}
	in.Blocks = n
	return old, true, putInode(tx, ino, in)
}

// Adopt links inode ino, which no directory entry names and which is not
// on the deleted list, into /lost+found under the name "#<ino>" (see
// AdoptTx), and returns the path given. It refuses an inode an entry still
// names (EEXIST: it scans the directory tree to know).
func (f *FS) Adopt(ino uint64) (string, error) {
	var lf uint64 // a subvolume's inode: AdoptTx finds its lost+found
	if format.SubvolOf(ino) == 0 {
		var err error
		if lf, err = f.LostFound(); err != nil {
			return "", err
		}
	}
	var path string
	err := f.e.Update(func(tx *engine.Tx) error {
		if named, err := nameCount(tx, ino); err != nil {
			return err
		} else if named > 0 {
			return syscall.EEXIST
		}
		var err error
		path, err = AdoptTx(tx, ino, lf)
		return err
	})
	if err != nil {
		return "", errno(err)
	}
	return path, f.Sync()
}

// AdoptTx links inode ino into directory lf (/lost+found) under the name
// "#<ino>" in tx, and sets its link count to what that makes it: 1, or
// for a directory two plus its subdirectories, its parent lf (whose count
// grows by one). The caller knows no entry names ino (the link-count
// repair's scan). It refuses an inode unlinked while open (EBUSY: it is
// freed when closed) and returns the path given. An inode of another
// subvolume than lf's goes into its own subvolume's lost+found (made in
// the subvolume's root when missing), never across the edge.
func AdoptTx(tx *engine.Tx, ino, lf uint64) (string, error) {
	prefix := "/"
	if sv := format.SubvolOf(ino); sv != format.SubvolOf(lf) {
		root := format.SubvolRootIno(sv)
		var err error
		if lf, err = lostFoundIn(tx, root); err != nil {
			return "", err
		}
		pc := pathCache{tx: tx, dirs: map[uint64]string{RootIno: "/"}, names: map[uint64]map[uint64]string{}}
		if prefix, err = pc.path(root); err != nil {
			prefix = fmt.Sprintf("<subvolume %d>", sv)
		}
		prefix += "/"
	}
	name := fmt.Sprintf("#%d", ino)
	in, err := mustInode(tx, ino)
	if err != nil {
		return "", err
	}
	if deleted, err := isDeleted(tx, ino); err != nil {
		return "", err
	} else if deleted {
		return "", syscall.EBUSY
	}
	din, err := mustInode(tx, lf)
	if err != nil {
		return "", err
	}
	if _, _, taken, err := lookupEntry(tx, lf, name); err != nil {
		return "", err
	} else if taken {
		name = fmt.Sprintf("#%d.%d", ino, tx.Gen())
	}
	if err := addEntry(tx, lf, din, name, ino, in.Mode); err != nil {
		return "", err
	}
	now := ts(time.Now())
	in.Nlink, in.Ctime = 1, now
	if isDir(in) {
		subdirs, err := subdirCount(tx, ino)
		if err != nil {
			return "", err
		}
		in.Nlink, in.Parent = 2+subdirs, lf
		din.Nlink++
	}
	if err := putInode(tx, ino, in); err != nil {
		return "", err
	}
	din.Mtime, din.Ctime = now, now
	if err := putInode(tx, lf, din); err != nil {
		return "", err
	}
	return prefix + LostFoundName + "/" + name, nil
}

// LostFound returns /lost+found's inode, making it (mode 0700, owner
// root) when it is missing.
func (f *FS) LostFound() (uint64, error) {
	a, err := f.Lookup(RootIno, LostFoundName)
	if err == nil {
		if a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return 0, fmt.Errorf("/%s is not a directory: %w", LostFoundName, syscall.ENOTDIR)
		}
		return a.Ino, nil
	}
	if err != syscall.ENOENT {
		return 0, err
	}
	a, err = f.Mkdir(RootIno, LostFoundName, NewInode{Mode: 0o700})
	if err != nil {
		return 0, fmt.Errorf("make /%s: %w", LostFoundName, err)
	}
	return a.Ino, nil
}

// LostFoundTx returns /lost+found's inode in tx, making it (mode 0700,
// owner root) when it is missing: LostFound for a caller that already
// holds a transaction (a repair's exclusive section, where another
// Update would wait for itself).
func LostFoundTx(tx *engine.Tx) (uint64, error) { return lostFoundIn(tx, RootIno) }

// lostFoundIn returns the lost+found directory in directory root (a
// subvolume's root), making it when missing.
func lostFoundIn(tx *engine.Tx, root uint64) (uint64, error) {
	de, _, ok, err := lookupEntry(tx, root, LostFoundName)
	if err != nil {
		return 0, err
	}
	if ok {
		if uint32(de.Type)<<12 != syscall.S_IFDIR {
			return 0, fmt.Errorf("/%s is not a directory: %w", LostFoundName, syscall.ENOTDIR)
		}
		return de.Ino, nil
	}
	din, err := mustInode(tx, root)
	if err != nil {
		return 0, err
	}
	now := ts(time.Now())
	ino, err := allocIno(tx, root)
	if err != nil {
		return 0, err
	}
	in := &format.InodeItem{Mode: syscall.S_IFDIR | 0o700, Nlink: 2, Parent: root, NextIndex: 2,
		Generation: uint64(tx.Gen()), Atime: now, Mtime: now, Ctime: now, Btime: now}
	if err := putInode(tx, ino, in); err != nil {
		return 0, err
	}
	if err := addEntry(tx, root, din, LostFoundName, ino, in.Mode); err != nil {
		return 0, err
	}
	din.Nlink++
	din.Mtime, din.Ctime = now, now
	return ino, putInode(tx, root, din)
}

// nameCount counts the directory entries naming ino (a scan of the
// whole directory tree: entries are keyed by their directory, not their
// inode).
func nameCount(tx *engine.Tx, ino uint64) (int, error) {
	tr, _ := tx.ReadTree(format.TreeDir)
	n := 0
	var derr error
	err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeDirIndex {
			return true
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			derr = err
			return false
		}
		if de.Ino == ino {
			n++
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return n, err
}

// subdirCount counts the directories entries of directory dir name.
func subdirCount(tx *engine.Tx, dir uint64) (uint32, error) {
	tr, _ := tx.ReadTree(format.TreeDir)
	var n uint32
	var derr error
	err := tr.Ascend(format.DirIndexKey(dir, 0), func(k format.Key, v []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirIndex {
			return false
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			derr = err
			return false
		}
		if uint32(de.Type) == syscall.S_IFDIR>>12 {
			n++
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return n, err
}

// isDeleted says whether ino is on the deleted list (unlinked while
// open).
func isDeleted(tx *engine.Tx, ino uint64) (bool, error) {
	tr, _ := tx.ReadTree(format.TreeDeleted)
	_, ok, err := tr.Get(format.DeletedKey(ino), nil)
	return ok, err
}
