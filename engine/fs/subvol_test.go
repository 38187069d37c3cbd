package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// TestSubvolBasics: a subvolume is a directory with its own inode space,
// listed with its UUID, found by it; the btrfs rules hold at its edges;
// a deletion returns at once, the reaper frees everything, and the
// image checks clean at every step and after a remount.
func TestSubvolBasics(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	sv, err := f.CreateSubvol(RootIno, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if sv.ID != 1 || sv.Path != "/vol" || sv.RootIno != format.SubvolRootIno(1) || sv.UUID == "" || sv.Generation == 0 {
		t.Fatalf("created: %+v", sv)
	}
	if _, err := f.CreateSubvol(RootIno, "vol"); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("again: %v", err)
	}
	a, err := f.Lookup(RootIno, "vol")
	if err != nil || a.Ino != sv.RootIno || a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("lookup: %+v %v", a, err)
	}
	d, err := f.Mkdir(sv.RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatal(err)
	}
	fa, err := f.Create(d.Ino, "file", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if SubvolOf(d.Ino) != 1 || SubvolOf(fa.Ino) != 1 {
		t.Fatalf("inodes %#x %#x not in subvolume 1", d.Ino, fa.Ino)
	}
	data := bytes.Repeat([]byte("subvolume data "), 3000)
	if _, err := f.Write(fa.Ino, data, 0); err != nil {
		t.Fatal(err)
	}
	top, err := f.Create(RootIno, "top", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	// The edges: rename and link across are EXDEV, rmdir is EPERM; a
	// subvolume in a subvolume; renaming the root within its parent works.
	if err := f.Rename(d.Ino, "file", RootIno, "moved", 0); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename across: %v", err)
	}
	if err := f.Rename(RootIno, "top", d.Ino, "top", RenameExchange); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("exchange across: %v", err)
	}
	if _, err := f.Link(top.Ino, d.Ino, "link"); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("link across: %v", err)
	}
	if err := f.Rmdir(RootIno, "vol"); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("rmdir of a subvolume: %v", err)
	}
	if err := f.Rename(RootIno, "top", RootIno, "vol", 0); err == nil {
		t.Fatal("rename over a subvolume worked")
	}
	inner, err := f.CreateSubvol(d.Ino, "inner")
	if err != nil {
		t.Fatal(err)
	}
	if inner.Path != "/vol/d/inner" {
		t.Fatalf("inner: %+v", inner)
	}
	if err := f.Rename(RootIno, "vol", RootIno, "vol2", 0); err != nil {
		t.Fatal(err)
	}
	list, err := f.Subvols()
	if err != nil || len(list) != 2 || list[0].Path != "/vol2" || list[1].Path != "/vol2/d/inner" {
		t.Fatalf("list: %+v %v", list, err)
	}
	u, _ := format.ParseUUID(inner.UUID)
	own, recv, err := f.FindSubvols(u)
	if err != nil || !slices.Equal(own, []uint64{inner.ID}) || len(recv) != 0 {
		t.Fatalf("find: %v %v %v", own, recv, err)
	}
	ru, _ := format.ParseUUID("0123456789abcdef0123456789abcdef")
	if err := f.SetReceivedUUID(sv.ID, ru); err != nil {
		t.Fatal(err)
	}
	if err := f.SetReceivedUUID(inner.ID, ru); err != nil {
		t.Fatal(err)
	}
	if own, recv, err := f.FindSubvols(ru); err != nil || len(own) != 0 || !slices.Equal(recv, []uint64{sv.ID, inner.ID}) {
		t.Fatalf("find received: %v %v %v", own, recv, err)
	}
	if own, recv, err := f.ScanSubvols(ru); err != nil || len(own) != 0 || !slices.Equal(recv, []uint64{sv.ID, inner.ID}) {
		t.Fatalf("scan received: %v %v %v", own, recv, err)
	}
	mustClean(t, f)
	// A subvolume holding another is not deleted.
	if _, err := f.DeleteSubvol(RootIno, "vol2"); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("delete of a subvolume holding one: %v", err)
	}
	if _, err := f.DeleteSubvol(RootIno, "top"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("delete of a file: %v", err)
	}
	before := f.StatFS()
	if _, err := f.DeleteSubvol(d.Ino, "inner"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.DeleteSubvol(RootIno, "vol2"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Lookup(RootIno, "vol2"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup after delete: %v", err)
	}
	f.WaitReaper()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if list, err := f.Subvols(); err != nil || len(list) != 0 {
		t.Fatalf("after the reap: %+v %v", list, err)
	}
	if after := f.StatFS(); after.BlocksFree <= before.BlocksFree {
		t.Fatalf("free blocks %d before, %d after the reap", before.BlocksFree, after.BlocksFree)
	}
	if own, recv, _ := f.FindSubvols(ru); len(own)+len(recv) != 0 {
		t.Fatalf("uuids left: %v %v", own, recv)
	}
	if pin := f.Engine().Pin(); pin.Super().RecoveryPasses&(1<<engine.PassSubvolReap) != 0 {
		pin.Release()
		t.Fatal("pass subvol_reap still required")
	} else {
		pin.Release()
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	defer f.Close()
	if _, err := f.GetAttr(fa.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("a reaped inode: %v", err)
	}
	// Ids are reused once a subvolume is gone.
	if sv, err := f.CreateSubvol(RootIno, fmt.Sprint("again")); err != nil || sv.ID != 1 {
		t.Fatalf("again: %+v %v", sv, err)
	}
	mustClean(t, f)
}

// TestSubvolNeedsFormat17: an older image refuses subvolumes, saying how
// to upgrade.
func TestSubvolNeedsFormat17(t *testing.T) {
	dev := newDev(t)
	e, err := engine.Open(nopClose{dev}, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetFormatVersion(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	e.Close()
	f := mount(t, nopClose{dev}, Options{})
	defer f.Close()
	if _, err := f.CreateSubvol(RootIno, "v"); !errors.Is(err, ErrNoSubvols) || !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("create on 1.6: %v", err)
	}
}
