package disk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

// TestDirectRead: a direct descriptor reads what the File wrote, even
// before a flush (a direct read writes back the dirty pages of its range
// first), refuses unaligned buffers, offsets and lengths and ranges past
// the end, and works after the image's path was renamed.
func TestDirectRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	const size = 1 << 20
	f, err := Create(path, size, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 64<<10)
	for i := range want {
		want[i] = byte(i*31) ^ byte(i>>9)
	}
	if _, err := f.WriteAt(want, 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	d, err := f.OpenDirect()
	if err != nil {
		t.Skipf("no direct reads on this host filesystem: %v", err)
	}
	defer d.Close()
	buf := AlignedBuffer(len(want))
	if p := uintptr(unsafe.Pointer(&buf[0])); p%DirectAlign != 0 || len(buf) != len(want) || cap(buf) != len(want) {
		t.Fatalf("buffer at %#x, len %d cap %d", p, len(buf), cap(buf))
	}
	if _, err := d.ReadAt(buf, 128<<10); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("direct read: %v, equal %v", err, bytes.Equal(buf, want))
	}
	big := AlignedBuffer(2 * DirectAlign)
	for _, c := range []struct {
		p   []byte
		off int64
	}{
		{buf[1 : 1+DirectAlign], 0}, // unaligned buffer
		{buf[:DirectAlign], 512},    // unaligned offset
		{buf[:DirectAlign-512], 0},  // unaligned length
		{big, size - DirectAlign},   // past the end
		{buf[:DirectAlign], -4096},  // negative offset
	} {
		if _, err := d.ReadAt(c.p, c.off); err == nil {
			t.Errorf("read of %d bytes at %d: no error", len(c.p), c.off)
		}
	}
	if _, err := d.ReadAt(big, size-2*DirectAlign); err != nil {
		t.Errorf("read of the last blocks: %v", err)
	}
	f.Close()
	if _, err := f.OpenDirect(); !errors.Is(err, ErrClosed) {
		t.Errorf("OpenDirect on a closed file: %v", err)
	}
}
