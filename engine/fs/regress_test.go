package fs

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
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

// TestCheckNamespace: the self-check compares link counts with directory
// entries and finds entries naming missing inodes.
func TestCheckNamespace(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	d, _ := f.Mkdir(RootIno, "d", NewInode{Mode: 0o755})
	a, _ := f.Create(d.Ino, "a", NewInode{Mode: 0o644})
	f.Link(a.Ino, RootIno, "a2")
	b, _ := f.Create(RootIno, "b", NewInode{Mode: 0o644})
	mustClean(t, f)
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, a.Ino)
		if err != nil {
			return err
		}
		in.Nlink = 5
		if err := putInode(tx, a.Ino, in); err != nil {
			return err
		}
		tr, _ := tx.Tree(format.TreeInode)
		_, err = tr.Delete(format.InodeKey(b.Ino))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Sync()
	s := f.e.Pin()
	defer s.Release()
	got := map[string]int{}
	s.Check(context.Background(), func(x engine.Finding) { got[x.Name]++ })
	if got["nlink_mismatch"] != 1 || got["dirent_dangling"] != 1 {
		t.Fatalf("findings %v, want one nlink_mismatch and one dirent_dangling", got)
	}
}
