package fs

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Attr is what getattr returns.
type Attr struct {
	Ino        uint64
	Mode       uint32
	Nlink      uint32
	UID, GID   uint32
	Size       uint64
	Blocks     uint64 // 4 KiB blocks of data
	Rdev       uint64
	Generation uint64
	Atime      time.Time
	Mtime      time.Time
	Ctime      time.Time
}

func attrOf(ino uint64, in *format.InodeItem) Attr {
	t := func(x format.Timespec) time.Time { return time.Unix(x.Sec, int64(x.Nsec)) }
	return Attr{Ino: ino, Mode: in.Mode, Nlink: in.Nlink, UID: in.UID, GID: in.GID, Size: in.Size,
		Blocks: in.Blocks, Rdev: in.Rdev, Generation: in.Generation,
		Atime: t(in.Atime), Mtime: t(in.Mtime), Ctime: t(in.Ctime)}
}

// DirEntry is one readdir result.
type DirEntry struct {
	Name string
	Ino  uint64
	Mode uint32 // file type bits only
	// Next is the offset to resume after this entry.
	Next uint64
}

func checkName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return syscall.EINVAL
	case len(name) > format.MaxNameLen:
		return syscall.ENAMETOOLONG
	case strings.ContainsAny(name, "/\x00"):
		return syscall.EINVAL
	}
	return nil
}

// lookupEntry finds name in dir: the entry and its key.
func lookupEntry(tx *engine.Tx, dir uint64, name string) (format.DirEntry, format.Key, bool, error) {
	tr, _ := tx.ReadTree(format.TreeDir)
	h := nameHash(name)
	var de format.DirEntry
	var key format.Key
	found := false
	var derr error
	err := tr.Ascend(format.DirEntryKey(dir, h, 0), func(k format.Key, v []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirEntry || k.Off != h {
			return false
		}
		d, err := format.DecodeDirEntry(v)
		if err != nil {
			derr = err
			return false
		}
		if d.Name == name {
			de, key, found = d, k, true
			return false
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return de, key, found, err
}

// NameHash is the hash a directory entry named name is keyed by
// (format.DirEntryKey).
func NameHash(name string) uint64 { return nameHash(name) }

// Damage to the directory tree met by a namespace operation fails that
// operation (EIO, the dir structure marked sick), never the mount: every
// path an operation will change is read before anything changes
// (probeDir: an insert or delete walks the path a lookup of its key
// walks, and a transaction that fails before it changes anything is not
// aborted), so an operation on a directory whose leaf is damaged fails
// alone and the rest of the namespace serves until the dir rebuild
// (repair/dir_repair.go) runs. The one change a probe cannot foresee is
// a delete's rebalance meeting a damaged sibling leaf after the item was
// removed: the tree is valid then (the rebalance stops), so removeEntry
// goes on and leaves the damage to the next check.

// probeDir reads the paths to keys in the directory tree.
func probeDir(tx *engine.Tx, keys ...format.Key) error {
	tr, _ := tx.ReadTree(format.TreeDir)
	for _, k := range keys {
		if _, _, err := tr.Get(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// dirDamage marks the structure damage in err was met in sick and returns
// err.
func (f *FS) dirDamage(err error) error {
	if err != nil {
		f.e.NoteDamage(err)
	}
	return err
}

func fileType(mode uint32) uint8 { return uint8((mode & syscall.S_IFMT) >> 12) }

// mustEntry finds name in dir and the inode it names, or ENOENT.
func mustEntry(tx *engine.Tx, dir uint64, name string) (format.DirEntry, format.Key, *format.InodeItem, error) {
	de, key, ok, err := lookupEntry(tx, dir, name)
	if err != nil {
		return de, key, nil, err
	}
	if !ok {
		return de, key, nil, syscall.ENOENT
	}
	in, err := mustInode(tx, de.Ino)
	return de, key, in, err
}

// addEntry links name in dir to ino.
func addEntry(tx *engine.Tx, dir uint64, din *format.InodeItem, name string, ino uint64, mode uint32) error {
	tr, err := tx.Tree(format.TreeDir)
	if err != nil {
		return err
	}
	h := nameHash(name)
	seq := uint64(0)
	err = tr.Ascend(format.DirEntryKey(dir, h, 0), func(k format.Key, v []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirEntry || k.Off != h {
			return false
		}
		seq = k.Aux + 1
		return true
	})
	if err != nil {
		return err
	}
	de := format.DirEntry{Ino: ino, Type: fileType(mode), Index: din.NextIndex, Name: name}
	din.NextIndex++
	if err := tr.Insert(format.DirEntryKey(dir, h, seq), de.Encode()); err != nil {
		return err
	}
	if err := tr.Insert(format.DirIndexKey(dir, de.Index), de.Encode()); err != nil {
		return err
	}
	tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpInsert, Dir: dir, Entry: de})
	return nil
}

// removeEntry unlinks the entry found at key.
func removeEntry(tx *engine.Tx, dir uint64, key format.Key, de format.DirEntry) error {
	tr, err := tx.Tree(format.TreeDir)
	if err != nil {
		return err
	}
	for _, k := range []format.Key{key, format.DirIndexKey(dir, de.Index)} {
		// Removed, then a rebalance met a damaged sibling: the tree is
		// valid (see probeDir).
		if ok, err := tr.Delete(k); err != nil && !(ok && errors.Is(err, format.ErrCorrupt)) {
			return err
		}
	}
	tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpDelete, Dir: dir, Entry: de})
	return nil
}

// Lookup finds name in directory dir.
func (f *FS) Lookup(dir uint64, name string) (Attr, error) {
	if err := f.prepareEntry(dir, name); err != nil { // snapshot.go
		return Attr{}, errno(err)
	}
	var a Attr
	err := f.e.View(func(tx *engine.Tx) error {
		din, err := mustInode(tx, dir)
		if err != nil {
			return err
		}
		if !isDir(din) {
			return syscall.ENOTDIR
		}
		switch name {
		case ".":
			a = f.attrOf(dir, din)
			return nil
		case "..":
			pin, err := mustInode(tx, din.Parent)
			if err != nil {
				return err
			}
			a = f.attrOf(din.Parent, pin)
			return nil
		}
		if len(name) > format.MaxNameLen {
			return syscall.ENAMETOOLONG
		}
		de, _, in, err := mustEntry(tx, dir, name)
		if err != nil {
			return err
		}
		a = f.attrOf(de.Ino, in)
		return nil
	})
	return a, errno(f.dirDamage(err))
}

// GetAttr returns the attributes of ino.
func (f *FS) GetAttr(ino uint64) (Attr, error) {
	if err := f.prepare(ino); err != nil {
		return Attr{}, errno(err)
	}
	var a Attr
	err := f.e.View(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		a = f.attrOf(ino, in)
		return nil
	})
	return a, errno(err)
}

// NewInode describes an inode to create.
type NewInode struct {
	Mode     uint32 // type and permission bits
	UID, GID uint32
	Rdev     uint64
	Target   string // symlinks
	// Umask, when set, is the caller's umask, applied unless the
	// directory's default ACL decides the mode instead (aclcreate.go).
	Umask *uint32
}

// Create makes a regular file (Mode's type bits may be 0) in dir.
func (f *FS) Create(dir uint64, name string, ni NewInode) (Attr, error) {
	if ni.Mode&syscall.S_IFMT == 0 {
		ni.Mode |= syscall.S_IFREG
	}
	return f.mknod(dir, name, ni)
}

// Mkdir makes a directory in dir.
func (f *FS) Mkdir(dir uint64, name string, ni NewInode) (Attr, error) {
	ni.Mode = ni.Mode&^syscall.S_IFMT | syscall.S_IFDIR
	return f.mknod(dir, name, ni)
}

// Symlink makes a symbolic link to target in dir.
func (f *FS) Symlink(dir uint64, name, target string, ni NewInode) (Attr, error) {
	if len(target) == 0 {
		return Attr{}, syscall.ENOENT
	}
	if len(target) > format.MaxSymlinkLen ||
		len(target) > format.MaxSymlinkItem && !f.e.HasFeatures(0, format.IncompatLongSymlinks) {
		return Attr{}, syscall.ENAMETOOLONG // long targets: format 1.5
	}
	ni.Mode = syscall.S_IFLNK | 0o777
	ni.Target = target
	return f.mknod(dir, name, ni)
}

// Mknod makes a file of any type Mode says (regular, fifo, socket, device).
func (f *FS) Mknod(dir uint64, name string, ni NewInode) (Attr, error) {
	return f.mknod(dir, name, ni)
}

func (f *FS) mknod(dir uint64, name string, ni NewInode) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	if err := f.writable(dir); err != nil {
		return Attr{}, err
	}
	if err := f.prepare(dir); err != nil {
		return Attr{}, errno(err)
	}
	var a Attr
	var newIno uint64
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		din, err := newEntryDir(tx, dir, name)
		if err != nil {
			return err
		}
		if err := probeNewInode(tx, dir); err != nil {
			return err
		}
		access, def, err := inheritACL(tx, dir, &ni) // aclcreate.go
		if err != nil {
			return err
		}
		if access != nil || def != nil {
			if err := probeNewACLs(tx, format.SubvolIno(format.SubvolOf(dir), tx.PeekObjectID())); err != nil {
				return err
			}
		}
		now := ts(time.Now())
		ino, err := allocIno(tx, dir)
		if err != nil {
			return err
		}
		in := &format.InodeItem{Mode: ni.Mode, UID: ni.UID, GID: ni.GID, Nlink: 1, Rdev: ni.Rdev,
			Generation: uint64(tx.Gen()), Atime: now, Mtime: now, Ctime: now, Btime: now}
		if isDir(in) {
			in.Nlink, in.Parent, in.NextIndex = 2, dir, 2
			din.Nlink++
		}
		if ni.Target != "" {
			in.Size = uint64(len(ni.Target))
			if err := putTarget(tx, ino, ni.Target); err != nil {
				return err
			}
		}
		if err := putInode(tx, ino, in); err != nil {
			return err
		}
		if err := putNewACLs(tx, ino, access, def); err != nil {
			return err
		}
		if err := addEntry(tx, dir, din, name, ino, in.Mode); err != nil {
			return err
		}
		din.Mtime, din.Ctime = now, now
		if err := putInode(tx, dir, din); err != nil {
			return err
		}
		a, newIno, gen = f.attrOf(ino, in), ino, tx.Gen()
		return nil
	})
	if err == nil {
		f.markFull(newIno, gen)
		f.markFull(dir, gen)
	}
	return a, errno(f.dirDamage(err))
}

// Readlink returns a symlink's target.
func (f *FS) Readlink(ino uint64) (string, error) {
	if err := f.prepare(ino); err != nil {
		return "", errno(err)
	}
	var target string
	err := f.e.View(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		if in.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			return syscall.EINVAL
		}
		target, err = readTarget(tx, ino)
		return err
	})
	return target, errno(err)
}

// Symlink targets (format.SplitSymlink): one item up to
// format.MaxSymlinkItem bytes, chunks keyed by byte offset beyond, on
// images whose version has IncompatLongSymlinks (format 1.5).
// A symlink is made with its target in one transaction and never
// changed, so the fsync log never carries a target: an fsync after the
// symlink's creation commits (the new inode is marked full).

// putTarget writes ino's target.
func putTarget(tx *engine.Tx, ino uint64, target string) error {
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	ks, vs := format.SplitSymlink(ino, []byte(target))
	for i, k := range ks {
		if err := tr.Put(k, vs[i]); err != nil {
			return err
		}
	}
	return nil
}

// targetKeys returns the keys of ino's target items, checking each (a
// symlink has at most format.MaxSymlinkLen/format.MaxSymlinkItem + 1 of
// them; more is corruption).
func targetKeys(tr *eb.Tree, ino uint64, fn func(k format.Key, v []byte) error) error {
	const most = format.MaxSymlinkLen/format.MaxSymlinkItem + 1
	n := 0
	var ferr error
	err := tr.Ascend(format.SymlinkKey(ino), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeSymlink {
			return false
		}
		if n++; n > most {
			ferr = fmt.Errorf("symlink %d has more than %d target items: %w", ino, most, format.ErrCorrupt)
			return false
		}
		ferr = fn(k, v)
		return ferr == nil
	})
	if err == nil {
		err = ferr
	}
	return err
}

// readTarget reads ino's target, checking that its items are whole.
func readTarget(tx *engine.Tx, ino uint64) (string, error) {
	tr, _ := tx.ReadTree(format.TreeInode)
	var b []byte
	total := uint64(0)
	err := targetKeys(tr, ino, func(k format.Key, v []byte) error {
		t, err := format.SymlinkTotal(k, len(v))
		if err != nil {
			return err
		}
		if k.Off != uint64(len(b)) || (total != 0 && t != total) {
			return fmt.Errorf("symlink %d: target item %s out of sequence: %w", ino, k, format.ErrCorrupt)
		}
		total = t
		b = append(b, v...)
		return nil
	})
	if err != nil {
		return "", err
	}
	if total == 0 || uint64(len(b)) != total {
		return "", fmt.Errorf("symlink %d: target of %d bytes holds %d: %w", ino, total, len(b), format.ErrCorrupt)
	}
	return string(b), nil
}

// deleteTarget deletes ino's target items (none for other inodes), well
// formed or not.
func deleteTarget(tx *engine.Tx, ino uint64) error {
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	var ks []format.Key
	// A corrupt item is deleted too: bounded only by the count.
	if err := targetKeys(tr, ino, func(k format.Key, _ []byte) error { ks = append(ks, k); return nil }); err != nil {
		return err
	}
	for _, k := range ks {
		if _, err := tr.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// newEntryDir reads directory dir, where name is to be made: ENOTDIR,
// ENOENT for a directory already removed, EEXIST when the name is taken;
// it reads the path to where the new index entry goes, so that damage
// there fails the create before it changes anything.
func newEntryDir(tx *engine.Tx, dir uint64, name string) (*format.InodeItem, error) {
	din, err := mustInode(tx, dir)
	if err != nil {
		return nil, err
	}
	if !isDir(din) {
		return nil, syscall.ENOTDIR
	}
	if din.Nlink == 0 {
		return nil, syscall.ENOENT
	}
	if _, _, ok, err := lookupEntry(tx, dir, name); err != nil {
		return nil, err
	} else if ok {
		return nil, syscall.EEXIST
	}
	if err := probeDir(tx, format.DirIndexKey(dir, din.NextIndex)); err != nil {
		return nil, err
	}
	return din, nil
}

// Link makes newname in newdir another name of ino.
func (f *FS) Link(ino, newdir uint64, newname string) (Attr, error) {
	if err := checkName(newname); err != nil {
		return Attr{}, err
	}
	if err := f.writable(ino, newdir); err != nil {
		return Attr{}, err
	}
	if err := f.prepare(ino, newdir); err != nil {
		return Attr{}, errno(err)
	}
	var a Attr
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		if isDir(in) {
			return syscall.EPERM
		}
		if crossSubvol(ino, newdir) {
			return syscall.EXDEV
		}
		if in.Nlink >= 65000 {
			return syscall.EMLINK
		}
		din, err := mustInode(tx, newdir)
		if err != nil {
			return err
		}
		if !isDir(din) {
			return syscall.ENOTDIR
		}
		if _, _, ok, err := lookupEntry(tx, newdir, newname); err != nil {
			return err
		} else if ok {
			return syscall.EEXIST
		}
		if err := probeDir(tx, format.DirIndexKey(newdir, din.NextIndex)); err != nil {
			return err
		}
		now := ts(time.Now())
		if err := addEntry(tx, newdir, din, newname, ino, in.Mode); err != nil {
			return err
		}
		if in.Nlink == 0 {
			// Linking an open, unlinked file back in (linkat of O_TMPFILE).
			if err := unmarkDeleted(tx, ino); err != nil {
				return err
			}
		}
		in.Nlink++
		in.Ctime = now
		din.Mtime, din.Ctime = now, now
		if err := putInode(tx, ino, in); err != nil {
			return err
		}
		if err := putInode(tx, newdir, din); err != nil {
			return err
		}
		a, gen = f.attrOf(ino, in), tx.Gen()
		return nil
	})
	if err == nil {
		f.markFull(ino, gen)
	}
	return a, errno(f.dirDamage(err))
}

// Unlink removes name (not a directory) from dir.
func (f *FS) Unlink(dir uint64, name string) error {
	return f.remove(dir, name, false)
}

// Rmdir removes the empty directory name from dir.
func (f *FS) Rmdir(dir uint64, name string) error {
	return f.remove(dir, name, true)
}

func (f *FS) remove(dir uint64, name string, wantDir bool) error {
	if name == "." {
		return syscall.EINVAL
	}
	if err := f.writable(dir); err != nil {
		return err
	}
	if err := f.prepareEntry(dir, name); err != nil {
		return errno(err)
	}
	if name == ".." {
		return syscall.ENOTEMPTY
	}
	var victim uint64
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		din, err := mustInode(tx, dir)
		if err != nil {
			return err
		}
		if !isDir(din) {
			return syscall.ENOTDIR
		}
		de, key, in, err := mustEntry(tx, dir, name)
		if err != nil {
			return err
		}
		if err := probeDir(tx, format.DirIndexKey(dir, de.Index)); err != nil {
			return err
		}
		if isDir(in) != wantDir {
			if wantDir {
				return syscall.ENOTDIR
			}
			return syscall.EISDIR
		}
		if format.IsSubvolRoot(de.Ino) {
			return syscall.EPERM // DeleteSubvol deletes a subvolume
		}
		if wantDir {
			empty, err := dirEmpty(tx, de.Ino)
			if err != nil {
				return err
			}
			if !empty {
				return syscall.ENOTEMPTY
			}
		}
		if isReg(in) && in.Nlink <= 1 {
			// The data goes with the last name: damaged extent records
			// fail the unlink before anything changes.
			if err := f.probeExtents(tx, de.Ino, 0, ^uint64(0)>>12); err != nil {
				return err
			}
		}
		victim, gen = de.Ino, tx.Gen()
		return f.dropName(tx, dir, din, key, de, in)
	})
	if err == nil {
		f.markFull(dir, gen)
		f.markFull(victim, gen)
	}
	return errno(f.dirDamage(err))
}

// dropName removes one name of inode de.Ino (whose item is in) from dir and
// deals with the inode if that was its last name.
func (f *FS) dropName(tx *engine.Tx, dir uint64, din *format.InodeItem, key format.Key, de format.DirEntry, in *format.InodeItem) error {
	if err := removeEntry(tx, dir, key, de); err != nil {
		return err
	}
	now := ts(time.Now())
	din.Mtime, din.Ctime = now, now
	if isDir(in) {
		din.Nlink--
		in.Nlink = 0
	} else {
		in.Nlink--
	}
	in.Ctime = now
	if err := putInode(tx, dir, din); err != nil {
		return err
	}
	if in.Nlink > 0 {
		return putInode(tx, de.Ino, in)
	}
	f.mu.Lock()
	open := f.opens[de.Ino] > 0
	f.mu.Unlock()
	if open {
		// Keep it until the last close; a mount after a crash frees it.
		if err := putInode(tx, de.Ino, in); err != nil {
			return err
		}
		tr, err := tx.Tree(format.TreeDeleted)
		if err != nil {
			return err
		}
		if err := tr.Put(format.DeletedKey(de.Ino), nil); err != nil && !tx.DeletedDamaged(err) {
			return err
		}
		return nil
	}
	return f.freeInode(tx, de.Ino, in)
}

func unmarkDeleted(tx *engine.Tx, ino uint64) error {
	tr, err := tx.Tree(format.TreeDeleted)
	if err != nil {
		return err
	}
	if _, err = tr.Delete(format.DeletedKey(ino)); err != nil && !tx.DeletedDamaged(err) {
		return err
	}
	return nil
}

// freeInode drops an inode's data (buffered too), symlink target and
// item.
func (f *FS) freeInode(tx *engine.Tx, ino uint64, in *format.InodeItem) error {
	f.dropDirty(ino)
	if isReg(in) {
		if _, err := punch(tx, ino, 0, ^uint64(0)>>12); err != nil {
			return err
		}
	}
	if err := dropXattrs(tx, ino); err != nil { // xattr.go
		return err
	}
	if err := deleteTarget(tx, ino); err != nil {
		return err
	}
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	if _, err = tr.Delete(format.InodeKey(ino)); err != nil {
		return err
	}
	tx.Hooks().Inode.Call(engine.InodeEvent{Gen: tx.Gen(), Op: engine.OpDelete, Ino: ino})
	return f.snapFreed(tx, ino) // snapshot.go
}

func dirEmpty(tx *engine.Tx, dir uint64) (bool, error) {
	tr, _ := tx.ReadTree(format.TreeDir)
	empty := true
	err := tr.Ascend(format.Key{Obj: dir, Type: format.TypeDirEntry}, func(k format.Key, _ []byte) bool {
		empty = k.Obj != dir
		return false
	})
	return empty, err
}

// isAncestor reports whether a is dir or one of its ancestors.
func isAncestor(tx *engine.Tx, a, dir uint64) (bool, error) {
	for i := 0; i < 4096; i++ {
		if dir == a {
			return true, nil
		}
		if dir == RootIno {
			return false, nil
		}
		in, err := mustInode(tx, dir)
		if err != nil {
			return false, err
		}
		dir = in.Parent
	}
	return false, format.ErrCorrupt
}

// Rename flags (renameat2).
const (
	RenameNoReplace = 1
	RenameExchange  = 2
)

// Rename moves oldname in olddir to newname in newdir, replacing what is
// there (unless RenameNoReplace): a file by a file, an empty directory by a
// directory.
func (f *FS) Rename(olddir uint64, oldname string, newdir uint64, newname string, flags uint32) error {
	if err := checkName(oldname); err != nil {
		return err
	}
	if err := checkName(newname); err != nil {
		return err
	}
	if err := f.writable(olddir, newdir); err != nil {
		return err
	}
	if err := f.prepareEntry(olddir, oldname); err != nil {
		return errno(err)
	}
	if err := f.prepareEntry(newdir, newname); err != nil {
		return errno(err)
	}
	if err := f.prepareAncestors(newdir); err != nil {
		return errno(err)
	}
	switch {
	case flags&^(RenameNoReplace|RenameExchange) != 0, flags == RenameNoReplace|RenameExchange:
		return syscall.EINVAL
	case flags&RenameExchange != 0:
		return f.exchange(olddir, oldname, newdir, newname)
	}
	return f.renameTx(olddir, oldname, newdir, func(tx *engine.Tx, rn *renaming) error {
		odin, ndin, de, okey, in := rn.odin, rn.ndin, rn.de, rn.okey, rn.in
		if isDir(in) && newdir != olddir {
			// Moving a directory into its own subtree would detach it.
			if anc, err := isAncestor(tx, de.Ino, newdir); err != nil {
				return err
			} else if anc {
				return syscall.EINVAL
			}
		}
		tde, tkey, exists, err := lookupEntry(tx, newdir, newname)
		if err != nil {
			return err
		}
		if exists && tde.Ino == de.Ino {
			return nil // same file: nothing to do
		}
		if exists && flags&RenameNoReplace != 0 {
			return syscall.EEXIST
		}
		if exists && format.IsSubvolRoot(tde.Ino) {
			return syscall.EPERM // DeleteSubvol deletes a subvolume
		}
		probe := []format.Key{format.DirIndexKey(olddir, de.Index), format.DirIndexKey(newdir, ndin.NextIndex)}
		if exists {
			probe = append(probe, format.DirIndexKey(newdir, tde.Index))
		}
		if err := probeDir(tx, probe...); err != nil {
			return err
		}
		rn.touched = append(rn.touched, olddir, newdir, de.Ino)
		if exists {
			tin, err := mustInode(tx, tde.Ino)
			if err != nil {
				return err
			}
			switch {
			case isDir(in) && !isDir(tin):
				return syscall.ENOTDIR
			case !isDir(in) && isDir(tin):
				return syscall.EISDIR
			case isDir(tin):
				empty, err := dirEmpty(tx, tde.Ino)
				if err != nil {
					return err
				}
				if !empty {
					return syscall.ENOTEMPTY
				}
			}
			rn.touched = append(rn.touched, tde.Ino)
			if err := f.dropName(tx, newdir, ndin, tkey, tde, tin); err != nil {
				return err
			}
		}
		now := ts(time.Now())
		if err := removeEntry(tx, olddir, okey, de); err != nil {
			return err
		}
		if err := addEntry(tx, newdir, ndin, newname, de.Ino, in.Mode); err != nil {
			return err
		}
		if isDir(in) && newdir != olddir {
			odin.Nlink--
			ndin.Nlink++
			in.Parent = newdir
		}
		in.Ctime = now
		odin.Mtime, odin.Ctime, ndin.Mtime, ndin.Ctime = now, now, now, now
		if err := putInode(tx, de.Ino, in); err != nil {
			return err
		}
		if err := putInode(tx, olddir, odin); err != nil {
			return err
		}
		if newdir != olddir {
			return putInode(tx, newdir, ndin)
		}
		return nil
	})
}

// renaming is what a rename and an exchange read first: the two parents
// (one inode when they are the same) and the source's entry and inode;
// touched collects the inodes the change marks full.
type renaming struct {
	odin, ndin *format.InodeItem
	de         format.DirEntry
	okey       format.Key
	in         *format.InodeItem
	touched    []uint64
}

// renameTx runs fn in a transaction after reading what both renames need
// (ENOTDIR unless both parents are directories, ENOENT without the
// source); when fn succeeds, the inodes it touched are marked full, so an
// fsync of any of them commits the change (the fsync log never carries a
// rename).
func (f *FS) renameTx(olddir uint64, oldname string, newdir uint64, fn func(tx *engine.Tx, rn *renaming) error) error {
	var rn renaming
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		var err error
		if rn.odin, err = mustInode(tx, olddir); err != nil {
			return err
		}
		rn.ndin = rn.odin
		if newdir != olddir {
			if rn.ndin, err = mustInode(tx, newdir); err != nil {
				return err
			}
		}
		if !isDir(rn.odin) || !isDir(rn.ndin) {
			return syscall.ENOTDIR
		}
		if crossSubvol(olddir, newdir) {
			return syscall.EXDEV
		}
		if rn.de, rn.okey, rn.in, err = mustEntry(tx, olddir, oldname); err != nil {
			return err
		}
		gen = tx.Gen()
		return fn(tx, &rn)
	})
	if err == nil {
		for _, ino := range rn.touched {
			f.markFull(ino, gen)
		}
	}
	return errno(f.dirDamage(err))
}

// Exchange (renameat2 RENAME_EXCHANGE).
//
// Both names must exist; each keeps its directory entry items (so its
// readdir position) with the other's inode number and type in them. A
// directory moving to the other parent gets that parent in its inode
// item (so ".." follows) and moves one link count from its old parent
// to its new one; exchanging a directory with one of its own ancestors
// (which would detach the subtree) is EINVAL, as in Linux. Everything
// changes in one transaction, and all four inodes are marked full: an
// fsync of any of them commits that transaction, so a crash leaves both
// names swapped or neither (the fsync log never carries half of it).

func (f *FS) exchange(olddir uint64, oldname string, newdir uint64, newname string) error {
	return f.renameTx(olddir, oldname, newdir, func(tx *engine.Tx, rn *renaming) error {
		odin, ndin, de, okey, in := rn.odin, rn.ndin, rn.de, rn.okey, rn.in
		tde, tkey, tin, err := mustEntry(tx, newdir, newname)
		if err != nil {
			return err
		}
		if de.Ino == tde.Ino {
			return nil // two names of one file: nothing changes
		}
		if newdir != olddir {
			// Neither may land inside itself.
			for _, c := range []struct {
				ino    uint64
				in     *format.InodeItem
				parent uint64
			}{{de.Ino, in, newdir}, {tde.Ino, tin, olddir}} {
				if !isDir(c.in) {
					continue
				}
				if anc, err := isAncestor(tx, c.ino, c.parent); err != nil {
					return err
				} else if anc {
					return syscall.EINVAL
				}
			}
		}
		if err := probeDir(tx, format.DirIndexKey(olddir, de.Index), format.DirIndexKey(newdir, tde.Index)); err != nil {
			return err
		}
		rn.touched = append(rn.touched, olddir, newdir, de.Ino, tde.Ino)
		now := ts(time.Now())
		if err := replaceEntry(tx, olddir, okey, de, tde.Ino, tin.Mode); err != nil {
			return err
		}
		if err := replaceEntry(tx, newdir, tkey, tde, de.Ino, in.Mode); err != nil {
			return err
		}
		if newdir != olddir {
			if isDir(in) {
				in.Parent = newdir
				odin.Nlink--
				ndin.Nlink++
			}
			if isDir(tin) {
				tin.Parent = olddir
				ndin.Nlink--
				odin.Nlink++
			}
		}
		in.Ctime, tin.Ctime = now, now
		odin.Mtime, odin.Ctime, ndin.Mtime, ndin.Ctime = now, now, now, now
		for _, p := range []struct {
			ino uint64
			in  *format.InodeItem
		}{{de.Ino, in}, {tde.Ino, tin}, {olddir, odin}, {newdir, ndin}} {
			if p.ino == newdir && newdir == olddir {
				continue
			}
			if err := putInode(tx, p.ino, p.in); err != nil {
				return err
			}
		}
		return nil
	})
}

// replaceEntry makes the entry de of dir, found at key, name ino (of
// mode) instead, under the same name and index.
func replaceEntry(tx *engine.Tx, dir uint64, key format.Key, de format.DirEntry, ino uint64, mode uint32) error {
	tr, err := tx.Tree(format.TreeDir)
	if err != nil {
		return err
	}
	nde := de
	nde.Ino, nde.Type = ino, fileType(mode)
	v := nde.Encode()
	for _, k := range []format.Key{key, format.DirIndexKey(dir, de.Index)} {
		if err := tr.Put(k, v); err != nil {
			return err
		}
	}
	// Followers (the directory rebuild, the link-count repair) see the
	// old entry go and the new one come.
	tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpDelete, Dir: dir, Entry: de})
	tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpInsert, Dir: dir, Entry: nde})
	return nil
}

// ReadDir lists dir from offset (0 = start; "." and ".." come first, then
// entries in creation order) and calls fn until it returns false. fn runs
// inside a view (the writer lock held shared): it must not call the FS,
// or a writer waiting meanwhile deadlocks both; collect, then act.
func (f *FS) ReadDir(dir uint64, offset uint64, fn func(DirEntry) bool) error {
	if err := f.prepare(dir); err != nil {
		return errno(err)
	}
	err := f.e.View(func(tx *engine.Tx) error {
		din, err := mustInode(tx, dir)
		if err != nil {
			return err
		}
		if !isDir(din) {
			return syscall.ENOTDIR
		}
		if offset == 0 && !fn(DirEntry{Name: ".", Ino: dir, Mode: syscall.S_IFDIR, Next: 1}) {
			return nil
		}
		if offset <= 1 && !fn(DirEntry{Name: "..", Ino: din.Parent, Mode: syscall.S_IFDIR, Next: 2}) {
			return nil
		}
		tr, _ := tx.ReadTree(format.TreeDir)
		var derr error
		err = tr.Ascend(format.DirIndexKey(dir, max(offset, 2)), func(k format.Key, v []byte) bool {
			if k.Obj != dir || k.Type != format.TypeDirIndex {
				return false
			}
			de, err := format.DecodeDirEntry(v)
			if err != nil {
				derr = err
				return false
			}
			return fn(DirEntry{Name: de.Name, Ino: de.Ino, Mode: uint32(de.Type) << 12, Next: k.Off + 1})
		})
		if err == nil {
			err = derr
		}
		return err
	})
	return errno(f.dirDamage(err))
}

// StatFS describes the filesystem's space.
type StatFS struct {
	BlockSize   uint32
	Blocks      uint64
	BlocksFree  uint64
	Files       uint64
	FilesFree   uint64
	NameMax     uint32
	FSID        format.FSID
	Generation  format.Gen
	BlocksAvail uint64
}

// StatFS reports space and inode counts.
func (f *FS) StatFS() StatFS {
	st := f.e.Stats()
	// Buffered blocks (delalloc.go) will each take a block.
	free := st.Allocatable - min(st.Allocatable, f.DelayedBlocks())
	return StatFS{BlockSize: format.BlockSize, Blocks: f.e.TotalBlocks(), BlocksFree: free, BlocksAvail: free,
		Files: 1 << 32, FilesFree: 1<<32 - 1, NameMax: format.MaxNameLen, FSID: f.e.FSID(), Generation: st.Gen}
}
