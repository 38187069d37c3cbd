package xfile

// Why a File never faults
//
// A File is a sparse, unlinked temporary file (by default anonymous memory,
// a memfd) mapped MAP_SHARED. Two things
// could turn an ordinary memory access into a fatal signal, and both are ruled
// out by construction:
//
//  1. Touching an address that is no longer mapped. Growing the file maps a
//     new, larger view; the old views are NOT unmapped until Close. They alias
//     the same page cache pages, so a slice fetched before a Grow keeps
//     working (reads and writes stay coherent with the File). Views grow
//     geometrically, so all the old ones together are smaller than the
//     current one: the cost is at most twice the address space, never memory.
//
//  2. Writing a page the filesystem cannot back. Storing into a hole of a
//     shared mapping makes the kernel allocate a block at fault time; if the
//     filesystem is full, the only way it can report that is SIGBUS, which
//     kills a Go program. So no byte is written through the mapping unless
//     its page is "reserved": blocks were allocated for it beforehand with
//     fallocate (or, where fallocate is unsupported, by writing zeros with
//     pwrite), and those system calls report ENOSPC as an ordinary error that
//     becomes ErrNoSpace. The set of reserved pages is kept in an extentSet.
//     Reservation is lazy and in chunks ahead of the write (64 KiB up to
//     16 MiB, growing with the file), so a sparse file stays sparse and
//     sequential appends make one system call per chunk, not per write.
//     Discard punches holes and removes the pages from the set; the next
//     write there reserves them again. Load never touches unreserved pages:
//     it knows they read as zero.
//
// The remaining way to fault is a caller writing through a slice from Bytes
// into a range that was Discarded after the slice was fetched; the
// documentation of Discard forbids it.

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/edsrzf/mmap-go"
	"golang.org/x/sys/unix"
)

var pageSize = int64(os.Getpagesize())

const (
	// minMap is the smallest mapping made by Grow.
	minMap = 64 << 10
	// minReserve and maxReserve bound the chunk reserved ahead of a write.
	minReserve = 64 << 10
	maxReserve = 16 << 20
)

// MaxSize is the largest size a File can grow to (64 TiB). On 32-bit
// platforms the address space limits it further, and growth past it fails
// with ErrNoSpace.
const MaxSize = 1 << 46

// Options configures a File.
type Options struct {
	// Dir is the directory that holds the (unlinked) file. Empty means
	// anonymous memory (memfd: swappable, never written back to a disk),
	// or os.TempDir() where memfd is unavailable.
	Dir string
	// InitialSize is the number of bytes to map at creation, rounded up to
	// the page size. Zero maps nothing until the first Grow or Store.
	InitialSize int64
	// Name identifies the file in error messages, e.g. "rmap-repair".
	Name string
}

// Stats describes the memory a File uses.
type Stats struct {
	// Mapped is the size of the current mapping in bytes (== Size()).
	Mapped int64
	// Allocated is the storage the file really occupies (st_blocks * 512):
	// pages reserved or written, minus pages given back by Discard.
	Allocated int64
}

// File is a temporary, memory-mapped, growable file that never appears in
// the directory tree. It is not safe for concurrent use: one goroutine at a
// time may call its methods.
type File struct {
	name string // "xfile NAME", for messages
	osf  *os.File
	fd   int

	mem   mmap.MMap   // current view: the whole file
	views []mmap.MMap // previous, smaller views, unmapped only by Close

	reserved extentSet // page ranges with blocks allocated (see top of file)
	hint     extent    // a range known to be inside reserved; fast path

	noFallocate bool // fallocate(mode 0) unsupported: reserve by writing zeros
	noPunch     bool // hole punching unsupported: Discard zeroes instead
}

// New creates a File as configured by opts.
//
// Without opts.Dir it is a memfd. With it, it opens the file with
// O_TMPFILE, so it has no name at any moment; on filesystems without
// O_TMPFILE it creates a uniquely named file and unlinks it at once. An
// error wraps ErrTempDir if the directory is missing or not writable, and
// ErrNoSpace if it is full.
func New(opts Options) (*File, error) {
	f := &File{name: label(opts.Name)}
	if opts.InitialSize < 0 || opts.InitialSize > MaxSize {
		return nil, fmt.Errorf("%s: initial size %d: %w", f.name, opts.InitialSize, ErrRange)
	}
	dir := opts.Dir
	var osf *os.File
	var err error
	if dir == "" {
		// Anonymous memory, as XFS's shmem xfiles: pages the kernel can
		// swap but never writes back to a disk, where a rebuild's
		// hundreds of megabytes of shadow would compete with the image's
		// own I/O. Where memfd is unavailable, a file in os.TempDir().
		osf, err = openMemfd(f.name)
		if err != nil {
			dir = os.TempDir()
		}
	}
	if osf == nil {
		osf, err = openTemp(dir)
	}
	if err != nil {
		if isNoSpace(err) {
			return nil, fmt.Errorf("%s: create in %q: %w: %w", f.name, dir, ErrNoSpace, err)
		}
		return nil, fmt.Errorf("%s: create in %q: %w: %w", f.name, dir, ErrTempDir, err)
	}
	f.osf = osf
	f.fd = int(osf.Fd())
	if opts.InitialSize > 0 {
		if err := f.remap(roundUp(opts.InitialSize, pageSize)); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// openMemfd opens an anonymous memory-backed file (memfd_create).
func openMemfd(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}

// openTemp opens an anonymous file in dir.
func openTemp(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(xfile)"), nil
	}
	// EOPNOTSUPP: the filesystem lacks O_TMPFILE; EISDIR: the kernel
	// predates it and took the flag for O_DIRECTORY|O_RDWR. Fall back.
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, &os.PathError{Op: "open(O_TMPFILE)", Path: dir, Err: err}
	}
	return createUnlinked(dir)
}

// createUnlinked creates a uniquely named file in dir and unlinks it.
func createUnlinked(dir string) (*os.File, error) {
	osf, err := os.CreateTemp(dir, ".scrubd-xfile-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(osf.Name()); err != nil {
		osf.Close()
		return nil, err
	}
	return osf, nil
}

// Size returns the number of bytes currently mapped: offsets below Size can
// be accessed without growing. It is a multiple of the page size.
func (f *File) Size() int64 { return int64(len(f.mem)) }

// Grow ensures at least n bytes are mapped. It grows geometrically (at least
// doubling, in whole pages) so that repeated small growth is amortized
// O(1); if the doubled mapping cannot be made it retries with just n bytes.
//
// Growing does not allocate storage: the new range is a hole and reads as
// zeros. Slices returned by Bytes before a Grow remain valid (see Bytes).
func (f *File) Grow(n int64) error {
	if f.osf == nil {
		return ErrClosed
	}
	if n < 0 || n > MaxSize {
		return f.rangeErr("grow", 0, n)
	}
	if n <= int64(len(f.mem)) {
		return nil
	}
	want := roundUp(n, pageSize)
	size := max(int64(len(f.mem)), minMap)
	for size < want {
		if size > MaxSize/2 {
			size = MaxSize
			break
		}
		size *= 2
	}
	err := f.remap(size)
	if err != nil && size > want {
		err = f.remap(want)
	}
	return err
}

// remap extends the file to size bytes and maps it whole, keeping the
// previous view alive.
func (f *File) remap(size int64) error {
	if size > math.MaxInt {
		return f.wrapErr(fmt.Sprintf("map %d bytes", size), unix.ENOMEM)
	}
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return f.wrapErr(fmt.Sprintf("grow to %d bytes", size), err)
	}
	m, err := mmap.MapRegion(f.osf, int(size), mmap.RDWR, 0, 0)
	if err != nil {
		return f.wrapErr(fmt.Sprintf("map %d bytes", size), err)
	}
	if f.mem != nil {
		f.views = append(f.views, f.mem)
	}
	f.mem = m
	return nil
}

// checkRange validates [off, off+n) against the mapped size.
func (f *File) checkRange(op string, off, n int64) error {
	if f.osf == nil {
		return ErrClosed
	}
	if off < 0 || n < 0 || off > int64(len(f.mem))-n {
		return f.rangeErr(op, off, n)
	}
	return nil
}

// Bytes returns a slice aliasing bytes [off, off+n) of the mapping, without
// copying. The range must be below Size (call Grow first); otherwise the
// error wraps ErrRange. The pages are reserved, so the caller may write
// through the slice.
//
// Validity: the slice is guaranteed valid until the next Grow; callers that
// keep slices across calls that may grow the file (Grow, Store) should fetch
// them again. (This implementation keeps old views mapped until Close, so a
// stale slice never faults and stays coherent with the file, but code should
// not depend on that.) After Discard of a range, slices previously fetched
// over it must not be written: fetch them again, which reserves the pages
// anew. No slice may be used after Close.
func (f *File) Bytes(off, n int64) ([]byte, error) {
	if err := f.checkRange("bytes", off, n); err != nil {
		return nil, err
	}
	if err := f.reserve(off, off+n); err != nil {
		return nil, err
	}
	return f.mem[off : off+n : off+n], nil
}

// Load copies len(p) bytes at off into p. Ranges never written, or
// discarded, read as zeros. Reading past Size fails with ErrRange.
func (f *File) Load(p []byte, off int64) error {
	n := int64(len(p))
	if err := f.checkRange("load", off, n); err != nil {
		return err
	}
	end := off + n
	if f.isReserved(off, end) {
		copy(p, f.mem[off:end])
		return nil
	}
	// Do not fault holes in: on tmpfs even a read fault allocates a page.
	return f.reserved.walk(off, end, func(s, e int64, in bool) error {
		dst := p[s-off : e-off]
		if in {
			copy(dst, f.mem[s:e])
		} else {
			clear(dst)
		}
		return nil
	})
}

// Store copies p to offset off, growing the file as needed. The error wraps
// ErrNoSpace if the file cannot grow or its pages cannot be backed.
func (f *File) Store(p []byte, off int64) error {
	n := int64(len(p))
	if f.osf == nil {
		return ErrClosed
	}
	if off < 0 || off > MaxSize-n {
		return f.rangeErr("store", off, n)
	}
	end := off + n
	if n == 0 {
		return nil
	}
	if end > int64(len(f.mem)) {
		if err := f.Grow(end); err != nil {
			return err
		}
	}
	if err := f.reserve(off, end); err != nil {
		return err
	}
	copy(f.mem[off:end], p)
	return nil
}

// Discard gives the storage of [off, off+n) back to the system; the range
// then reads as zeros. Whole pages are released by punching a hole
// (FALLOC_FL_PUNCH_HOLE); the partial pages at either end are zeroed in
// place. On filesystems that cannot punch holes the range is only zeroed.
//
// Slices obtained from Bytes that overlap the range must not be written
// afterwards; fetch them again.
func (f *File) Discard(off, n int64) error {
	if err := f.checkRange("discard", off, n); err != nil {
		return err
	}
	end := off + n
	pstart, pend := roundUp(off, pageSize), end&^(pageSize-1)
	if pstart >= pend { // within one page, or straddling one boundary
		f.zeroReserved(off, end)
		return nil
	}
	f.zeroReserved(off, pstart)
	f.zeroReserved(pend, end)
	if f.noPunch {
		f.zeroReserved(pstart, pend)
		return nil
	}
	err := fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, pstart, pend-pstart)
	if err == nil {
		f.reserved.remove(pstart, pend)
		f.hint = extent{}
		return nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		f.noPunch = true
		f.zeroReserved(pstart, pend)
		return nil
	}
	return f.wrapErr(fmt.Sprintf("discard [%d, %d)", pstart, pend), err)
}

// zeroReserved zeroes the reserved parts of [start, end); unreserved parts
// are holes and already read as zero.
func (f *File) zeroReserved(start, end int64) {
	if start >= end {
		return
	}
	f.reserved.walk(start, end, func(s, e int64, in bool) error {
		if in {
			clear(f.mem[s:e])
		}
		return nil
	})
}

// Stat reports the mapped size and the storage actually allocated.
func (f *File) Stat() (Stats, error) {
	if f.osf == nil {
		return Stats{}, ErrClosed
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return Stats{}, f.wrapErr("stat", err)
	}
	return Stats{Mapped: int64(len(f.mem)), Allocated: st.Blocks * 512}, nil
}

// Close unmaps every view and closes the file, which frees all its storage.
// Slices obtained from Bytes must not be used afterwards. Close is
// idempotent; methods called after it return ErrClosed. A File that is
// never closed keeps its mapping, and so its storage, until the process
// exits: there is no finalizer, because slices into the mapping do not keep
// the File reachable.
func (f *File) Close() error {
	if f.osf == nil {
		return nil
	}
	var errs []error
	for i := range f.views {
		errs = append(errs, f.views[i].Unmap())
	}
	if f.mem != nil {
		errs = append(errs, f.mem.Unmap())
	}
	errs = append(errs, f.osf.Close())
	f.views, f.mem, f.osf = nil, nil, nil
	f.reserved, f.hint = extentSet{}, extent{}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: close: %w", f.name, err)
	}
	return nil
}

// isReserved reports whether every page of [start, end) is reserved, using
// the cached hint only. It is the inlined fast path of reserve.
func (f *File) isReserved(start, end int64) bool {
	return start >= f.hint.start && end <= f.hint.end
}

// reserve makes sure every page touching [start, end) has storage allocated,
// so that writing it through the mapping cannot fault. The range must lie
// within Size.
func (f *File) reserve(start, end int64) error {
	if f.isReserved(start, end) {
		return nil
	}
	return f.reserveSlow(start, end)
}

func (f *File) reserveSlow(start, end int64) error {
	if start >= end {
		return nil
	}
	ps, pe := start&^(pageSize-1), roundUp(end, pageSize)
	if r, ok := f.reserved.covering(ps, pe); ok {
		f.hint = r
		return nil
	}
	// Reserve ahead, in a chunk that grows with the file, so that
	// sequential writes make few system calls. If the chunk does not fit,
	// reserve just the pages needed.
	chunk := int64(minReserve)
	for chunk < maxReserve && chunk < f.reserved.bytes/8 {
		chunk *= 2
	}
	ahead := min(roundUp(pe, chunk), int64(len(f.mem)))
	err := f.reserveRange(ps, ahead)
	if err != nil && ahead > pe && errors.Is(err, ErrNoSpace) {
		err = f.reserveRange(ps, pe)
	}
	if err != nil {
		return err
	}
	f.hint, _ = f.reserved.covering(ps, pe)
	return nil
}

// reserveRange allocates the unreserved parts of [start, end).
func (f *File) reserveRange(start, end int64) error {
	// Collect the gaps first: allocate changes the set walk is reading.
	var gaps []extent
	f.reserved.walk(start, end, func(s, e int64, in bool) error {
		if !in {
			gaps = append(gaps, extent{s, e})
		}
		return nil
	})
	for _, g := range gaps {
		if err := f.allocate(g.start, g.end); err != nil {
			return err
		}
	}
	return nil
}

// allocate backs [start, end), a page-aligned hole, with storage and adds it
// to the reserved set. Holes contain only zeros, so writing zeros there (the
// fallback when fallocate is unsupported) loses nothing.
func (f *File) allocate(start, end int64) error {
	if !f.noFallocate {
		err := fallocate(f.fd, 0, start, end-start)
		if err == nil {
			f.reserved.add(start, end)
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return f.wrapErr(fmt.Sprintf("reserve [%d, %d)", start, end), err)
		}
		f.noFallocate = true
	}
	zeros := zeroChunk[:]
	for off := start; off < end; {
		n, err := unix.Pwrite(f.fd, zeros[:min(int64(len(zeros)), end-off)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			f.reserved.add(start, off&^(pageSize-1))
			return f.wrapErr(fmt.Sprintf("reserve [%d, %d)", start, end), err)
		}
		off += int64(n)
	}
	f.reserved.add(start, end)
	return nil
}

// zeroChunk is the source of the zeros written by allocate's fallback.
var zeroChunk [64 << 10]byte

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

// label is how errors name a File: "xfile" or "xfile NAME".
func label(name string) string {
	if name == "" {
		return "xfile"
	}
	return "xfile " + name
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
