package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestDataReader: on an image file the data reader reads past the page
// cache and returns what a buffered read does (bytes written into the
// image an instant before, still in the page cache, included); on a
// memory device it reads through the device; a buffer it cannot read
// directly is read through the page cache, and later reads go that way;
// a range past the filesystem is refused.
func TestDataReader(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := MkfsPath(img, 64<<20, false, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 300 // blocks at the end of the image, free
	want := make([]byte, n*format.BlockSize)
	for i := range want {
		want[i] = byte(i*7) ^ byte(i>>12)
	}
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(want, 64<<20-int64(len(want))); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	e, err := OpenPath(img, Options{CommitInterval: -1, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { mustCheck(t, e); e.Close() }()
	s := e.Pin()
	defer s.Release()
	at := format.BlockNr(s.TotalBlocks() - n)
	r := s.DataReader()
	defer r.Close()
	t.Logf("direct reads: %v", r.Direct())
	buf := r.Buffer(n)
	if err := r.Read(at, buf); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("read: %v, equal %v", err, bytes.Equal(buf, want))
	}
	if err := r.Read(at+n-1, r.Buffer(2)); err == nil {
		t.Fatalf("a read past the filesystem's end: no error")
	}
	odd := make([]byte, 3*format.BlockSize+1)[1:] // never aligned to a page
	if err := r.Read(at+5, odd); err != nil || !bytes.Equal(odd, want[5*format.BlockSize:8*format.BlockSize]) {
		t.Fatalf("unaligned read: %v", err)
	}
	if r.Direct() {
		t.Fatalf("still reading directly after a direct read failed where a buffered one did not")
	}
	if err := r.Read(at, buf); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("read after the fallback: %v", err)
	}

	m, _ := newTestEngine(t, Options{})
	ms := m.Pin()
	defer ms.Release()
	mr := ms.DataReader()
	defer mr.Close()
	if mr.Direct() {
		t.Fatalf("direct reads on a memory device")
	}
	if err := mr.Read(1, mr.Buffer(4)); err != nil {
		t.Fatal(err)
	}
}
