package repair

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// rightmostLeaf returns the last leaf of tree id in img.
func rightmostLeaf(t *testing.T, img string, id format.TreeID) format.BlockNr {
	t.Helper()
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true, CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := f.Engine().Pin()
	defer s.Release()
	tr, ok := s.Tree(id)
	if !ok {
		t.Fatalf("no %s tree", id)
	}
	p, level := tr.Root, tr.Level
	for level > 0 {
		n, err := tr.Store.Read(id, p, level)
		if err != nil {
			t.Fatal(err)
		}
		c, g := n.Child(n.NrItems() - 1)
		p, level = eb.Ptr{Block: c, Gen: g}, level-1
	}
	return p.Block
}

// TestCreateIntoDamagedInodeLeaf: the inode tree's last leaf — where every
// new inode goes — is damaged. A create fails with EIO before it changes
// anything (the mount stays read-write: writes to existing files and syncs
// go on, and inode is marked sick); the repair rebuilds the tree, and
// creates work again.
func TestCreateIntoDamagedInodeLeaf(t *testing.T) {
	base := populatedImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	last := rightmostLeaf(t, base, format.TreeInode)
	img := filepath.Join(t.TempDir(), "fs.img")
	lv := 0
	found := false
	for seed := uint64(1); seed < 200 && !found; seed++ {
		if err := os.WriteFile(img, pristine, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := inject.Offline(img, inject.Options{Tree: format.TreeInode, Kind: inject.Bitflip, Seed: seed, Level: &lv})
		if err != nil {
			t.Fatal(err)
		}
		found = format.BlockNr(res.Block) == last
	}
	if !found {
		t.Fatalf("no seed damages leaf %d", last)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := f.Create(fs.RootIno, fmt.Sprintf("new-%d", i), fs.NewInode{Mode: 0o644})
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("create into the damaged leaf: %v, want EIO", err)
		}
	}
	if ro, why := f.Engine().ReadOnly(); ro {
		t.Fatalf("read-only after a failed create: %v", why)
	}
	a, err := f.Lookup(fs.RootIno, "f0001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte("still writable"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, populatedWant(1)[:14], 0); err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusCorrected {
		t.Fatalf("status %s; notes %v", rep.Status, rep.Notes)
	}
	if _, err := f.Create(fs.RootIno, "new-after", fs.NewInode{Mode: 0o644}); err != nil {
		t.Fatalf("create after the repair: %v", err)
	}
	f = remountClean(t, f, img)
	if _, err := f.Lookup(fs.RootIno, "new-after"); err != nil {
		t.Fatal(err)
	}
	f.Close()
}
