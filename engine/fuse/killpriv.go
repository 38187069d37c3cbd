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
//
// go-fuse's node API passes neither the write's flags nor the raw request
// to Write, so killprivRaw notes a WRITE's flag under the request's
// cancel channel — unique to the request while it runs — where Write
// (node.go) looks it up.

// killprivRaw is the raw filesystem with the WRITE flags noted.
type killprivRaw struct {
	gofuse.RawFileSystem
	kill *sync.Map // cancel channel → struct{}: the write must kill
}

func (k killprivRaw) Write(cancel <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	if in.WriteFlags&gofuse.WRITE_KILL_SUIDGID != 0 {
		k.kill.Store(cancel, struct{}{})
		defer k.kill.Delete(cancel)
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k killprivRaw) Writev(cancel <-chan struct{}, in *gofuse.WriteIn, data [][]byte) (uint32, gofuse.Status) {
	if in.WriteFlags&gofuse.WRITE_KILL_SUIDGID != 0 {
		k.kill.Store(cancel, struct{}{})
		defer k.kill.Delete(cancel)
	}
	return k.RawFileSystem.Writev(cancel, in, data)
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

// killSUIDGID reports whether the write ctx serves must clear the set-ID
// bits.
func (b *bridge) killSUIDGID(ctx context.Context) bool {
	fc, ok := ctx.(*gofuse.Context)
	if !ok || fc.Cancel == nil {
		return false
	}
	_, kill := b.kill.Load(fc.Cancel)
	return kill
}
