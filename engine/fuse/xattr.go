package fuse

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// Extended attributes: the filesystem's (engine/fs/xattr.go), with the
// buffer protocol of getxattr(2) and listxattr(2): a zero-size buffer
// asks for the size needed, a buffer too small gets ERANGE. The kernel
// checks permissions first (default_permissions: user. needs write
// access to change, trusted. needs CAP_SYS_ADMIN). POSIX ACLs
// (system.posix_acl_access, system.posix_acl_default) are stored; the
// mount asks the kernel for ACL support (FUSE_POSIX_ACL), so the kernel
// reads them (cached) and enforces them in its permission checks, and the
// filesystem applies a directory's default ACL to what is made in it
// (engine/fs/aclcreate.go).

var (
	_ gofs.NodeGetxattrer    = (*node)(nil)
	_ gofs.NodeSetxattrer    = (*node)(nil)
	_ gofs.NodeListxattrer   = (*node)(nil)
	_ gofs.NodeRemovexattrer = (*node)(nil)
)

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	n.b.getxattrs.Add(1)
	v, err := n.b.fsys.GetXattr(n.ino(), attr)
	if err != nil {
		return 0, n.b.errno("getxattr", n.ino(), err)
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return n.b.errno("setxattr", n.ino(), n.b.fsys.SetXattr(n.ino(), attr, data, flags))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return n.b.errno("removexattr", n.ino(), n.b.fsys.RemoveXattr(n.ino(), attr))
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := n.b.fsys.ListXattr(n.ino())
	if err != nil {
		return 0, n.b.errno("listxattr", n.ino(), err)
	}
	size := 0
	for _, name := range names {
		size += len(name) + 1
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, name := range names {
		off += copy(dest[off:], name)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}
