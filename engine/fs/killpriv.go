package fs

import (
	"syscall"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// What a write or truncate takes away (the kernel's file_remove_privs,
// done here because the mount asks the kernel to leave it to the server:
// FUSE_HANDLE_KILLPRIV_V2, which saves the kernel a getxattr of
// security.capability before every write).
//
// A write drops the file's security.capability attribute whatever the
// writer may do, as the kernel does. A write or truncate by a caller
// without CAP_FSETID (the kernel says so: Caller.Kill) also clears the
// set-user-ID bit, and the set-group-ID bit when group execute is set or
// the caller is not in the file's group (the kernel's
// setattr_should_drop_sgid; only the caller's own group is known here, so
// a caller who is in it through a supplementary group loses the bit where
// the kernel would keep it: the safe side); a chown of anything but a
// directory does too, whoever makes it (root keeps a set-group-ID bit
// without group execute, as with the kernel's).

// Caller is who makes a change, as far as what it takes away goes.
type Caller struct {
	// Kill: the change clears set-ID bits (the kernel's
	// FUSE_WRITE_KILL_SUIDGID or FATTR_KILL_SUIDGID).
	Kill     bool
	UID, GID uint32 // the caller's fsuid and fsgid
}

// dropsSGID reports whether c's change clears in's set-group-ID bit.
func (c Caller) dropsSGID(in *format.InodeItem) bool {
	if in.Mode&syscall.S_ISGID == 0 || !c.Kill {
		return false
	}
	return in.Mode&syscall.S_IXGRP != 0 || c.UID != 0 && c.GID != in.GID
}

// clearSetID clears in's set-ID bits as c's change does.
func (c Caller) clearSetID(in *format.InodeItem) {
	if c.dropsSGID(in) {
		in.Mode &^= syscall.S_ISGID
	}
	if c.Kill {
		in.Mode &^= syscall.S_ISUID
	}
}

// capabilityXattr is the attribute a write drops.
const capabilityXattr = "security.capability"

// killPrivs drops from in (the item of regular file ino, put back by the
// caller) and from ino's attributes what a change by a caller takes away.
// It reports whether it dropped the capability attribute, which the fsync
// log does not carry (the caller marks the inode full).
func killPrivs(tx *engine.Tx, ino uint64, in *format.InodeItem, c Caller) (dropped bool, err error) {
	c.clearSetID(in)
	rt, ok := tx.ReadTree(format.TreeXattr)
	if !ok {
		return false, nil
	}
	key, old, found, err := findXattr(rt, ino, capabilityXattr)
	if err != nil || !found {
		return false, err
	}
	tr, err := tx.Tree(format.TreeXattr)
	if err != nil {
		return false, err
	}
	if _, err := tr.Delete(key); err != nil {
		return false, err
	}
	return true, delXattrChunks(tr, key, capabilityXattr, 1, old)
}

// privsToKill reports whether a change by a caller would take anything
// away from in (ino): the cheap test a write makes before killPrivs.
func privsToKill(tx *engine.Tx, ino uint64, in *format.InodeItem, c Caller) (bool, error) {
	if c.Kill && in.Mode&syscall.S_ISUID != 0 || c.dropsSGID(in) {
		return true, nil
	}
	rt, ok := tx.ReadTree(format.TreeXattr)
	if !ok {
		return false, nil
	}
	_, _, found, err := findXattr(rt, ino, capabilityXattr)
	return found, err
}
