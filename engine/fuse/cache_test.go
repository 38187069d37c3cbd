package fuse

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/repair"
)

func nlinkOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Nlink
}

// TestRepairInvalidatesKernelCache: an online repair changes what the
// kernel caches (a link count the inode repair corrects), and the mount
// sees the repaired value at once, though the kernel may cache entries
// and attributes for an hour: the repair's fs.ChangedEvent drops them
// (notify.go). It checks first that the kernel does cache (a change made
// behind the mount's back stays unseen), so the test can fail.
func TestRepairInvalidatesKernelCache(t *testing.T) {
	img := newImage(t)
	m := mountWith(t, img, Options{EntryTimeout: time.Hour, AttrTimeout: time.Hour})
	d, err := m.fsys.Mkdir(fs.RootIno, "d", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	f, err := m.fsys.Create(d.Ino, "f", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(m.dir, "d", "f")
	setNlink := func(n uint32) {
		t.Helper()
		if err := m.fsys.Engine().Update(func(tx *engine.Tx) error {
			_, _, err := fs.SetNlink(tx, f.Ino, n)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Damage the kernel reads and caches: link count 3 for one name.
	setNlink(3)
	if n := nlinkOf(t, path); n != 3 {
		t.Fatalf("link count %d through the mount, want the damaged 3", n)
	}
	// A change behind the mount's back stays unseen: the kernel caches.
	setNlink(4)
	if n := nlinkOf(t, path); n != 3 {
		t.Fatalf("link count %d through the mount after a change behind its back, want the cached 3 (is the attribute cache off?)", n)
	}
	if err := m.fsys.Sync(); err != nil { // the scrub checks the last commit
		t.Fatal(err)
	}
	rep, err := repair.Scrub(context.Background(), m.fsys, m.dir, repair.ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Repaired == 0 {
		t.Fatalf("the scrub repaired nothing: %v", rep.Notes)
	}
	// At once, not an hour later.
	if n := nlinkOf(t, path); n != 1 {
		t.Fatalf("link count %d through the mount after the repair, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(m.dir, "d", "f")); err != nil {
		t.Fatal(err)
	}
}

// TestChangedEventDropsEntries: names the kernel caches are dropped by an
// fs.ChangedEvent (what a repairer publishes after a rebuild) — here a
// rename made behind the mount's back, which the kernel would otherwise
// keep seeing for an hour.
func TestChangedEventDropsEntries(t *testing.T) {
	img := newImage(t)
	m := mountWith(t, img, Options{EntryTimeout: time.Hour, AttrTimeout: time.Hour})
	d, err := m.fsys.Mkdir(fs.RootIno, "d", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.fsys.Create(d.Ino, "old", fs.NewInode{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	oldPath, newPath := filepath.Join(m.dir, "d", "old"), filepath.Join(m.dir, "d", "new")
	if _, err := os.Stat(oldPath); err != nil {
		t.Fatal(err)
	}
	if err := m.fsys.Rename(d.Ino, "old", d.Ino, "new", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(oldPath); err != nil {
		t.Fatalf("stat of the cached name after a rename behind the mount's back: %v (is the entry cache off?)", err)
	}
	m.fsys.ExternalChange("dir")
	if _, err := os.Stat(oldPath); !os.IsNotExist(err) {
		t.Fatalf("stat of the renamed name after the change event: %v, want ENOENT", err)
	}
	if _, err := os.Stat(newPath); err != nil {
		t.Fatal(err)
	}
}
