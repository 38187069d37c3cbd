package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// TestDeletedDamageMount: a crash leaves two inodes unlinked while open,
// and then the deleted tree listing them is damaged (every kind). The
// read-write mount succeeds (the deleted_inodes pass marks the tree sick
// when it cannot read it); unlinks of open files and their last closes
// go on without failing, whatever the damage; the surviving file reads
// back. The scrub's repair rebuilds the list from the inodes with no
// links, the image then checks clean, and the next mount frees every
// inode that was unlinked while open.
func TestDeletedDamageMount(t *testing.T) {
	for _, kind := range damageKinds(inject.Bitflip, inject.DropRecord) {
		t.Run(kind, func(t *testing.T) { deletedDamageMount(t, kind) })
	}
}

func deletedDamageMount(t *testing.T, kind string) {
	dev := disk.NewMem(16384 * bs)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f := csumMount(t, nopClose{dev})
	keep := bytes.Repeat([]byte("keep"), 3000)
	var gone []uint64 // inodes unlinked while open
	for i := 0; i < 3; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(a.Ino, keep, 0); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			break
		}
		if err := f.Open(a.Ino); err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink(fs.RootIno, fmt.Sprintf("f%d", i)); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, a.Ino)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	lv := 0
	if _, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeDeleted, Kind: kind, Seed: 2, Level: &lv}); err != nil {
		f.Close()
		if errors.Is(err, inject.ErrRefused) {
			t.Skipf("not injectable: %v", err)
		}
		t.Fatal(err)
	}
	img := bytes.Clone(dev.Bytes()) // the crash: the two are still open
	f.Close()
	if found := imageFindings(t, img); !slices.ContainsFunc(found, func(s string) bool { return len(s) > 8 && s[:8] == "deleted:" }) {
		t.Fatalf("the check does not see the damage: %v", found)
	}

	dev = disk.NewMemFrom(img)
	f = csumMount(t, nopClose{dev})
	readable := f.Engine().Sick(engine.StructDeleted)
	if kind != inject.DropRecord && !readable {
		t.Fatalf("%s: the deleted structure is not sick after the mount; notes %v", kind, f.Engine().MountInfo().Notes)
	}
	// Writers go on: unlinks of open files, last closes, plain files.
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("g%d", i)
		a, err := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if _, err := f.Write(a.Ino, keep[:1000+i], 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Open(a.Ino); err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink(fs.RootIno, name); err != nil {
			t.Fatalf("unlink of open %s: %v", name, err)
		}
		if i%2 == 0 {
			if err := f.Release(a.Ino); err != nil {
				t.Fatalf("last close of %s: %v", name, err)
			}
			if _, err := f.GetAttr(a.Ino); !errors.Is(err, syscall.ENOENT) {
				t.Fatalf("%s after its last close: %v", name, err)
			}
		} else {
			gone = append(gone, a.Ino)
		}
		if err := f.Fsync(fs.RootIno); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("commit with the deleted tree damaged: %v", err)
	}
	checkKept(t, f, keep)

	rep, err := repair.Scrub(context.Background(), f, "test", repair.ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != repair.StatusCorrected {
		t.Fatalf("scrub --repair: %s, notes %v", rep.Status, rep.Notes)
	}
	if f.Engine().Sick(engine.StructDeleted) {
		t.Fatal("deleted still sick after the repair")
	}
	if rep, err = repair.Scrub(context.Background(), f, "test", repair.ScrubOptions{}); err != nil || rep.Status != repair.StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep)
	}
	f.Close() // a crash would leave the same: nothing is released
	img = bytes.Clone(dev.Bytes())
	if found := imageFindings(t, img); len(found) != 0 {
		t.Fatalf("after the repair: %v", found)
	}
	f = csumMount(t, nopClose{disk.NewMemFrom(img)})
	defer f.Close()
	if f.Engine().Sick(engine.StructDeleted) {
		t.Fatalf("sick after the repaired remount; notes %v", f.Engine().MountInfo().Notes)
	}
	for _, ino := range gone {
		if _, err := f.GetAttr(ino); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("inode %d, unlinked while open, survives the remount: %v", ino, err)
		}
	}
	checkKept(t, f, keep)
}

// damageKinds is every kind, or under -short (the race pass, where each
// case costs minutes) only those given.
func damageKinds(short ...string) []string {
	if testing.Short() {
		return short
	}
	return inject.Kinds
}

// checkKept reads back the file every case keeps.
func checkKept(t *testing.T, f *fs.FS, keep []byte) {
	t.Helper()
	a, err := f.Lookup(fs.RootIno, "f2")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(keep))
	if n, err := f.Read(a.Ino, got, 0); err != nil || n != len(keep) || !bytes.Equal(got, keep) {
		t.Fatalf("f2: %d bytes, %v", n, err)
	}
}

// TestLoggedOpsDamageMount: a damaged logged_ops tree does not refuse a
// read-write mount; writers go on, the scrub's repair writes a new tree,
// and the image then checks clean and mounts with the pass run.
func TestLoggedOpsDamageMount(t *testing.T) {
	for _, kind := range damageKinds(inject.Bitflip) {
		t.Run(kind, func(t *testing.T) {
			dev := disk.NewMem(16384 * bs)
			if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
				t.Fatal(err)
			}
			f := csumMount(t, nopClose{dev})
			keep := bytes.Repeat([]byte("keep"), 3000)
			for i := 0; i < 3; i++ {
				a, err := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.Write(a.Ino, keep, 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			lv := 0
			if _, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeLoggedOps, Kind: kind, Seed: 2, Level: &lv}); err != nil {
				f.Close()
				if errors.Is(err, inject.ErrRefused) {
					t.Skipf("not injectable: %v", err)
				}
				t.Fatal(err)
			}
			img := bytes.Clone(dev.Bytes())
			f.Close()
			dev = disk.NewMemFrom(img)
			f = csumMount(t, nopClose{dev})
			if !f.Engine().Sick(engine.StructLoggedOps) {
				t.Fatalf("logged_ops not sick after the mount; notes %v", f.Engine().MountInfo().Notes)
			}
			for i := 0; i < 10; i++ {
				a, err := f.Create(fs.RootIno, fmt.Sprintf("g%d", i), fs.NewInode{Mode: 0o644})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.Write(a.Ino, keep[:2000], 0); err != nil {
					t.Fatal(err)
				}
				if err := f.Fsync(a.Ino); err != nil {
					t.Fatal(err)
				}
			}
			checkKept(t, f, keep)
			rep, err := repair.Scrub(context.Background(), f, "test", repair.ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil || rep.Status != repair.StatusCorrected {
				t.Fatalf("scrub --repair: %v %+v", err, rep)
			}
			if rep, err = repair.Scrub(context.Background(), f, "test", repair.ScrubOptions{}); err != nil || rep.Status != repair.StatusClean {
				t.Fatalf("second scrub: %v %+v", err, rep)
			}
			f.Close()
			img = bytes.Clone(dev.Bytes())
			if found := imageFindings(t, img); len(found) != 0 {
				t.Fatalf("after the repair: %v", found)
			}
			f = csumMount(t, nopClose{disk.NewMemFrom(img)})
			defer f.Close()
			if f.Engine().Sick(engine.StructLoggedOps) || !slices.Contains(f.Engine().MountInfo().PassesRun, "logged_ops") {
				t.Fatalf("remount: sick %v, passes %v", f.Engine().Sick(engine.StructLoggedOps), f.Engine().MountInfo().PassesRun)
			}
			checkKept(t, f, keep)
		})
	}
}
