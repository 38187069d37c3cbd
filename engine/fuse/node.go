package fuse

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// Nodes.
//
// go-fuse keeps a tree of Inodes, one per inode number the kernel knows
// (it merges lookups of the same number, so hard links are one kernel
// inode), and calls the node's methods. A node holds nothing but its inode
// number: every method asks the engine, which is the only place state
// lives, so a node can never disagree with the image.

// bridge is what every node shares.
type bridge struct {
	fsys        *fs.FS
	log         *slog.Logger
	attrTimeout time.Duration
	root        *node // the root directory (notify.go walks the tree from it)
	// lastWarn and suppressed rate-limit warnLimited.
	lastWarn   atomic.Int64
	suppressed atomic.Uint64
	// notes holds what noteRaw noted of the requests running
	// (killpriv.go).
	notes sync.Map
	// getxattrs counts GETXATTR requests (a test reads it: writes must
	// not bring one each).
	getxattrs atomic.Uint64
}

// errno turns an engine error into the errno the kernel gets, logging
// operational failures with their cause.
//
// An error answered to a write, fsync, fsyncdir or flush is logged
// whatever its errno: the kernel may report it again later, on another
// call and as another errno — a failed writeback WRITE (mmap, or the
// page cache's write-back) is recorded on the file and on the
// filesystem, and close(2) then fails with EIO, fsync(2) and syncfs(2)
// with the recorded error — so a program can meet an EIO whose only
// trace is this line.
func (b *bridge) errno(op string, ino uint64, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	en := fs.Errno(err)
	switch {
	case en == syscall.EIO:
		b.log.Error("fuse: "+op+" failed", "ino", ino, "err", err)
	case reportedLater[op]:
		b.warnLimited("fuse: "+op+" failed", "ino", ino, "errno", en.Error(), "err", err)
	}
	return en
}

// reportedLater are the operations whose errors the kernel may report
// again on later calls (see errno).
var reportedLater = map[string]bool{"write": true, "fsync": true, "fsyncdir": true, "flush": true}

// warnLimited logs a warning, at most one a second (the rest are
// counted into the next): a full disk fails every write.
func (b *bridge) warnLimited(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := b.lastWarn.Load()
	if now-last < int64(time.Second) || !b.lastWarn.CompareAndSwap(last, now) {
		b.suppressed.Add(1)
		return
	}
	if n := b.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	b.log.Warn(msg, args...)
}

type node struct {
	gofs.Inode
	b *bridge
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeReader         = (*node)(nil)
	_ gofs.NodeWriter         = (*node)(nil)
	_ gofs.NodeFsyncer        = (*node)(nil)
	_ gofs.NodeFlusher        = (*node)(nil)
	_ gofs.NodeReleaser       = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
)

func (n *node) ino() uint64 { return n.StableAttr().Ino }

// fillAttr converts engine attributes to FUSE ones.
// rootStandIn returns, when damage hides the root directory's inode item
// (EIO), attributes to serve the root with until the inode repair
// restores it: a directory of mode 0700 owned by root. The kernel cannot
// mount, nor the control socket be reached through the mountpoint,
// without them; what is below the root is served as far as it can be
// read.
func rootStandIn(a fs.Attr, err error) (fs.Attr, error) {
	if !errors.Is(err, syscall.EIO) {
		return a, err
	}
	return fs.Attr{Ino: fs.RootIno, Mode: syscall.S_IFDIR | 0o700, Nlink: 2}, nil
}

func fillAttr(a fs.Attr, out *gofuse.Attr) {
	out.Ino = a.Ino
	out.Size = a.Size
	out.Blocks = a.Blocks * (format.BlockSize / 512)
	out.Blksize = format.BlockSize
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid, out.Gid = a.UID, a.GID
	out.Rdev = uint32(a.Rdev)
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
}

// child returns the Inode for the entry a that a lookup or create found.
func (n *node) child(ctx context.Context, a fs.Attr, out *gofuse.EntryOut) *gofs.Inode {
	fillAttr(a, &out.Attr)
	return n.NewInode(ctx, &node{b: n.b}, gofs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: a.Ino, Gen: a.Generation})
}

// caller returns the credentials of the process making the request.
func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := gofuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// newInode describes an inode the caller creates in directory n: it
// belongs to the caller, and inherits the group (and, for a directory, the
// set-group-ID bit) of a set-group-ID directory.
func (n *node) newInode(ctx context.Context, mode uint32) (fs.NewInode, syscall.Errno) {
	uid, gid := caller(ctx)
	ni := fs.NewInode{Mode: mode, UID: uid, GID: gid}
	if note := n.b.note(ctx); note.hasUmask {
		ni.Umask = &note.umask // applied by the filesystem (FUSE_DONT_MASK)
	}
	da, err := n.b.fsys.GetAttr(n.ino())
	if err != nil {
		return ni, n.b.errno("getattr", n.ino(), err)
	}
	if da.Mode&syscall.S_ISGID != 0 {
		ni.GID = da.GID
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			ni.Mode |= syscall.S_ISGID
		}
	}
	return ni, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	a, err := n.b.fsys.Lookup(n.ino(), name)
	if err != nil {
		return nil, n.b.errno("lookup", n.ino(), err)
	}
	return n.child(ctx, a, out), 0
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	a, err := n.b.fsys.GetAttr(n.ino())
	if n.ino() == fs.RootIno {
		a, err = rootStandIn(a, err)
	}
	if err != nil {
		return n.b.errno("getattr", n.ino(), err)
	}
	fillAttr(a, &out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	var s fs.SetAttrIn
	if m, ok := in.GetMode(); ok {
		s.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		s.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		s.GID = &g
	}
	if sz, ok := in.GetSize(); ok {
		s.Size = &sz
	}
	if t, ok := in.GetATime(); ok {
		s.Atime = &t
	}
	if t, ok := in.GetMTime(); ok {
		s.Mtime = &t
	}
	s.Caller = n.b.caller(ctx, in.Valid&gofuse.FATTR_KILL_SUIDGID != 0) // killpriv.go
	a, err := n.b.fsys.SetAttr(n.ino(), s)
	if err != nil {
		return n.b.errno("setattr", n.ino(), err)
	}
	fillAttr(a, &out.Attr)
	out.SetTimeout(n.b.attrTimeout) // go-fuse sets it for getattr only
	return 0
}

// --- files ---

// fileHandle is an open file: it holds one engine open count.
type fileHandle struct{ ino uint64 }

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if err := n.b.fsys.Open(n.ino()); err != nil {
		return nil, 0, n.b.errno("open", n.ino(), err)
	}
	return &fileHandle{ino: n.ino()}, 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *gofuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	ni, en := n.newInode(ctx, mode)
	if en != 0 {
		return nil, nil, 0, en
	}
	// The kernel sends CREATE only for a name it just found missing, with
	// the directory locked, so EEXIST cannot reach an open without O_EXCL.
	a, err := n.b.fsys.Create(n.ino(), name, ni)
	if err != nil {
		return nil, nil, 0, n.b.errno("create", n.ino(), err)
	}
	if err := n.b.fsys.Open(a.Ino); err != nil {
		return nil, nil, 0, n.b.errno("open", a.Ino, err)
	}
	return n.child(ctx, a, out), &fileHandle{ino: a.Ino}, 0, 0
}

func (n *node) Release(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h, ok := f.(*fileHandle)
	if !ok {
		return 0
	}
	return n.b.errno("release", h.ino, n.b.fsys.Release(h.ino))
}

func (n *node) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	got, err := n.b.fsys.Read(n.ino(), dest, off)
	if err != nil {
		return nil, n.b.errno("read", n.ino(), err)
	}
	return gofuse.ReadResultData(dest[:got]), 0
}

func (n *node) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if !n.b.haveSpace(spanBlocks(off, len(data))) {
		return 0, n.b.errno("write", n.ino(), syscall.ENOSPC) // see space.go
	}
	wrote, err := n.b.fsys.WriteAs(n.ino(), data, off, n.b.caller(ctx, n.b.note(ctx).kill))
	if err != nil {
		return 0, n.b.errno("write", n.ino(), err)
	}
	return uint32(wrote), 0
}

func (n *node) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	return n.b.errno("fsync", n.ino(), n.b.fsys.Fsync(n.ino()))
}

// Flush (at every close) has nothing to do: writes reach the engine as
// they are made.
func (n *node) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno { return 0 }

// --- names ---

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ni, en := n.newInode(ctx, mode|syscall.S_IFDIR)
	if en != 0 {
		return nil, en
	}
	a, err := n.b.fsys.Mkdir(n.ino(), name, ni)
	if err != nil {
		return nil, n.b.errno("mkdir", n.ino(), err)
	}
	return n.child(ctx, a, out), 0
}

func (n *node) Mknod(ctx context.Context, name string, mode, dev uint32, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ni, en := n.newInode(ctx, mode)
	if en != 0 {
		return nil, en
	}
	ni.Rdev = uint64(dev)
	a, err := n.b.fsys.Mknod(n.ino(), name, ni)
	if err != nil {
		return nil, n.b.errno("mknod", n.ino(), err)
	}
	return n.child(ctx, a, out), 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ni, en := n.newInode(ctx, syscall.S_IFLNK|0o777)
	if en != 0 {
		return nil, en
	}
	a, err := n.b.fsys.Symlink(n.ino(), name, target, ni)
	if err != nil {
		return nil, n.b.errno("symlink", n.ino(), err)
	}
	return n.child(ctx, a, out), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := n.b.fsys.Readlink(n.ino())
	if err != nil {
		return nil, n.b.errno("readlink", n.ino(), err)
	}
	return []byte(t), 0
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	a, err := n.b.fsys.Link(t.ino(), n.ino(), name)
	if err != nil {
		return nil, n.b.errno("link", t.ino(), err)
	}
	return n.child(ctx, a, out), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.b.errno("unlink", n.ino(), n.b.fsys.Unlink(n.ino(), name))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.b.errno("rmdir", n.ino(), n.b.fsys.Rmdir(n.ino(), name))
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if flags&^(fs.RenameNoReplace|fs.RenameExchange) != 0 {
		return syscall.EINVAL // RENAME_WHITEOUT
	}
	return n.b.errno("rename", n.ino(), n.b.fsys.Rename(n.ino(), name, np.ino(), newName, flags))
}

func (n *node) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	st := n.b.fsys.StatFS()
	out.Blocks = st.Blocks
	out.Bfree, out.Bavail = n.b.freeBlocks()
	out.Files = st.Files
	out.Ffree = st.FilesFree
	out.Bsize = st.BlockSize
	out.Frsize = st.BlockSize
	out.NameLen = st.NameMax
	return 0
}
