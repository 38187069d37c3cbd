package fs

import (
	"bytes"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

type nopClose struct{ disk.Device }

func (nopClose) Close() error { return nil }

func TestSmoke(t *testing.T) {
	dev := disk.NewMem(8192 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(RootIno, "hello", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 2000)
	if _, err := f.Write(a.Ino, data, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte("XYZ"), 5000); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 100), data...)
	copy(want[5000:], "XYZ")
	got := make([]byte, len(want)+50)
	n, err := f.Read(a.Ino, got, 0)
	if err != nil || n != len(want) || !bytes.Equal(got[:n], want) {
		t.Fatalf("read %d %v", n, err)
	}
	if err := f.Fsync(a.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte("later"), 7000); err != nil {
		t.Fatal(err)
	}
	copy(want[7000:], "later")
	if err := f.Fsync(a.Ino); err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v", f.Stats())
	// Crash: reopen the device as it is, without Close.
	img := dev.Bytes()
	f2, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mount: %+v", f2.Engine().MountInfo())
	a2, err := f2.Resolve("/hello")
	if err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(want))
	n, err = f2.Read(a2.Ino, got, 0)
	if err != nil || !bytes.Equal(got[:n], want) {
		t.Fatalf("after replay: read %d %v", n, err)
	}
}
