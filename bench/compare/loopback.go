package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

func syncfs(f *os.File) error { return unix.Syncfs(int(f.Fd())) }

// loopbackMain is go-fuse's example/loopback (v2.12.1) with FUSE
// passthrough off: the example, run as root on a kernel with
// CONFIG_FUSE_PASSTHROUGH, hands every open file to the kernel, and then
// reads and writes never reach the server — it would not measure a FUSE
// server at all. It has no flag for that, so this is its main with the
// same mount options, whose file handles do not offer a passthrough fd.
//
//	compare __loopback MOUNTPOINT ORIGINAL
func loopbackMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compare "+helperLoopback+" MOUNTPOINT ORIGINAL")
		return 2
	}
	var st syscall.Stat_t
	if err := syscall.Stat(args[1], &st); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root := &fs.LoopbackRoot{Path: args[1], Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &noPassthroughNode{LoopbackNode: fs.LoopbackNode{RootData: r}}
	}
	rootNode := &noPassthroughNode{LoopbackNode: fs.LoopbackNode{RootData: root}}
	root.RootNode = rootNode
	sec := time.Second
	opts := &fs.Options{
		// As the example: libfuse's default timeouts.
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName: args[1],
			Name:   "loopback",
		},
	}
	server, err := fs.Mount(args[0], rootNode, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mount: %v\n", err)
		return 1
	}
	fmt.Println("Mounted!")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		server.Unmount()
	}()
	server.Wait()
	return 0
}

// noPassthroughNode is a loopback node whose open files are served by the
// server.
type noPassthroughNode struct {
	fs.LoopbackNode
}

var (
	_ fs.NodeOpener  = (*noPassthroughNode)(nil)
	_ fs.NodeCreater = (*noPassthroughNode)(nil)
)

func (n *noPassthroughNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return wrapFile(fh), fl, errno
}

func (n *noPassthroughNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, wrapFile(fh), fl, errno
}

// loopbackFile is every interface of fs.LoopbackFile but
// fs.FilePassthroughFder.
type loopbackFile interface {
	fs.FileReleaser
	fs.FileGetattrer
	fs.FileReader
	fs.FileWriter
	fs.FileGetlker
	fs.FileSetlker
	fs.FileSetlkwer
	fs.FileLseeker
	fs.FileFlusher
	fs.FileFsyncer
	fs.FileSetattrer
	fs.FileAllocater
	fs.FileIoctler
}

type noPassthroughFile struct{ loopbackFile }

func wrapFile(fh fs.FileHandle) fs.FileHandle {
	if f, ok := fh.(loopbackFile); ok {
		return noPassthroughFile{f}
	}
	return fh
}
