package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// spoilBackups makes the root backups of every superblock copy of img
// unusable as mode says: "none" turns the image into one without backups
// (the feature bit off, the slots zero: what format 1.2 wrote), "stale"
// drops the backup of the superblock's own generation, leaving only
// older generations' roots.
func spoilBackups(t *testing.T, img []byte, mode string) {
	t.Helper()
	total := uint64(len(img)) / format.BlockSize
	for _, at := range format.SuperBlocks(total) {
		blk := img[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
		sb, err := format.DecodeSuper(blk, at)
		if err != nil {
			t.Fatal(err)
		}
		switch mode {
		case "none":
			sb.Incompat &^= format.IncompatRootBackups
			sb.Backups = [format.NumRootBackups]format.RootBackup{}
		case "stale":
			sb.Backups[sb.Gen%format.NumRootBackups] = format.RootBackup{}
		default:
			t.Fatalf("mode %q", mode)
		}
		sb.Encode(blk)
	}
}

// TestRootScanRebuild: a damaged root tree with no usable root backup
// (none at all, or only older generations') is rebuilt from a scan of
// every block's header: a read-only mount reads every tree through the
// scanned roots, a read-write mount writes a new root tree in its first
// commit; the check is clean after it and a remount reads every item.
func TestRootScanRebuild(t *testing.T) {
	for _, mode := range []string{"none", "stale"} {
		for _, kind := range []string{"bitflip", "zero", "stale"} {
			t.Run(mode+"/"+kind, func(t *testing.T) {
				img, items := rootTreeImage(t, MkfsOptions{})
				spoilBackups(t, img, mode)
				bad := damageRootTree(t, img, kind)
				ro := reopen(t, slices.Clone(img), Options{ReadOnly: true})
				notes := strings.Join(ro.MountInfo().Notes, "\n")
				if !ro.Sick(StructRoot) || !strings.Contains(notes, "header scan") {
					t.Fatalf("read-only mount: sick %v, notes %q", ro.Sick(StructRoot), notes)
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
				rw := e.MountInfo().Rewritten
				if len(rw) == 0 || !strings.Contains(rw[len(rw)-1].Detail, "header scan") {
					t.Fatalf("the open's repair is not reported: %v", rw)
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
}

// TestRootScanFindsCommitted: on a healthy image the scan finds, for
// every tree, exactly the root the root tree names, with its item count,
// also with the superblock's backups gone; the stale backups refuse
// nothing that is current.
func TestRootScanFindsCommitted(t *testing.T) {
	for _, mode := range []string{"", "none", "stale"} {
		img, _ := rootTreeImage(t, MkfsOptions{})
		if mode != "" {
			spoilBackups(t, img, mode)
		}
		e := reopen(t, slices.Clone(img), Options{ReadOnly: true})
		scan, differ, err := e.RootScanCheck(context.Background())
		e.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(differ) > 0 || len(scan.Missing) > 0 || len(scan.Found) != len(format.KnownTrees)-1 {
			t.Fatalf("backups %q: differ %v, missing %v, %s", mode, differ, scan.Missing, scan)
		}
		if scan.Blocks != uint64(len(img))/format.BlockSize {
			t.Fatalf("scanned %d blocks of %d", scan.Blocks, len(img)/format.BlockSize)
		}
	}
}

// TestRootScanMissingTree: when the root tree and another tree's root
// block are both lost, the scan cannot name that tree: the open refuses
// the image (naming the tree), and the rescue mount serves every other
// tree, the lost one failing as corrupt.
func TestRootScanMissingTree(t *testing.T) {
	img, items := rootTreeImage(t, MkfsOptions{})
	spoilBackups(t, img, "none")
	e := reopen(t, slices.Clone(img), Options{ReadOnly: true})
	s := e.Pin()
	dirRoot := s.v.roots[format.TreeDir].Root.Block
	s.Release()
	e.Close()
	damageRootTree(t, img, "zero")
	clear(img[int(dirRoot)*format.BlockSize : int(dirRoot+1)*format.BlockSize])
	_, err := Open(disk.NewMemFrom(slices.Clone(img)), Options{CommitInterval: -1})
	if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), "dir") {
		t.Fatalf("open: %v", err)
	}
	r, err := Open(disk.NewMemFrom(img), Options{ReadOnly: true, IgnoreBadRoots: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if notes := strings.Join(r.MountInfo().Notes, "\n"); !strings.Contains(notes, "trees lost: [dir]") {
		t.Fatalf("notes %q", notes)
	}
	s = r.Pin()
	defer s.Release()
	if got := contents(t, s, format.TreeInode); !maps.Equal(got, items) {
		t.Fatalf("rescue mount reads %d items, want %d", len(got), len(items))
	}
}

// TestRootScanHostile: blocks with valid-looking headers planted all
// over an image whose root tree is lost — another filesystem's, newer
// than the superblock, interior nodes that loop or point at the wrong
// tree's blocks, old generations copied over free blocks — and random
// damage on top (odd seeds): the open never panics or hangs, and when it succeeds
// every item it reads is right and the check after its commit is clean.
func TestRootScanHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("single-goroutine and slow under the race detector: runs in the full pass")
	}
	pristine, items := rootTreeImage(t, MkfsOptions{})
	spoilBackups(t, pristine, "none")
	sb, _, err := readSuper(disk.NewMemFrom(pristine))
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(len(pristine)) / format.BlockSize
	for seed := uint64(0); seed < 12; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			img := slices.Clone(pristine)
			damageRootTree(t, img, "zero")
			rng := rand.New(rand.NewPCG(seed, 99))
			free := freeBlocks(t, pristine)
			plant := func(owner format.TreeID, gen format.Gen, level int, fsid format.FSID, kids func(n format.Node, at format.BlockNr)) {
				at := free[rng.IntN(len(free))]
				blk := img[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
				n := format.InitNode(blk, fsid, at, gen, owner, level)
				if kids != nil {
					kids(n, at)
				}
				n.Seal()
			}
			other := sb.FSID
			other[0] ^= 0xff
			for i := 0; i < 20; i++ {
				owner := format.KnownTrees[1+rng.IntN(len(format.KnownTrees)-1)]
				cases := 4 // planted headers only: the scan must see through them
				if seed%2 == 1 {
					cases = 5 // and random damage: refusing is allowed, reading wrong is not
				}
				switch rng.IntN(cases) {
				case 0: // another filesystem's
					plant(owner, sb.Gen, 3, other, nil)
				case 1: // newer than the superblock
					plant(owner, sb.Gen+1+format.Gen(rng.IntN(3)), 2, sb.FSID, nil)
				case 2: // a loop: an interior node naming itself
					plant(owner, sb.Gen, 1+rng.IntN(4), sb.FSID, func(n format.Node, at format.BlockNr) {
						n.InsertPtr(0, format.Key{}, at, sb.Gen)
					})
				case 3: // pointing into another tree, or anywhere
					plant(owner, sb.Gen, 1, sb.FSID, func(n format.Node, at format.BlockNr) {
						n.InsertPtr(0, format.Key{}, format.BlockNr(rng.Uint64N(total+10)), format.Gen(rng.Uint64N(uint64(sb.Gen)+1)))
					})
				case 4: // random bytes over a random block
					at := rng.Uint64N(total)
					if at >= 300 { // keep the superblock copies
						for j := 0; j < 64; j++ {
							img[int(at)*format.BlockSize+rng.IntN(format.BlockSize)] = byte(rng.Uint32())
						}
					}
				}
			}
			dev := disk.NewMemFrom(img)
			e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
			if err != nil {
				if !errors.Is(err, format.ErrCorrupt) || seed%2 == 0 {
					t.Fatalf("open: %v", err)
				}
				return
			}
			defer e.Close()
			if seed%2 == 0 {
				if err := e.Sync(); err != nil {
					t.Fatal(err)
				}
				if got := findingIDs(t, e); len(got) > 0 {
					t.Fatalf("after the first commit: %v", got)
				}
			}
			s := e.Pin()
			got := map[format.Key]string{}
			tr, _ := s.Tree(format.TreeInode)
			rerr := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
				got[k] = string(v)
				return true
			})
			s.Release()
			for k, v := range got {
				if items[k] != v {
					t.Fatalf("item %s reads back wrong", k)
				}
			}
			if rerr == nil && len(got) != len(items) {
				t.Fatalf("%d items read, want %d", len(got), len(items))
			}
		})
	}
}

// freeBlocks lists the blocks of img the free-space tree holds, above
// the superblock copies.
func freeBlocks(t *testing.T, img []byte) []format.BlockNr {
	t.Helper()
	e := reopen(t, slices.Clone(img), Options{ReadOnly: true})
	defer e.Close()
	s := e.Pin()
	defer s.Release()
	tr, _ := s.Tree(format.TreeFree)
	var out []format.BlockNr
	if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		for b := k.Obj; b < k.Obj+k.Off && len(out) < 4096; b++ {
			if b > 300 {
				out = append(out, format.BlockNr(b))
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no free blocks")
	}
	return out
}

// TestRootScanCrash: a crash at every flush boundary of the mount that
// rebuilds a root tree found by the scan leaves an image that mounts
// (by a scan again, or through the new tree) and checks clean once it
// has committed, with every item.
func TestRootScanCrash(t *testing.T) {
	img, items := rootTreeImage(t, MkfsOptions{})
	spoilBackups(t, img, "none")
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
	if rec.Flushes() == 0 {
		t.Fatal("the rebuild flushed nothing")
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for k := 0; k <= rec.Flushes(); k++ {
		if !checkBoundary(k, rec.Flushes()) {
			continue
		}
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

// TestRootScanReadErrors: a block that cannot be read costs the scan that
// block, not its chunk: with one unreadable block in every chunk (none of
// them a tree's), the scan finds every tree; with a tree's root block
// unreadable, exactly that tree is missing.
func TestRootScanReadErrors(t *testing.T) {
	img, _ := rootTreeImage(t, MkfsOptions{})
	e := reopen(t, slices.Clone(img), Options{ReadOnly: true})
	s := e.Pin()
	sb := s.v.super
	used := map[format.BlockNr]bool{}
	for id, ri := range s.v.roots {
		tr, _ := s.Tree(id)
		if err := tr.Check(eb.CheckVisitor{Block: func(p eb.Ptr, _ int) { used[p.Block] = true }}); err != nil {
			t.Fatal(err)
		}
		used[ri.Root.Block] = true
	}
	inodeRoot := s.v.roots[format.TreeInode].Root.Block
	s.Release()
	e.Close()
	const chunk = 64
	f := disk.NewFaulty(disk.NewMemFrom(img))
	for at := uint64(0); at < sb.TotalBlocks; at += chunk {
		b := at + chunk/2
		for used[format.BlockNr(b)] {
			b++
		}
		f.FailReads(int64(b)*format.BlockSize, format.BlockSize, nil)
	}
	scan, err := ScanRoots(context.Background(), f, &sb, RootScanOptions{ChunkBlocks: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Missing) > 0 || len(scan.Found) != len(format.KnownTrees)-1 {
		t.Fatalf("with unreadable free blocks: %s", scan)
	}
	f.FailReads(int64(inodeRoot)*format.BlockSize, format.BlockSize, nil)
	scan, err = ScanRoots(context.Background(), f, &sb, RootScanOptions{ChunkBlocks: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Missing) != 1 || !strings.HasPrefix(scan.Missing[0], "inode:") {
		t.Fatalf("with the inode tree's root unreadable: %s", scan)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ScanRoots(ctx, f, &sb, RootScanOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled scan: %v", err)
	}
}
