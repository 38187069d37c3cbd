package xfile

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// memfdDir asks newFile for the default, anonymous-memory file.
const memfdDir = "(memfd)"

func newFile(t testing.TB, opts Options) *File {
	t.Helper()
	switch opts.Dir {
	case "":
		opts.Dir = t.TempDir()
	case memfdDir:
		opts.Dir = ""
	}
	f, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// TestFileModel runs random operations against a File and a plain byte
// slice, growing the file through several remaps. It runs once per
// reservation/discard strategy so that the fallbacks for filesystems
// without fallocate or hole punching are covered too.
func TestFileModel(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		noFallocate, noPunch bool
	}{
		{"fallocate", false, false},
		{"no-fallocate", true, false},
		{"no-punch", false, true},
		{"memfd", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{Name: "model"}
			if tc.name == "memfd" {
				opts.Dir = memfdDir
			}
			f := newFile(t, opts)
			f.noFallocate, f.noPunch = tc.noFallocate, tc.noPunch
			testFileModel(t, f, rand.New(rand.NewPCG(1, 2)))
		})
	}
}

func testFileModel(t *testing.T, f *File, rng *rand.Rand) {
	const limit = 3 << 20 // 64 KiB doubles to 4 MiB: six remaps
	var model []byte
	ensure := func(n int64) {
		if int64(len(model)) < n {
			model = append(model, make([]byte, n-int64(len(model)))...)
		}
	}
	randRange := func(size int64) (off, n int64) {
		if size == 0 {
			return 0, 0
		}
		off = rng.Int64N(size)
		n = rng.Int64N(min(size-off, 3*pageSize) + 1)
		return off, n
	}
	var stale []byte // a Bytes slice fetched before later growth
	var staleOff int64
	remaps := 0
	for step := 0; step < 3000; step++ {
		size := f.Size()
		switch op := rng.IntN(10); {
		case op < 4: // Store, sometimes past the end
			off := rng.Int64N(min(size+size/2+pageSize, limit))
			p := make([]byte, rng.IntN(3*int(pageSize)))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if err := f.Store(p, off); err != nil {
				t.Fatalf("step %d: Store(%d, %d): %v", step, off, len(p), err)
			}
			ensure(off + int64(len(p)))
			copy(model[off:], p)
		case op < 7: // Load
			off, n := randRange(size)
			p := make([]byte, n)
			if err := f.Load(p, off); err != nil {
				t.Fatalf("step %d: Load(%d, %d): %v", step, off, n, err)
			}
			ensure(off + n)
			if !bytes.Equal(p, model[off:off+n]) {
				t.Fatalf("step %d: Load(%d, %d) differs from model", step, off, n)
			}
		case op < 8: // Discard
			off, n := randRange(size)
			if err := f.Discard(off, n); err != nil {
				t.Fatalf("step %d: Discard(%d, %d): %v", step, off, n, err)
			}
			ensure(off + n)
			clear(model[off : off+n])
			if stale != nil && staleOff < off+n && off < staleOff+int64(len(stale)) {
				stale = nil // Discard forbids writing through it
			}
		case op < 9: // Bytes: compare, then write through the slice
			off, n := randRange(size)
			b, err := f.Bytes(off, n)
			if err != nil {
				t.Fatalf("step %d: Bytes(%d, %d): %v", step, off, n, err)
			}
			ensure(off + n)
			if !bytes.Equal(b, model[off:off+n]) {
				t.Fatalf("step %d: Bytes(%d, %d) differs from model", step, off, n)
			}
			for i := range b {
				b[i]++
				model[off+int64(i)]++
			}
			if n > 0 {
				stale, staleOff = b, off
			}
		default: // Grow, and check a slice from before the growth still works
			if err := f.Grow(min(size+rng.Int64N(pageSize*4)+1, limit)); err != nil {
				t.Fatalf("step %d: Grow: %v", step, err)
			}
			if stale != nil {
				stale[0] ^= 0xff
				model[staleOff] ^= 0xff
			}
		}
		if f.Size() != size {
			remaps++
		}
		if f.Size()%pageSize != 0 {
			t.Fatalf("Size %d not a multiple of the page size", f.Size())
		}
	}
	// Final full comparison.
	got := make([]byte, f.Size())
	if err := f.Load(got, 0); err != nil {
		t.Fatal(err)
	}
	ensure(f.Size())
	if !bytes.Equal(got, model[:f.Size()]) {
		t.Fatal("final contents differ from model")
	}
	if remaps < 4 {
		t.Errorf("only %d remaps; the test should cross several", remaps)
	}
	t.Logf("size %d after %d remaps", f.Size(), remaps)
}

func TestFileNotInDirectory(t *testing.T) {
	dir := t.TempDir()
	f := newFile(t, Options{Dir: dir, InitialSize: 1})
	if err := f.Store([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("directory has %d entries, want none: %v", len(ents), ents)
	}
	if f.Size() != pageSize {
		t.Errorf("InitialSize 1 mapped %d bytes, want one page", f.Size())
	}
}

// TestCreateUnlinked checks the fallback for filesystems without O_TMPFILE.
func TestCreateUnlinked(t *testing.T) {
	dir := t.TempDir()
	osf, err := createUnlinked(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer osf.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("directory has entries after createUnlinked: %v", ents)
	}
	if _, err := osf.WriteAt([]byte("ok"), 0); err != nil {
		t.Error(err)
	}
	if _, err := createUnlinked(filepath.Join(dir, "missing")); err == nil {
		t.Error("createUnlinked in a missing directory succeeded")
	}
}

func TestFileTempDirErrors(t *testing.T) {
	regular := filepath.Join(t.TempDir(), "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{
		filepath.Join(t.TempDir(), "does-not-exist"),
		regular,
	} {
		f, err := New(Options{Dir: dir, Name: "bad-dir"})
		if !errors.Is(err, ErrTempDir) {
			t.Errorf("New(Dir: %q) = %v, %v; want ErrTempDir", dir, f, err)
		}
		if f != nil {
			f.Close()
		}
	}
}

func TestFileRangeErrors(t *testing.T) {
	f := newFile(t, Options{InitialSize: 2 * pageSize})
	size := f.Size()
	p := make([]byte, 16)
	checks := map[string]error{
		"Load past end":       f.Load(p, size-8),
		"Load negative":       f.Load(p, -1),
		"Discard past end":    f.Discard(size-8, 16),
		"Discard negative n":  f.Discard(0, -1),
		"Store negative":      f.Store(p, -5),
		"Store past MaxSize":  f.Store(p, MaxSize-8),
		"Grow past MaxSize":   f.Grow(MaxSize + 1),
		"Grow negative":       f.Grow(-1),
		"Load overflowing":    f.Load(p, 1<<63-8),
		"Discard overflowing": f.Discard(1<<63-1, 1<<63-1),
	}
	_, err := f.Bytes(size, 1)
	checks["Bytes past end"] = err
	_, err = f.Bytes(0, -1)
	checks["Bytes negative n"] = err
	for name, err := range checks {
		if !errors.Is(err, ErrRange) {
			t.Errorf("%s: got %v, want ErrRange", name, err)
		}
	}
	if f.Size() != size {
		t.Errorf("failed calls changed Size from %d to %d", size, f.Size())
	}
	// Edge of the valid range.
	if err := f.Load(p, size-16); err != nil {
		t.Errorf("Load at the last bytes: %v", err)
	}
	if b, err := f.Bytes(size, 0); err != nil || len(b) != 0 {
		t.Errorf("Bytes(size, 0) = %d bytes, %v", len(b), err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := f.Load(p, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Load after Close: %v, want ErrClosed", err)
	}
	if err := f.Store(p, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Store after Close: %v, want ErrClosed", err)
	}
}

func TestFileDiscardReturnsMemory(t *testing.T) {
	for _, dir := range []string{"", memfdDir} {
		t.Run(map[string]string{"": "tempdir", memfdDir: "memfd"}[dir], func(t *testing.T) {
			testDiscardReturnsMemory(t, newFile(t, Options{Dir: dir}))
		})
	}
}

// TestFileMemfd: without a directory the file is anonymous memory.
func TestFileMemfd(t *testing.T) {
	f := newFile(t, Options{Dir: memfdDir, Name: "shadow"})
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.fd))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if !strings.HasPrefix(link, "/memfd:") {
		t.Errorf("default xfile is %q, want a memfd", link)
	}
}

func testDiscardReturnsMemory(t *testing.T, f *File) {
	const n = 8 << 20
	p := bytes.Repeat([]byte{0xa5}, 1<<20)
	for off := int64(0); off < n; off += int64(len(p)) {
		if err := f.Store(p, off); err != nil {
			t.Fatal(err)
		}
	}
	before, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if before.Allocated < n {
		t.Fatalf("Allocated %d after writing %d bytes", before.Allocated, n)
	}
	// Discard all but the first and last 100 bytes, unaligned.
	if err := f.Discard(100, n-200); err != nil {
		t.Fatal(err)
	}
	after, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before: %+v after: %+v", before, after)
	if after.Allocated > before.Allocated-(n-4*pageSize) {
		t.Errorf("Allocated %d -> %d: Discard of %d bytes gave back too little",
			before.Allocated, after.Allocated, n-200)
	}
	got := make([]byte, n)
	if err := f.Load(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, n)
	copy(want[:100], p)
	copy(want[n-100:], p)
	if !bytes.Equal(got, want) {
		t.Error("contents after Discard are not zero in the discarded range")
	}
	// Writing into the hole again reserves it again.
	if err := f.Store(p[:10], n/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Load(got[:10], n/2); err != nil || !bytes.Equal(got[:10], p[:10]) {
		t.Errorf("Store after Discard: %v, %x", err, got[:10])
	}
}

// TestFileLarge maps more than 4 GiB (sparse) to check 64-bit offsets.
func TestFileLarge(t *testing.T) {
	f := newFile(t, Options{})
	offs := []int64{0, 3_200_000_000 - 32, 1<<32 - 8, 5<<30 - 32}
	for _, off := range offs {
		if err := f.Store([]byte("0123456789abcdef0123456789abcdef"), off); err != nil {
			t.Fatalf("Store at %d: %v", off, err)
		}
	}
	for _, off := range offs {
		got := make([]byte, 32)
		if err := f.Load(got, off); err != nil || string(got) != "0123456789abcdef0123456789abcdef" {
			t.Fatalf("Load at %d: %q, %v", off, got, err)
		}
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Mapped < 5<<30 || st.Allocated > 64<<20 {
		t.Errorf("Stat %+v: want > 5 GiB mapped and little allocated", st)
	}
}

// TestFileNoSpaceFileSizeLimit provokes EFBIG with RLIMIT_FSIZE, which
// needs no privileges. The Go runtime ignores SIGXFSZ, so the system calls
// fail instead of killing the process.
func TestFileNoSpaceFileSizeLimit(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skip(err)
	}
	f := newFile(t, Options{})
	if err := f.Store([]byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = 1 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip(err)
	}
	err := f.Store([]byte("x"), 4<<20)
	if err2 := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err2 != nil {
		t.Fatal(err2)
	}
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("Store past RLIMIT_FSIZE: %v, want ErrNoSpace and EFBIG", err)
	}
	got := make([]byte, 4)
	if err := f.Load(got, 0); err != nil || string(got) != "kept" {
		t.Errorf("after failed growth: %q, %v", got, err)
	}
}

// TestFileNoSpaceDir fills a small filesystem. It runs only when
// SCRUBD_XFILE_SMALL_DIR names a directory on one (for example a tmpfs
// mounted with size=8m): the xfile must report ErrNoSpace, not die of SIGBUS.
func TestFileNoSpaceDir(t *testing.T) {
	dir := os.Getenv("SCRUBD_XFILE_SMALL_DIR")
	if dir == "" {
		t.Skip("set SCRUBD_XFILE_SMALL_DIR to a directory on a small filesystem")
	}
	f := newFile(t, Options{Dir: dir})
	p := bytes.Repeat([]byte{1}, 1000)
	var off int64
	var err error
	for ; off < 1<<40; off += int64(len(p)) {
		if err = f.Store(p, off); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("filling the filesystem: %v after %d bytes, want ErrNoSpace", err, off)
	}
	t.Logf("full after %d bytes: %v", off, err)
	// What was stored is intact, and the File still works.
	got := make([]byte, len(p))
	if err := f.Load(got, off-int64(len(p))); err != nil || !bytes.Equal(got, p) {
		t.Errorf("Load of last good record: %v", err)
	}
	if err := f.Discard(0, off/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Store(p, 0); err != nil {
		t.Errorf("Store after Discard freed space: %v", err)
	}
}
