package fs

import (
	"syscall"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// A new inode's mode and ACLs (POSIX 1003.1e; the kernel's
// posix_acl_create, which the mount leaves to the filesystem: it asks the
// kernel for ACL support, FUSE_POSIX_ACL, and for the caller's umask
// unapplied, FUSE_DONT_MASK).
//
// When the parent directory has a default ACL, the new inode's access ACL
// is that ACL with its owner, other and mask (or, without a mask, group)
// entries cut to the mode asked for, and the mode's permission bits cut to
// them in turn; the umask is not applied. An access ACL that then says no
// more than the mode is not stored. A new directory also gets the default
// ACL itself. Without a default ACL the umask is applied (NewInode.Umask;
// the Go API's callers give none).

const aclDefault = "system.posix_acl_default"

// createMasq cuts the ACL v (a valid default ACL) and mode to each other
// as posix_acl_create_masq does, returning the new access ACL, the new
// mode and whether the ACL says more than the mode.
func createMasq(v []byte, mode uint32) (acl []byte, newMode uint32, extended bool) {
	acl = append([]byte(nil), v...)
	perm := func(i int) uint32 { return uint32(le16(acl[i+2:]) & 7) }
	set := func(i int, p uint32) { acl[i+2], acl[i+3] = byte(p), 0 }
	group, mask := -1, -1
	for i := 4; i+8 <= len(acl); i += 8 {
		switch le16(acl[i:]) {
		case aclUserObj:
			p := perm(i) & (mode >> 6 & 7)
			set(i, p)
			mode &= p<<6 | ^uint32(0o700)
		case aclUser, aclGroup:
			extended = true
		case aclGroupObj:
			group = i
		case aclOther:
			p := perm(i) & (mode & 7)
			set(i, p)
			mode &= p | ^uint32(0o7)
		case aclMask:
			mask = i
			extended = true
		}
	}
	if g := cmpOr(mask, group); g >= 0 {
		p := perm(g) & (mode >> 3 & 7)
		set(g, p)
		mode &= p<<3 | ^uint32(0o70)
	}
	return acl, mode, extended
}

func cmpOr(a, b int) int {
	if a >= 0 {
		return a
	}
	return b
}

// inheritACL applies dir's default ACL (or the umask) to ni, and returns
// the attributes the new inode gets.
func inheritACL(tx *engine.Tx, dir uint64, ni *NewInode) (access, def []byte, err error) {
	tr, ok := tx.ReadTree(format.TreeXattr)
	var dacl []byte
	if ok && ni.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		_, val, found, err := findXattr(tr, dir, aclDefault)
		if err != nil {
			return nil, nil, err
		}
		if found {
			dacl = val
			if aclEntries(dacl) != nil {
				dacl = nil // not an ACL the set would have taken: ignored
			}
		}
	}
	if dacl == nil {
		if ni.Umask != nil && ni.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			ni.Mode &^= *ni.Umask & 0o777
		}
		return nil, nil, nil
	}
	acl, mode, extended := createMasq(dacl, ni.Mode&0o777)
	ni.Mode = ni.Mode&^0o777 | mode
	if extended {
		access = acl
	}
	if ni.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		def = dacl
	}
	return access, def, nil
}

// probeNewACLs reads the xattr tree's paths to where new inode ino's ACLs
// go, so that damage there fails the create before it changes anything.
func probeNewACLs(tx *engine.Tx, ino uint64) error {
	tr, ok := tx.ReadTree(format.TreeXattr)
	if !ok {
		return nil
	}
	for _, name := range []string{aclAccess, aclDefault} {
		if _, _, _, err := findXattr(tr, ino, name); err != nil {
			return err
		}
	}
	return nil
}

// putNewACLs stores a new inode's inherited ACLs.
func putNewACLs(tx *engine.Tx, ino uint64, access, def []byte) error {
	if access == nil && def == nil {
		return nil
	}
	tr, err := tx.Tree(format.TreeXattr)
	if err != nil {
		return err
	}
	for _, a := range []struct {
		name  string
		value []byte
	}{{aclAccess, access}, {aclDefault, def}} {
		if a.value == nil {
			continue
		}
		key, _, _, err := findXattr(tr, ino, a.name)
		if err != nil {
			return err
		}
		if err := putXattr(tr, key, a.name, a.value, nil); err != nil {
			return err
		}
	}
	return nil
}
