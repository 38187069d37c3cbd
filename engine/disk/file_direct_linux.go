package disk

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// OpenDirect opens a second, read-only descriptor on d's file that reads
// past the page cache (O_DIRECT): the data scrub's large sequential
// reads go from the device straight into its buffers, with no page cache
// to fill, copy out of and reclaim, and without evicting what the mount's
// readers have cached. The descriptor is opened through /proc/self/fd, so
// it is the same file even if the path was renamed since. It fails where
// the host filesystem has no direct I/O (tmpfs) or the device's logical
// block is larger than DirectAlign: callers then read through d.
func (d *File) OpenDirect() (*DirectFile, error) {
	if d.closed.Load() {
		return nil, ErrClosed
	}
	rc, err := d.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil {
		return nil, err
	}
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(fd)), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %s: open for direct reads: %w", d.path, err)
	}
	df := &DirectFile{f: f, path: d.path, size: d.size}
	// A probe: a filesystem may accept O_DIRECT at open and refuse the
	// reads (EINVAL), or need a larger alignment.
	if d.size >= DirectAlign {
		buf := AlignedBuffer(DirectAlign)
		if _, err := df.ReadAt(buf, 0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return df, nil
}

// DirectFile reads a File's blocks past the page cache (see OpenDirect).
// Buffers must come from AlignedBuffer, offsets and lengths be multiples
// of DirectAlign. It is safe for concurrent use.
type DirectFile struct {
	f    *os.File
	path string
	size int64
}

// ReadAt reads len(p) bytes at off. p, off and len(p) must be aligned to
// DirectAlign.
func (d *DirectFile) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange("read", off, len(p), d.size); err != nil {
		return 0, fmt.Errorf("disk: %s: %w", d.path, err)
	}
	if !aligned(p, off) {
		return 0, fmt.Errorf("disk: %s: direct read of %d bytes at offset %d: not aligned to %d", d.path, len(p), off, DirectAlign)
	}
	n, err := d.f.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = ErrShortIO
	}
	return n, fmt.Errorf("disk: %s: direct read of %d bytes at offset %d: got %d: %w", d.path, len(p), off, n, err)
}

// Close closes the descriptor.
func (d *DirectFile) Close() error { return d.f.Close() }
