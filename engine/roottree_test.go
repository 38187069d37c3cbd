package engine

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// rootTreeImage makes a populated image and returns its bytes and the
// workload's items.
func rootTreeImage(t *testing.T, opts MkfsOptions) ([]byte, map[format.Key]string) {
	t.Helper()
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, opts); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(11)
	for i := 0; i < 300; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
		if i%60 == 59 {
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return dev.Bytes(), w.clone()
}

// damageRootTree damages the root tree's root block of img as kind says
// ("bitflip", "zero" or "stale": an older generation's root tree block
// copied over it) and returns the block.
func damageRootTree(t *testing.T, img []byte, kind string) format.BlockNr {
	t.Helper()
	sb, _, err := readSuper(disk.NewMemFrom(img))
	if err != nil {
		t.Fatal(err)
	}
	b := sb.Root.Block
	blk := img[int(b)*format.BlockSize : int(b+1)*format.BlockSize]
	switch kind {
	case "bitflip":
		blk[format.HeaderSize+100] ^= 0x10
	case "zero":
		clear(blk)
	case "stale":
		format.Node(blk).SetGen(sb.Root.Gen - 1)
		format.Node(blk).Seal()
	default:
		t.Fatalf("kind %q", kind)
	}
	return b
}

// TestRootTreeFallsBackToBackup: a root tree damaged on disk costs
// nothing: a read-only mount reads every tree through the superblock's
// root backup and says so; a read-write mount also writes a new root tree
// in its first commit and frees the damaged block, after which the check
// is clean; the image remounts healthy with every item.
func TestRootTreeFallsBackToBackup(t *testing.T) {
	for _, kind := range []string{"bitflip", "zero", "stale"} {
		t.Run(kind, func(t *testing.T) {
			img, items := rootTreeImage(t, MkfsOptions{})
			bad := damageRootTree(t, img, kind)
			ro := reopen(t, slices.Clone(img), Options{ReadOnly: true})
			if !ro.Sick(StructRoot) || !strings.Contains(strings.Join(ro.MountInfo().Notes, "\n"), "backup of generation") {
				t.Fatalf("read-only mount: sick %v, notes %q", ro.Sick(StructRoot), ro.MountInfo().Notes)
			}
			s := ro.Pin()
			if got := contents(t, s, format.TreeInode); !maps.Equal(got, items) {
				t.Fatalf("read-only mount reads %d items, want %d", len(got), len(items))
			}
			s.Release()
			ro.Close()

			dev := disk.NewMemFrom(img)
			e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("read-write mount: %v", err)
			}
			if !e.Sick(StructRoot) {
				t.Fatal("root not sick")
			}
			w := newWorkload(12)
			w.items = items
			for i := 0; i < 50; i++ {
				if err := e.Update(w.step); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
			if got := findingIDs(t, e); len(got) > 0 {
				t.Fatalf("after the first commit: %v", got)
			}
			s = e.Pin()
			if s.Super().Root.Block == bad {
				t.Fatalf("the root tree still lives at the damaged block %d", bad)
			}
			s.Release()
			e.Close()
			e2 := reopen(t, dev.Bytes(), Options{})
			defer e2.Close()
			if e2.Sick(StructRoot) {
				t.Fatal("root still sick after a remount")
			}
			s = e2.Pin()
			defer s.Release()
			if got := contents(t, s, format.TreeInode); !maps.Equal(got, w.items) {
				t.Fatalf("after a remount: %d items, want %d", len(got), len(w.items))
			}
			mustCheck(t, e2)
		})
	}
}

// TestRootTreeWithoutBackups: a format 1.1 image has no root backups: a
// damaged root tree is rebuilt from a header scan (roottree_scan.go) at
// the open, which says so; the check is clean after the first commit.
func TestRootTreeWithoutBackups(t *testing.T) {
	img, items := rootTreeImage(t, MkfsOptions{NoRmapMaps: true})
	damageRootTree(t, img, "zero")
	e, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	if notes := strings.Join(e.MountInfo().Notes, "\n"); !e.Sick(StructRoot) || !strings.Contains(notes, "header scan") {
		t.Fatalf("sick %v, notes %q", e.Sick(StructRoot), notes)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := findingIDs(t, e); len(got) > 0 {
		t.Fatalf("after the first commit: %v", got)
	}
	s := e.Pin()
	defer s.Release()
	if got := contents(t, s, format.TreeInode); !maps.Equal(got, items) {
		t.Fatalf("%d items, want %d", len(got), len(items))
	}
}

// TestRootTreeDamagedInUse: the root tree's block goes bad on disk while
// mounted: the next commit replaces the tree instead of failing, marks
// root sick, and the check is clean after it.
func TestRootTreeDamagedInUse(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	w := newWorkload(3)
	for i := 0; i < 100; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	b := s.Super().Root.Block
	s.Release()
	zero := make([]byte, format.BlockSize)
	if _, err := dev.WriteAt(zero, int64(b)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	e.DropCached(b)
	for i := 0; i < 20; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatalf("update with the root tree damaged: %v", err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatalf("commit with the root tree damaged: %v", err)
	}
	if !e.Sick(StructRoot) {
		t.Fatal("root not sick")
	}
	if got := findingIDs(t, e); len(got) > 0 {
		t.Fatalf("after the commit: %v", got)
	}
}

// TestRebuildRootTree: the repairer's call on a healthy engine writes a
// new tree with every root item and frees the old one's block.
func TestRebuildRootTree(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	w := newWorkload(5)
	for i := 0; i < 50; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
	}
	s := e.Pin()
	before := s.Super().Root.Block
	s.Release()
	items, freed, err := e.RebuildRootTree()
	if err != nil {
		t.Fatal(err)
	}
	if items != uint64(len(format.KnownTrees)-1) || freed != 1 {
		t.Fatalf("rebuilt with %d items, freed %d blocks", items, freed)
	}
	s = e.Pin()
	defer s.Release()
	if s.Super().Root.Block == before {
		t.Fatal("the root tree did not move")
	}
}

// TestRootReplaceCrash: a crash at every flush boundary of the mount that
// replaces a damaged root tree leaves an image that mounts (with the old
// tree and its backup, or the new tree) and checks clean once it has
// committed, with every item.
func TestRootReplaceCrash(t *testing.T) {
	img, items := rootTreeImage(t, MkfsOptions{})
	damageRootTree(t, img, "bitflip")
	rec := disk.NewRecorder(img)
	e, err := Open(nopClose{rec}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	rng := rand.New(rand.NewPCG(4, 4))
	for k := 0; k <= rec.Flushes(); k++ {
		for mi, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d mode %v #%d", k, mode, mi)
			ce, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			if err := ce.Sync(); err != nil {
				t.Fatalf("%s: sync: %v", name, err)
			}
			if got := findingIDs(t, ce); len(got) > 0 {
				t.Fatalf("%s: %v", name, got)
			}
			s := ce.Pin()
			if got := contents(t, s, format.TreeInode); !maps.Equal(got, items) {
				t.Fatalf("%s: %d items, want %d", name, len(got), len(items))
			}
			s.Release()
			ce.Close()
		}
	}
}

// TestIgnoreBadRoots: an image with no root backup (format 1.1) whose root
// tree cannot be read and whose inode tree's root block is lost too (so
// the header scan cannot name it) refuses a read-only mount, and opens
// with IgnoreBadRoots (read-only only): the trees it could not locate are
// lost, every read needing one fails as corrupt, the mount says which.
func TestIgnoreBadRoots(t *testing.T) {
	img, _ := rootTreeImage(t, MkfsOptions{NoRmapMaps: true})
	ro := reopen(t, slices.Clone(img), Options{ReadOnly: true})
	s := ro.Pin()
	inodeRoot := s.v.roots[format.TreeInode].Root.Block
	s.Release()
	ro.Close()
	damageRootTree(t, img, "bitflip")
	clear(img[int(inodeRoot)*format.BlockSize : int(inodeRoot+1)*format.BlockSize])
	if _, err := Open(disk.NewMemFrom(slices.Clone(img)), Options{ReadOnly: true}); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("read-only open without rescue: %v", err)
	}
	if _, err := Open(disk.NewMemFrom(slices.Clone(img)), Options{IgnoreBadRoots: true}); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("read-write open with IgnoreBadRoots: %v", err)
	}
	e, err := Open(disk.NewMemFrom(img), Options{ReadOnly: true, IgnoreBadRoots: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if notes := strings.Join(e.MountInfo().Notes, "\n"); !strings.Contains(notes, "trees lost: [inode]") || !e.Sick(StructRoot) {
		t.Fatalf("notes %q, root sick %v", notes, e.Sick(StructRoot))
	}
	err = e.View(func(tx *Tx) error {
		tr, _ := tx.ReadTree(format.TreeInode)
		_, _, err := tr.Get(format.Key{Obj: 1}, nil)
		return err
	})
	if !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("a read of a lost tree: %v", err)
	}
}
