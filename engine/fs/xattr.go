package fs

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Extended attributes: one item per attribute in the xattr tree
// (format/xattr.go), keyed by inode, name hash and a seq for names that
// share a hash. The tree is created by the first attribute set on an
// image. Every change is one transaction that also sets the inode's ctime,
// and marks the inode for a full commit at its next fsync (the fsync log
// carries file data, not attributes): an attribute set or removed before a
// file's fsync is durable when the fsync returns. The last unlink (and the
// deleted_inodes pass) drops the inode's attributes with the inode
// (freeInode). Permission checks are the kernel's (the mount's
// default_permissions: a user. attribute needs write permission on the
// file, trusted. needs CAP_SYS_ADMIN); POSIX ACLs are stored and returned
// as their system.posix_acl_* values but not enforced (see the fuse
// package).

// Flags of SetXattr, as setxattr(2)'s.
const (
	XattrCreate  = 0x1 // fail with EEXIST if the attribute exists
	XattrReplace = 0x2 // fail with ENODATA if it does not
)

// checkXattrName validates an attribute name as the kernel and ext4 do:
// ERANGE for an empty or overlong name, EOPNOTSUPP for a namespace the
// filesystem does not store.
func checkXattrName(name string) error {
	switch {
	case name == "" || len(name) > format.MaxXattrName:
		return syscall.ERANGE
	case !format.XattrNamespaceOK(name):
		return syscall.EOPNOTSUPP
	}
	return nil
}

// findXattr looks name up among ino's attributes in tr (nil: the image
// has no xattr tree yet): its key and value when found, else the seq a
// new item for it takes.
func findXattr(tr *eb.Tree, ino uint64, name string) (key format.Key, val []byte, found bool, err error) {
	h := format.XattrHash(name)
	key = format.XattrKey(ino, h, 0)
	if tr == nil {
		return key, nil, false, nil
	}
	var derr error
	err = tr.Ascend(format.XattrKey(ino, h, 0), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeXattr || k.Off != h {
			return false
		}
		x, err := format.DecodeXattrItem(v)
		if err != nil {
			derr = err
			return false
		}
		if x.Name == name {
			key, val, found = k, append([]byte(nil), x.Value...), true
			if x.Large() {
				val, derr = xattrChunks(tr, k, x, val)
			}
			return false
		}
		if k.Aux == key.Aux {
			key.Aux++ // the first seq not in use
		}
		return true
	})
	if err == nil {
		err = derr
	}
	return key, val, found, err
}

// xattrChunks appends a large value's chunks to val (its head's part): an
// error if one is missing or of the wrong length.
func xattrChunks(tr *eb.Tree, head format.Key, x format.XattrItem, val []byte) ([]byte, error) {
	for i := 1; i <= format.XattrChunks(x.Name, x.Total); i++ {
		_, n := format.XattrChunkSpan(x.Name, x.Total, i)
		var got []byte
		ok, err := tr.Lookup(format.XattrChunkKey(head, i), func(v []byte) { got = append(got, v...) })
		if err != nil {
			return nil, err
		}
		if !ok || len(got) != n {
			return nil, fmt.Errorf("inode %d attribute %q: chunk %d missing or of %d bytes, want %d: %w", head.Obj, x.Name, i, len(got), n, format.ErrCorrupt)
		}
		val = append(val, got...)
	}
	return val, nil
}

// putXattr stores attribute name = value under key, its chunks too when
// it is large; old is the value it replaces (nil if none), whose chunks
// past the new value's go.
func putXattr(tr *eb.Tree, key format.Key, name string, value, old []byte) error {
	head, chunks := format.SplitXattr(name, value)
	if err := tr.Put(key, head.Encode()); err != nil {
		return err
	}
	for i, c := range chunks {
		if err := tr.Put(format.XattrChunkKey(key, i+1), c); err != nil {
			return err
		}
	}
	return delXattrChunks(tr, key, name, len(chunks)+1, old)
}

// delXattrChunks deletes the chunks from index from on of the value old
// of attribute name at key.
func delXattrChunks(tr *eb.Tree, key format.Key, name string, from int, old []byte) error {
	for i := from; i <= format.XattrChunks(name, len(old)); i++ {
		if _, err := tr.Delete(format.XattrChunkKey(key, i)); err != nil {
			return err
		}
	}
	return nil
}

// SetXattr sets ino's attribute name to value; flags is 0, XattrCreate or
// XattrReplace.
func (f *FS) SetXattr(ino uint64, name string, value []byte, flags uint32) error {
	if err := checkXattrName(name); err != nil {
		return err
	}
	if err := f.writable(ino); err != nil {
		return err
	}
	if err := f.prepare(ino); err != nil {
		return errno(err)
	}
	switch {
	case flags&^(XattrCreate|XattrReplace) != 0 || flags == XattrCreate|XattrReplace:
		return syscall.EINVAL
	case len(value) > format.XattrSizeMax:
		return syscall.E2BIG
	case len(value) > format.MaxXattrValue(name) && !f.e.HasFeatures(0, format.IncompatLargeXattrs):
		return syscall.ENOSPC // does not fit in one item, and cannot be split (format 1.6)
	}
	if !f.e.HasFeatures(format.RoCompatXattr, 0) {
		return syscall.EOPNOTSUPP // format 1.4
	}
	isACL := name == aclAccess || name == "system.posix_acl_default"
	if isACL {
		if err := aclEntries(value); err != nil {
			return err
		}
	}
	return f.updateXattrs(ino, name, func(tx *engine.Tx, in *format.InodeItem, key format.Key, old []byte, found bool) error {
		switch {
		case found && flags&XattrCreate != 0:
			return syscall.EEXIST
		case !found && flags&XattrReplace != 0:
			return syscall.ENODATA
		}
		store := true
		if name == aclAccess {
			perm, minimal := aclMode(value)
			in.Mode = in.Mode&^0o777 | perm
			store = !minimal
		}
		if !store && !found {
			return nil
		}
		tr, err := tx.Tree(format.TreeXattr)
		if err != nil {
			return err
		}
		if store {
			return putXattr(tr, key, name, value, old)
		}
		if _, err = tr.Delete(key); err != nil {
			return err
		}
		return delXattrChunks(tr, key, name, 1, old)
	})
}

// updateXattrs runs fn in a transaction with ino's inode and the key of
// its attribute name (found says whether it exists); when fn succeeds,
// the inode's ctime is set and the inode marked for a full commit at its
// next fsync (the log does not carry attributes).
func (f *FS) updateXattrs(ino uint64, name string, fn func(tx *engine.Tx, in *format.InodeItem, key format.Key, old []byte, found bool) error) error {
	f.writes.Add(1)
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		tr, _ := tx.ReadTree(format.TreeXattr)
		key, old, found, err := findXattr(tr, ino, name)
		if err != nil {
			return err
		}
		if err := fn(tx, in, key, old, found); err != nil {
			return err
		}
		in.Ctime = ts(time.Now())
		gen = tx.Gen()
		return putInode(tx, ino, in)
	})
	if err == nil {
		f.markFull(ino, gen)
	}
	return errno(f.dirDamage(err))
}

// GetXattr returns ino's attribute name: ENODATA when it has none.
func (f *FS) GetXattr(ino uint64, name string) ([]byte, error) {
	if err := checkXattrName(name); err != nil {
		if errors.Is(err, syscall.ERANGE) {
			return nil, syscall.ENODATA
		}
		return nil, err
	}
	if err := f.prepare(ino); err != nil {
		return nil, errno(err)
	}
	var val []byte
	err := f.e.View(func(tx *engine.Tx) error {
		if _, err := mustInode(tx, ino); err != nil {
			return err
		}
		tr, _ := tx.ReadTree(format.TreeXattr)
		_, v, found, err := findXattr(tr, ino, name)
		if err != nil {
			return err
		}
		if !found {
			return syscall.ENODATA
		}
		val = v
		if name == aclAccess {
			in, err := mustInode(tx, ino)
			if err != nil {
				return err
			}
			val = aclWithMode(v, in.Mode)
		}
		return nil
	})
	return val, errno(f.dirDamage(err))
}

// ListXattr returns the names of ino's attributes, in key order.
func (f *FS) ListXattr(ino uint64) ([]string, error) {
	if err := f.prepare(ino); err != nil {
		return nil, errno(err)
	}
	var names []string
	err := f.e.View(func(tx *engine.Tx) error {
		if _, err := mustInode(tx, ino); err != nil {
			return err
		}
		tr, ok := tx.ReadTree(format.TreeXattr)
		if !ok {
			return nil
		}
		var derr error
		err := tr.Ascend(format.XattrKey(ino, 0, 0), func(k format.Key, v []byte) bool {
			if k.Obj != ino || k.Type != format.TypeXattr {
				return false
			}
			x, err := format.DecodeXattrItem(v)
			if err != nil {
				derr = err
				return false
			}
			names = append(names, x.Name)
			return true
		})
		if err == nil {
			err = derr
		}
		return err
	})
	return names, errno(f.dirDamage(err))
}

// RemoveXattr removes ino's attribute name: ENODATA when it has none.
func (f *FS) RemoveXattr(ino uint64, name string) error {
	if err := checkXattrName(name); err != nil {
		if errors.Is(err, syscall.ERANGE) {
			return syscall.ENODATA
		}
		return err
	}
	if err := f.writable(ino); err != nil {
		return err
	}
	if err := f.prepare(ino); err != nil {
		return errno(err)
	}
	return f.updateXattrs(ino, name, func(tx *engine.Tx, _ *format.InodeItem, key format.Key, old []byte, found bool) error {
		if !found {
			return syscall.ENODATA
		}
		tr, err := tx.Tree(format.TreeXattr)
		if err != nil {
			return err
		}
		if _, err = tr.Delete(key); err != nil {
			return err
		}
		return delXattrChunks(tr, key, name, 1, old)
	})
}

// dropXattrs deletes inode ino's attributes (the inode is being freed).
// Damage that hides some of them does not stop the free: what it hides
// is left behind, an orphan the check reports and the xattr repair drops.
func dropXattrs(tx *engine.Tx, ino uint64) error {
	rt, ok := tx.ReadTree(format.TreeXattr)
	if !ok {
		return nil
	}
	var keys []format.Key
	err := rt.Ascend(format.XattrKey(ino, 0, 0), func(k format.Key, _ []byte) bool {
		if k.Obj != ino || (k.Type != format.TypeXattr && k.Type != format.TypeXattrChunk) {
			return false
		}
		keys = append(keys, k)
		return true
	})
	if err != nil && !errors.Is(err, format.ErrCorrupt) {
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	tr, err := tx.Tree(format.TreeXattr)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := tr.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// POSIX ACLs. A set of system.posix_acl_access keeps the mode in step,
// as the kernel's posix_acl_update_mode does for ext4 (through the mount
// the kernel, which enforces the ACLs, has done the same before it sends
// the set; through the Go API this is the only place it happens): the owner, group (the mask when there is one) and other
// entries are the mode's permission bits, and an ACL that says no more
// than the mode (no named user or group entry) is not stored, only the
// mode changed (cp -a sets one on every file it copies). A read returns
// the stored ACL with those three entries taken from the mode, so a chmod
// since is seen as posix_acl_chmod would have left it.

const (
	aclAccess   = "system.posix_acl_access"
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

// aclEntries validates an ACL attribute value: the version, then 8-byte
// entries (tag, permissions, id).
func aclEntries(v []byte) error {
	if len(v) < 4 || (len(v)-4)%8 != 0 || le32(v) != aclVersion {
		return syscall.EINVAL
	}
	for i := 4; i < len(v); i += 8 {
		switch le16(v[i:]) {
		case aclUserObj, aclUser, aclGroupObj, aclGroup, aclMask, aclOther:
		default:
			return syscall.EINVAL
		}
		if le16(v[i+2:])&^7 != 0 {
			return syscall.EINVAL
		}
	}
	return nil
}

// aclMode returns the permission bits an access ACL gives, and whether the
// ACL says no more than them.
func aclMode(v []byte) (perm uint32, minimal bool) {
	var user, group, mask, other uint32
	hasMask := false
	minimal = true
	for i := 4; i+8 <= len(v); i += 8 {
		p := uint32(le16(v[i+2:]) & 7)
		switch le16(v[i:]) {
		case aclUserObj:
			user = p
		case aclGroupObj:
			group = p
		case aclMask:
			mask, hasMask = p, true
		case aclOther:
			other = p
		default:
			minimal = false
		}
	}
	if hasMask {
		group = mask
		minimal = false
	}
	return user<<6 | group<<3 | other, minimal
}

// aclWithMode returns a copy of the ACL v with its owner, group-or-mask
// and other entries set from mode.
func aclWithMode(v []byte, mode uint32) []byte {
	out := append([]byte(nil), v...)
	hasMask := false
	for i := 4; i+8 <= len(out); i += 8 {
		hasMask = hasMask || le16(out[i:]) == aclMask
	}
	for i := 4; i+8 <= len(out); i += 8 {
		var p uint32
		switch tag := le16(out[i:]); {
		case tag == aclUserObj:
			p = mode >> 6 & 7
		case tag == aclMask || tag == aclGroupObj && !hasMask:
			p = mode >> 3 & 7
		case tag == aclOther:
			p = mode & 7
		default:
			continue
		}
		out[i+2], out[i+3] = byte(p), 0
	}
	return out
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
