package fuse

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/scrubd/scrubd/engine/format"
)

// maxCopy is the most one COPY_FILE_RANGE may answer: the reply's count
// is 32 bits; a page-aligned bound keeps the rest of a long copy aligned.
const maxCopy = 1<<32 - format.BlockSize

// CopyFileRange answers copy_file_range(2) (FUSE_COPY_FILE_RANGE): whole
// blocks are shared with the source (reflinks, engine/fs/clone.go), not
// copied; only partial blocks at the ends, or a range whose offsets sit
// at different positions within a block, are read and written. FICLONE
// and FICLONERANGE never reach a FUSE server, so `cp --reflink=always`
// fails on the mount; plain `cp` (coreutils 9) uses copy_file_range and
// shares. The kernel drops its cached pages of the destination range and
// its attributes after the call.
func (n *node) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	if flags != 0 {
		return 0, syscall.EINVAL
	}
	dst := out.StableAttr().Ino
	if offIn > 1<<62 || offOut > 1<<62 {
		return 0, syscall.EFBIG
	}
	length = min(length, maxCopy)
	// Space for the bytes copied: the partial blocks at the ends when the
	// middle is shared, the whole range when nothing can be.
	need := spanBlocks(int64(offOut), int(min(length, 1<<30)))
	if offIn%format.BlockSize == offOut%format.BlockSize {
		need = min(need, 2)
	}
	if !n.b.haveSpace(need) {
		return 0, n.b.errno("copy_file_range", dst, syscall.ENOSPC)
	}
	got, err := n.b.fsys.CopyRange(n.ino(), int64(offIn), dst, int64(offOut), int64(length))
	if err != nil && got == 0 {
		return 0, n.b.errno("copy_file_range", dst, err)
	}
	if err != nil {
		// A short copy: report what was done; the caller's next call
		// meets the error again.
		n.b.errno("copy_file_range", dst, err)
	}
	return uint32(got), 0
}
