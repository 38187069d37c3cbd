package disk

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCreate(t *testing.T) {
	const size = 64 << 20
	path := filepath.Join(t.TempDir(), "img")
	f, err := Create(path, size, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != size || f.Path() != path || f.ReadOnly() {
		t.Fatalf("Create: Size %d, Path %q, ReadOnly %v", f.Size(), f.Path(), f.ReadOnly())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Fatalf("file is %d bytes, want %d", fi.Size(), size)
	}
	if n, ok := allocated(fi); ok && n >= size {
		t.Errorf("image is not sparse: %d bytes allocated", n)
	}
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, size-4096); err != nil || !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatalf("new image does not read as zeroes: %v", err)
	}
}

// writeFile makes a file holding data, for Create to find.
func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCreateExisting(t *testing.T) {
	old := pattern(3, 10000)
	cases := []struct {
		name     string
		existing []byte // nil: a directory is at the path
		size     int64
		force    bool
		wantErr  error // nil: success; errAny: some error that is not ErrExists
	}{
		{"non-empty refused", old, 8192, false, ErrExists},
		{"empty file used", []byte{}, 8192, false, nil},
		{"forced over larger file", old, 4096, true, nil},
		{"forced over smaller file", old, 1 << 20, true, nil},
		{"forced over empty file", []byte{}, 4096, true, nil},
		{"directory refused", nil, 4096, false, errAny},
		{"directory refused with force", nil, 4096, true, errAny},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img")
			if tc.existing == nil {
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
			} else {
				path = writeFile(t, tc.existing)
			}
			f, err := Create(path, tc.size, tc.force)
			switch {
			case tc.wantErr == errAny:
				if err == nil || errors.Is(err, ErrExists) {
					t.Fatalf("Create = %v, want an error other than ErrExists", err)
				}
				return
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Create = %v, want %v", err, tc.wantErr)
				}
				got, rerr := os.ReadFile(path)
				if rerr != nil || !bytes.Equal(got, tc.existing) {
					t.Fatal("refused Create changed the file")
				}
				return
			case err != nil:
				t.Fatalf("Create: %v", err)
			}
			defer f.Close()
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, make([]byte, tc.size)) {
				t.Fatalf("image is %d bytes, not %d zero bytes", len(got), tc.size)
			}
		})
	}
}

// errAny marks a case that must fail, but not with a particular sentinel.
var errAny = errors.New("any error")

func TestCreateBadArgs(t *testing.T) {
	dir := t.TempDir()
	if _, err := Create(filepath.Join(dir, "img"), -1, false); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Create(size -1) = %v, want ErrOutOfRange", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "img")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create(size -1) left a file behind: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "missing", "img"), 4096, false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create in a missing directory = %v, want fs.ErrNotExist", err)
	}
}

// fakeInfo is an fs.FileInfo with a chosen mode and size.
type fakeInfo struct {
	mode fs.FileMode
	size int64
}

func (fi fakeInfo) Name() string       { return "fake" }
func (fi fakeInfo) Size() int64        { return fi.size }
func (fi fakeInfo) Mode() fs.FileMode  { return fi.mode }
func (fi fakeInfo) ModTime() time.Time { return time.Time{} }
func (fi fakeInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi fakeInfo) Sys() any           { return nil }

func TestCheckCreate(t *testing.T) {
	const (
		regular = fs.FileMode(0o644)
		block   = fs.ModeDevice | 0o660
		char    = fs.ModeDevice | fs.ModeCharDevice | 0o666
	)
	cases := []struct {
		name   string
		fi     fakeInfo
		force  bool
		ok     bool
		exists bool // the refusal wraps ErrExists
	}{
		{"empty file", fakeInfo{regular, 0}, false, true, false},
		{"empty file forced", fakeInfo{regular, 0}, true, true, false},
		{"non-empty file", fakeInfo{regular, 1}, false, false, true},
		{"non-empty file forced", fakeInfo{regular, 1}, true, true, false},
		// A block device's FileInfo size is 0; it needs force anyway.
		{"block device", fakeInfo{block, 0}, false, false, true},
		{"block device forced", fakeInfo{block, 0}, true, true, false},
		{"char device", fakeInfo{char, 0}, true, false, false},
		{"directory", fakeInfo{fs.ModeDir | 0o755, 0}, true, false, false},
		{"fifo", fakeInfo{fs.ModeNamedPipe | 0o644, 0}, true, false, false},
	}
	for _, tc := range cases {
		err := checkCreate(tc.fi, tc.force)
		if (err == nil) != tc.ok || errors.Is(err, ErrExists) != tc.exists {
			t.Errorf("%s: checkCreate(force=%v) = %v; want ok=%v, ErrExists=%v", tc.name, tc.force, err, tc.ok, tc.exists)
		}
	}
}

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	f, err := Create(path, 3*4096, false)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(9, 4096)
	if _, err := f.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	for _, readOnly := range []bool{false, true} {
		f, err := Open(path, readOnly)
		if err != nil {
			t.Fatalf("Open(readOnly=%v): %v", readOnly, err)
		}
		if f.Size() != 3*4096 || f.ReadOnly() != readOnly {
			t.Errorf("Open(readOnly=%v): Size %d, ReadOnly %v", readOnly, f.Size(), f.ReadOnly())
		}
		got := make([]byte, 4096)
		if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) {
			t.Errorf("Open(readOnly=%v): read back %v, match %v", readOnly, err, bytes.Equal(got, data))
		}
		_, werr := f.WriteAt(got, 0)
		if readOnly && !errors.Is(werr, ErrReadOnly) {
			t.Errorf("WriteAt on read-only File = %v, want ErrReadOnly", werr)
		}
		if !readOnly && werr != nil {
			t.Errorf("WriteAt: %v", werr)
		}
		if err := f.Flush(); err != nil {
			t.Errorf("Flush(readOnly=%v): %v", readOnly, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := Open(filepath.Join(t.TempDir(), "missing"), false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want fs.ErrNotExist", err)
	}
	if _, err := Open(t.TempDir(), true); err == nil {
		t.Error("Open(directory) succeeded")
	}
	if _, err := os.Stat(os.DevNull); err == nil {
		if f, err := Open(os.DevNull, true); err == nil {
			f.Close()
			t.Errorf("Open(%s) succeeded; character devices are not block devices", os.DevNull)
		}
	}
}

// TestFileShortRead: a file shrunk behind the engine's back gives
// ErrShortIO, not a silent partial buffer.
func TestFileShortRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	f, err := Create(path, 8192, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(path, 6000); err != nil {
		t.Fatal(err)
	}
	n, err := f.ReadAt(make([]byte, 4096), 4096)
	if !errors.Is(err, ErrShortIO) || n != 6000-4096 {
		t.Fatalf("ReadAt past the shrunk end = %d, %v; want %d, ErrShortIO", n, err, 6000-4096)
	}
}

// TestWriteback: writing a range back (and waiting) keeps the data, a bad
// range is an error, a read-only File has nothing to write back, and a
// closed one says so.
func TestWriteback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	f, err := Create(path, 64*4096, false)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3, 16*4096)
	if _, err := f.WriteAt(data, 8*4096); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []bool{false, true} {
		if err := f.Writeback(8*4096, int64(len(data)), wait); err != nil {
			t.Fatalf("Writeback(wait=%v): %v", wait, err)
		}
	}
	if err := f.Writeback(-4096, 4096, true); err == nil {
		t.Error("Writeback of a negative offset succeeded")
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := f.Writeback(0, 4096, true); !errors.Is(err, ErrClosed) {
		t.Errorf("Writeback after Close = %v, want ErrClosed", err)
	}
	ro, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Writeback(0, 4096, true); err != nil {
		t.Errorf("Writeback on a read-only File: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := ro.ReadAt(got, 8*4096); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back after Writeback: %v, match %v", err, bytes.Equal(got, data))
	}
}
