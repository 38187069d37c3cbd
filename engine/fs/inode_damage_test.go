package fs_test

// An external test: the inject package it damages the inode tree with
// reaches the filesystem layer itself.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// inodeDamageImage makes an image of 300 files (an inode tree two levels
// deep) and returns it with what each file holds, by name.
func inodeDamageImage(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 64<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for i := 0; i < 300; i++ {
		name := fmt.Sprintf("f%03d", i)
		a, err := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte(name), 100+i)
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		files[name] = data
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img, files
}

// TestInodeTreeDamageMount damages the inode tree of an unmounted image
// with every kind, at a leaf and at its interior (root) node, and mounts
// it: the mount succeeds read-write; damage met marks the inode
// structure sick; a file whose item the damage hides fails with EIO
// alone (an interior node lost hides them all, the root directory's
// included), never EROFS; every other file reads back as written and
// takes writes; the repair then makes the image clean and every file
// readable again.
func TestInodeTreeDamageMount(t *testing.T) {
	base, files := inodeDamageImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range damageKinds(inject.Bitflip) {
		for level := 0; level <= 1; level++ {
			t.Run(fmt.Sprintf("%s/level=%d", kind, level), func(t *testing.T) {
				img := filepath.Join(t.TempDir(), "fs.img")
				if err := os.WriteFile(img, pristine, 0o600); err != nil {
					t.Fatal(err)
				}
				lv := level
				res, err := inject.Offline(img, inject.Options{Tree: format.TreeInode, Kind: kind, Seed: 5, Level: &lv})
				if err != nil {
					t.Fatal(err)
				}
				f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
				if err != nil {
					t.Fatalf("mount after %s: %v", res.Detail, err)
				}
				defer func() {
					if f != nil {
						f.Close()
					}
				}()
				readable, hidden := 0, 0
				for name, want := range files {
					a, err := f.Lookup(fs.RootIno, name)
					if err != nil {
						// A dropped record leaves a valid tree without
						// the item: the entry names no inode (ENOENT).
						if !errors.Is(err, syscall.EIO) && (kind != inject.DropRecord || !errors.Is(err, syscall.ENOENT)) {
							t.Fatalf("%s: lookup: %v, want EIO or success", name, err)
						}
						hidden++
						continue
					}
					got := make([]byte, len(want)+1)
					if n, err := f.Read(a.Ino, got, 0); err != nil || !bytes.Equal(got[:n], want) {
						t.Fatalf("%s: %d bytes read (%v), want %d", name, n, err, len(want))
					}
					if _, err := f.Write(a.Ino, []byte("x"), int64(len(want))); err != nil {
						t.Fatalf("%s: write: %v", name, err)
					}
					readable++
				}
				if hidden == 0 {
					t.Fatalf("%s: every file readable", res.Detail)
				}
				if level == 1 && kind != inject.DropRecord && readable != 0 {
					t.Fatalf("%s at the interior node: %d files readable", res.Detail, readable)
				}
				if kind != inject.DropRecord && !f.Engine().Sick(engine.StructInode) {
					t.Fatal("damage met, the inode structure is not sick")
				}
				if _, err := f.Create(fs.RootIno, "new", fs.NewInode{Mode: 0o644}); err != nil && !errors.Is(err, syscall.EIO) {
					t.Fatalf("create: %v, want success or EIO", err)
				}
				if ro, why := f.Engine().ReadOnly(); ro {
					t.Fatalf("read-only after %s: %v", res.Detail, why)
				}
				rep, err := repair.Scrub(context.Background(), f, img, repair.ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
				if err != nil || rep.Status != repair.StatusCorrected {
					t.Fatalf("repair: %v %+v", err, rep)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				f = nil
				if after := imageFindings(t, mustRead(t, img)); len(after) != 0 {
					t.Fatalf("after the repair: %v", after)
				}
				f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
				if err != nil {
					t.Fatal(err)
				}
				for name, want := range files {
					a, err := f.Lookup(fs.RootIno, name)
					if err != nil {
						t.Fatalf("%s after the repair: %v", name, err)
					}
					got := make([]byte, a.Size)
					if n, err := f.Read(a.Ino, got, 0); err != nil || !bytes.HasPrefix(got[:n], want) {
						t.Fatalf("%s after the repair: %d bytes read (%v), want %d first", name, n, err, len(want))
					}
				}
			})
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
