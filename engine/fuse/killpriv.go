package fuse

import (
	"context"
	"sync"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/scrubd/scrubd/engine/fs"
)

// Privileges a write takes away (engine/fs/killpriv.go).
//
// Without FUSE_HANDLE_KILLPRIV_V2 the kernel asks for security.capability
// (a GETXATTR round trip) before every write to a file, to learn whether
// the write must drop it: one request in three of a small write followed
// by fsync. With it, the mount is told instead, in the write itself, when
// the writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID), a truncate's
// SETATTR likewise, and a chown's always (FATTR_KILL_SUIDGID); the
// filesystem then clears the set-ID bits and drops the capability
// attribute as the kernel would have.

// What go-fuse's node API does not pass on. Its Write gets neither the
// WRITE flags nor the raw request, its Create, Mkdir and Mknod not the
// caller's umask (which the mount applies itself, acl.go). noteRaw notes
// them under the request's cancel channel — unique to the request while
// it runs — where the node methods look them up (bridge.note).

// reqNote is what noteRaw noted of a request.
type reqNote struct {
	kill     bool   // a WRITE with FUSE_WRITE_KILL_SUIDGID
	umask    uint32 // CREATE, MKDIR, MKNOD: the caller's umask
	hasUmask bool
}

// noteRaw is the raw filesystem with those parts of requests noted.
type noteRaw struct {
	gofuse.RawFileSystem
	notes *sync.Map // cancel channel → reqNote
}

func (r noteRaw) note(cancel <-chan struct{}, n reqNote) func() {
	r.notes.Store(cancel, n)
	return func() { r.notes.Delete(cancel) }
}

func (r noteRaw) Write(cancel <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	if in.WriteFlags&gofuse.WRITE_KILL_SUIDGID != 0 {
		defer r.note(cancel, reqNote{kill: true})()
	}
	return r.RawFileSystem.Write(cancel, in, data)
}

func (r noteRaw) Writev(cancel <-chan struct{}, in *gofuse.WriteIn, data [][]byte) (uint32, gofuse.Status) {
	if in.WriteFlags&gofuse.WRITE_KILL_SUIDGID != 0 {
		defer r.note(cancel, reqNote{kill: true})()
	}
	return r.RawFileSystem.Writev(cancel, in, data)
}

func (r noteRaw) Create(cancel <-chan struct{}, in *gofuse.CreateIn, name string, out *gofuse.CreateOut) gofuse.Status {
	defer r.note(cancel, reqNote{umask: in.Umask, hasUmask: true})()
	return r.RawFileSystem.Create(cancel, in, name, out)
}

func (r noteRaw) Mkdir(cancel <-chan struct{}, in *gofuse.MkdirIn, name string, out *gofuse.EntryOut) gofuse.Status {
	defer r.note(cancel, reqNote{umask: in.Umask, hasUmask: true})()
	return r.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (r noteRaw) Mknod(cancel <-chan struct{}, in *gofuse.MknodIn, name string, out *gofuse.EntryOut) gofuse.Status {
	defer r.note(cancel, reqNote{umask: in.Umask, hasUmask: true})()
	return r.RawFileSystem.Mknod(cancel, in, name, out)
}

// note returns what noteRaw noted of the request ctx serves.
func (b *bridge) note(ctx context.Context) reqNote {
	fc, ok := ctx.(*gofuse.Context)
	if !ok || fc.Cancel == nil {
		return reqNote{}
	}
	n, _ := b.notes.Load(fc.Cancel)
	rn, _ := n.(reqNote)
	return rn
}

// caller describes the caller of the request ctx serves, for what its
// change takes away.
func (b *bridge) caller(ctx context.Context, kill bool) fs.Caller {
	c := fs.Caller{Kill: kill}
	if fc, ok := ctx.(*gofuse.Context); ok {
		c.UID, c.GID = fc.Caller.Uid, fc.Caller.Gid
	}
	return c
}
