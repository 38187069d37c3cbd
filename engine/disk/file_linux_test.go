package disk

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// allocated returns the bytes the file system allocated for a file.
func allocated(fi fs.FileInfo) (int64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Blocks * 512, true
}

// TestBlockDevice runs against a real block device named by the
// SCRUBD_TEST_BLOCKDEV environment variable, for example a loop device.
// It writes nothing: it only opens the device and checks what Create
// refuses.
func TestBlockDevice(t *testing.T) {
	path := os.Getenv("SCRUBD_TEST_BLOCKDEV")
	if path == "" {
		t.Skip("SCRUBD_TEST_BLOCKDEV not set")
	}
	f, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := f.Size()
	end, err := seekEndSize(f.f)
	if err != nil || size <= 0 || size != end {
		t.Fatalf("block device size %d, seek-end size %d, %v", size, end, err)
	}

	if _, err := Create(path, 4096, false); !errors.Is(err, ErrExists) {
		t.Errorf("Create(block device, no force) = %v, want ErrExists", err)
	}
	if _, err := Create(path, size+4096, true); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Create(block device, too large) = %v, want ErrOutOfRange", err)
	}
	for _, want := range []int64{0, 4096} {
		c, err := Create(path, want, true)
		if err != nil {
			t.Fatalf("Create(block device, %d, force): %v", want, err)
		}
		if want == 0 {
			want = size
		}
		if c.Size() != want {
			t.Errorf("Create(block device, force).Size() = %d, want %d", c.Size(), want)
		}
		if _, err := c.ReadAt(make([]byte, 1), want); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read past the Create size = %v, want ErrOutOfRange", err)
		}
		c.Close()
	}
}

func TestImageLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	w, err := Create(path, 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("second read-write open: %v, want ErrBusy", err)
	}
	if _, err := Open(path, true); !errors.Is(err, ErrBusy) {
		t.Fatalf("read-only open of an image open for writing: %v, want ErrBusy", err)
	}
	if _, err := Create(path, 1<<20, true); !errors.Is(err, ErrBusy) {
		t.Fatalf("forced create over an open image: %v, want ErrBusy", err)
	}
	w.Close()
	r1, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(path, true)
	if err != nil {
		t.Fatalf("two readers: %v", err)
	}
	r1.Close()
	r2.Close()
}

func TestPreallocate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	d, err := Create(path, 8<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if n, ok := allocated(fi); ok && n >= 8<<20 {
		d.Close()
		t.Skipf("the host filesystem allocated a new sparse file in full (%d bytes)", n)
	}
	var calls int
	var last int64
	if err := d.Preallocate(func(done, total int64) { calls++; last = done }); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Stat(path)
	if n, ok := allocated(fi); !ok || n < 8<<20 {
		t.Fatalf("after Preallocate %d bytes allocated, want %d", n, 8<<20)
	}
	if calls != 2 || last != 8<<20 {
		t.Fatalf("progress: %d calls, last %d", calls, last)
	}
	buf := make([]byte, 4096)
	if _, err := d.ReadAt(buf, 4<<20); err != nil || buf[0] != 0 {
		t.Fatalf("read back: %v", err)
	}
	d.Close()
	ro, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Preallocate(nil); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Preallocate: %v", err)
	}
}
