package fuse

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/scrubd/scrubd/engine/fs"
)

// Directory handles.
//
// A directory stream is read from the engine in batches. A position in it
// is the engine's readdir offset (fs.DirEntry.Next), which is stable: an
// entry keeps its offset until it is removed, and new entries get larger
// ones. So the offset the kernel hands back (telldir/seekdir, or a read
// resumed after a full buffer) resumes exactly after the entry it names,
// whatever changed in between, and no entry present throughout is skipped
// or returned twice.

// dirBatch is how many entries one engine read fetches.
const dirBatch = 128

// dirHandle is an open directory: it holds one engine open count, so a
// directory removed while open stays readable (and empty) until closed.
type dirHandle struct {
	b    *bridge
	ino  uint64
	next uint64        // engine offset to read from when buf is empty
	buf  []fs.DirEntry // entries read ahead
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	// The kernel opens only directories this way.
	if err := n.b.fsys.Open(n.ino()); err != nil {
		return nil, 0, n.b.errno("opendir", n.ino(), err)
	}
	return &dirHandle{b: n.b, ino: n.ino()}, 0, 0
}

// Readdirent returns the next entry, nil at the end. go-fuse serializes
// the calls on one handle.
func (d *dirHandle) Readdirent(ctx context.Context) (*gofuse.DirEntry, syscall.Errno) {
	if len(d.buf) == 0 {
		d.buf = d.buf[:0]
		err := d.b.fsys.ReadDir(d.ino, d.next, func(e fs.DirEntry) bool {
			d.buf = append(d.buf, e)
			return len(d.buf) < dirBatch
		})
		if err != nil {
			d.buf = nil
			return nil, d.b.errno("readdir", d.ino, err)
		}
		if len(d.buf) == 0 {
			return nil, 0
		}
	}
	e := d.buf[0]
	d.buf = d.buf[1:]
	d.next = e.Next
	return &gofuse.DirEntry{Name: e.Name, Ino: e.Ino, Mode: e.Mode, Off: e.Next}, 0
}

// Seekdir moves to an offset a Readdirent returned (0: the start).
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.next, d.buf = off, nil
	return 0
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.b.errno("releasedir", d.ino, d.b.fsys.Release(d.ino))
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.b.errno("fsyncdir", d.ino, d.b.fsys.Fsync(d.ino))
}
