package fs

import (
	"fmt"
	"syscall"
	"testing"
)

func TestOverwriteCommittedFirstBlock(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	a, _ := f.Create(RootIno, "x", NewInode{})
	f.Write(a.Ino, make([]byte, 8192), 0)
	f.Sync()
	if _, err := f.Write(a.Ino, []byte("y"), 5); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDiskFullStaysWritable fills the image until a write fails with
// ENOSPC; the filesystem must stay writable and lose nothing.
func TestDiskFullStaysWritable(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	chunk := make([]byte, 1<<20)
	var files []uint64
	for i := 0; ; i++ {
		a, err := f.Create(RootIno, fmt.Sprintf("f%d", i), NewInode{})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, a.Ino)
		chunk[0] = byte(i)
		if _, err := f.Write(a.Ino, chunk, 0); err != nil {
			if Errno(err) != syscall.ENOSPC {
				t.Fatalf("write %d: %v, want ENOSPC", i, err)
			}
			break
		}
		if i > 200 {
			t.Fatal("64 MiB image never filled")
		}
	}
	if ro, err := f.Engine().ReadOnly(); ro {
		t.Fatalf("ENOSPC made the engine read-only: %v", err)
	}
	if _, err := f.Mkdir(RootIno, "still-writable", NewInode{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	// Deleting frees space again (after the commit releases it).
	if err := f.Unlink(RootIno, "f0"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(files[len(files)-1], chunk, 0); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	defer f.Close()
	buf := make([]byte, 1)
	for i, ino := range files[1:] {
		if _, err := f.Read(ino, buf, 0); err != nil || buf[0] != byte(i+1) {
			t.Fatalf("file %d after remount: %v %d", i+1, err, buf[0])
		}
	}
	mustClean(t, f)
}

// TestReadOnlyMountReads opens a filesystem read-only and reads it.
func TestReadOnlyMountReads(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	a, _ := f.Create(RootIno, "r", NewInode{})
	f.Write(a.Ino, []byte("ro"), 0)
	f.Close()
	f = mount(t, nopClose{dev}, Options{ReadOnly: true})
	defer f.Close()
	at, err := f.Resolve("/r")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if n, err := f.Read(at.Ino, buf, 0); err != nil || string(buf[:n]) != "ro" {
		t.Fatalf("read-only read: %q %v", buf[:n], err)
	}
	if _, err := f.Create(RootIno, "w", NewInode{}); Errno(err) != syscall.EROFS {
		t.Fatalf("create on a read-only mount: %v", err)
	}
}
