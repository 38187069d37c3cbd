package disk

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
)

// File is a Device backed by a regular image file or a block device. Reads
// and writes are pread and pwrite on one descriptor, so concurrent calls do
// not share a file offset; Flush is fdatasync.
type File struct {
	f        *os.File
	path     string
	size     int64
	readOnly bool
	closed   atomic.Bool
}

// Open opens an existing image file or block device. The device size is the
// file size, or for a block device the size the kernel reports.
func Open(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: open: %w", err)
	}
	if err := lockFile(f, !readOnly); err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: open %s: %w", path, err)
	}
	size, err := deviceSize(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: open %s: %w", path, err)
	}
	return &File{f: f, path: path, size: size, readOnly: readOnly}, nil
}

// Create makes an image file of exactly size bytes, sparse and reading as
// zeroes, and opens it read-write.
//
// Without force, Create refuses with an error wrapping ErrExists when path
// already holds data: a regular file of non-zero size, or any block device.
// An absent path or an empty regular file is fine. With force an existing
// regular file is truncated and resized, losing its contents.
//
// A block device cannot be resized: with force, Create opens it and the File
// covers its first size bytes (all of it if size is 0); a size larger than
// the device fails with ErrOutOfRange. The old contents of a block device
// are not erased.
//
// The new file's size and directory entry are made durable before Create
// returns.
func Create(path string, size int64, force bool) (*File, error) {
	if size < 0 {
		return nil, fmt.Errorf("disk: create %s: negative size %d: %w", path, size, ErrOutOfRange)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return createNew(path, size)
	case err != nil:
		return nil, fmt.Errorf("disk: create: %w", err)
	}
	if err := checkCreate(fi, force); err != nil {
		return nil, fmt.Errorf("disk: create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: create: %w", err)
	}
	// Check again on the open descriptor: the path may have changed since
	// the Stat. And never overwrite an image another process has open.
	err = lockFile(f, true)
	if err == nil {
		fi, err = f.Stat()
	}
	if err == nil {
		err = checkCreate(fi, force)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: create %s: %w", path, err)
	}
	if isBlockDevice(fi) {
		return createOnBlockDevice(f, path, size)
	}
	return finishImage(f, path, size)
}

// checkCreate decides whether Create may use an existing file.
func checkCreate(fi fs.FileInfo, force bool) error {
	switch {
	case fi.Mode().IsRegular():
		if fi.Size() > 0 && !force {
			return fmt.Errorf("regular file of %d bytes, refusing to overwrite it: %w", fi.Size(), ErrExists)
		}
		return nil
	case isBlockDevice(fi):
		if !force {
			return fmt.Errorf("block device, refusing to overwrite it: %w", ErrExists)
		}
		return nil
	default:
		return fmt.Errorf("not a regular file or block device (mode %v)", fi.Mode())
	}
}

func isBlockDevice(fi fs.FileInfo) bool {
	m := fi.Mode()
	return m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0
}

// createNew makes a file that did not exist. O_EXCL makes losing a race
// with another creator an ErrExists rather than an overwrite.
func createNew(path string, size int64) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		if lerr := lockFile(f, true); lerr != nil {
			f.Close()
			return nil, fmt.Errorf("disk: create %s: %w", path, lerr)
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("disk: create %s: created concurrently: %w", path, ErrExists)
	}
	if err != nil {
		return nil, fmt.Errorf("disk: create: %w", err)
	}
	return finishImage(f, path, size)
}

// finishImage sizes a regular file to exactly size bytes of zeroes and makes
// that durable.
func finishImage(f *os.File, path string, size int64) (*File, error) {
	fail := func(err error) (*File, error) {
		f.Close()
		return nil, fmt.Errorf("disk: create %s: %w", path, err)
	}
	// Truncate to 0 first so no old contents survive a forced overwrite.
	if err := f.Truncate(0); err != nil {
		return fail(err)
	}
	if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fail(err)
	}
	return &File{f: f, path: path, size: size}, nil
}

func createOnBlockDevice(f *os.File, path string, size int64) (*File, error) {
	devSize, err := deviceSize(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: create %s: %w", path, err)
	}
	if size == 0 {
		size = devSize
	}
	if size > devSize {
		f.Close()
		return nil, fmt.Errorf("disk: create %s: size %d exceeds block device size %d: %w", path, size, devSize, ErrOutOfRange)
	}
	return &File{f: f, path: path, size: size}, nil
}

// syncDir makes a directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// deviceSize returns the size of an open regular file or block device.
func deviceSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	switch {
	case fi.Mode().IsRegular():
		return fi.Size(), nil
	case isBlockDevice(fi):
		return blockDeviceSize(f)
	default:
		return 0, fmt.Errorf("not a regular file or block device (mode %v)", fi.Mode())
	}
}

// seekEndSize is the portable way to size a block device.
func seekEndSize(f *os.File) (int64, error) {
	return f.Seek(0, io.SeekEnd)
}

// Preallocate writes zeroes over the whole of a regular image file and
// flushes, so that the host filesystem allocates every block now: on a
// sparse image the first write to each block makes the host allocate it,
// and an fdatasync after such a write must commit the host's journal too
// (about twice the cost of one that only flushes data). A block device is
// left alone (its blocks exist). Call it on a new image, before mkfs: it
// erases everything. progress, if not nil, is called with the bytes
// written so far.
func (d *File) Preallocate(progress func(done, total int64)) error {
	if d.readOnly {
		return fmt.Errorf("disk: %s: preallocate: %w", d.path, ErrReadOnly)
	}
	fi, err := d.f.Stat()
	if err != nil {
		return fmt.Errorf("disk: %s: preallocate: %w", d.path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	zero := make([]byte, 4<<20)
	for off := int64(0); off < d.size; off += int64(len(zero)) {
		n := min(int64(len(zero)), d.size-off)
		if _, err := d.WriteAt(zero[:n], off); err != nil {
			return fmt.Errorf("preallocate: %w", err)
		}
		if progress != nil {
			progress(off+n, d.size)
		}
	}
	if err := d.Flush(); err != nil {
		return fmt.Errorf("preallocate: %w", err)
	}
	return nil
}

// Path returns the path the File was opened with.
func (d *File) Path() string { return d.path }

// Size returns the device size in bytes.
func (d *File) Size() int64 { return d.size }

// ReadOnly reports whether the File was opened read-only.
func (d *File) ReadOnly() bool { return d.readOnly }

// ReadAt reads len(p) bytes at off with pread.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange("read", off, len(p), d.size); err != nil {
		return 0, fmt.Errorf("disk: %s: %w", d.path, err)
	}
	n, err := d.f.ReadAt(p, off)
	if n == len(p) {
		// os.File.ReadAt may pair a full read with io.EOF at end of file.
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = ErrShortIO
	}
	return n, fmt.Errorf("disk: %s: read %d bytes at offset %d: got %d: %w", d.path, len(p), off, n, err)
}

// WriteAt writes len(p) bytes at off with pwrite.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, fmt.Errorf("disk: %s: write at offset %d: %w", d.path, off, ErrReadOnly)
	}
	if err := checkRange("write", off, len(p), d.size); err != nil {
		return 0, fmt.Errorf("disk: %s: %w", d.path, err)
	}
	n, err := d.f.WriteAt(p, off)
	if n == len(p) && err == nil {
		return n, nil
	}
	if err == nil {
		err = ErrShortIO
	}
	return n, fmt.Errorf("disk: %s: write %d bytes at offset %d: wrote %d: %w", d.path, len(p), off, n, err)
}

// Writeback writes the range's dirty pages back to the host's storage
// (sync_file_range on Linux) and, with wait, waits for them. Writing a
// large amount in steps, each written back before the next, keeps little
// in flight at any moment: an fsync of the same file by another writer
// then waits for one step, not for everything. It makes nothing durable
// (the host's metadata and cache are Flush's work).
func (d *File) Writeback(off, n int64, wait bool) error {
	if d.closed.Load() {
		return ErrClosed
	}
	if d.readOnly || n <= 0 {
		return nil
	}
	if err := writeback(d.f, off, n, wait); err != nil {
		return fmt.Errorf("disk: %s: writeback: %w", d.path, err)
	}
	return nil
}

// WillNeed has the kernel start reading [off, off+n) into the page cache
// (posix_fadvise WILLNEED on Linux; nothing elsewhere), for reads to come:
// a hint, which reads nothing into the caller's memory.
func (d *File) WillNeed(off, n int64) error {
	if d.closed.Load() {
		return ErrClosed
	}
	if err := willNeed(d.f, off, n); err != nil {
		return fmt.Errorf("disk: %s: read-ahead advice: %w", d.path, err)
	}
	return nil
}

// Flush makes every completed write durable with fdatasync. A read-only
// File has nothing to flush and returns nil unless it is closed.
func (d *File) Flush() error {
	var err error
	switch {
	case d.closed.Load():
		// Checked here because a raw descriptor call on a closed
		// *os.File does not report fs.ErrClosed.
		err = ErrClosed
	case !d.readOnly:
		err = fdatasync(d.f)
	}
	if err != nil {
		return fmt.Errorf("disk: %s: flush: %w", d.path, err)
	}
	return nil
}

// Close closes the descriptor. It does not flush.
func (d *File) Close() error {
	d.closed.Store(true)
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("disk: %s: close: %w", d.path, err)
	}
	return nil
}
