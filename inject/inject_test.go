package inject

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/repair"
)

// TestKinds: every kind damages one block of a tree on an image, the
// engine's check names that block with the kind's finding, and bad
// options are refused with ErrRefused (the image untouched).
func TestKinds(t *testing.T) {
	want := map[string]engine.ErrorID{Bitflip: engine.ErrNodeBadChecksum, Zero: engine.ErrNodeBadMagic,
		WrongOwner: engine.ErrNodeWrongOwner, DropRecord: engine.ErrTreeItemCount}
	for _, kind := range Kinds {
		if kind == StaleGen {
			continue // needs an older generation of the block: the repair matrix covers it
		}
		t.Run(kind, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
				t.Fatal(err)
			}
			res, err := Offline(img, Options{Tree: format.TreeAlloc, Kind: kind, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			e, err := engine.OpenPath(img, engine.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			s := e.Pin()
			defer s.Release()
			var ids []engine.ErrorID
			var blocks []format.BlockNr
			if _, err := s.Check(context.Background(), func(f engine.Finding) { ids, blocks = append(ids, f.ID), append(blocks, f.Block) }); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(ids, want[kind]) || (kind != DropRecord && !slices.Contains(blocks, format.BlockNr(res.Block))) {
				t.Fatalf("%s at block %d: findings %v at %v", kind, res.Block, ids, blocks)
			}
		})
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{{Tree: format.TreeAlloc, Kind: "melt"}, {Tree: 99, Kind: Bitflip}} {
		if _, err := Offline(img, o); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// fullCheck returns the ids and blocks of every finding of a full check
// of the image at img, opened read-only.
func fullCheck(t *testing.T, img string) ([]engine.ErrorID, []format.BlockNr) {
	t.Helper()
	e, err := engine.OpenPath(img, engine.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return checkEngine(t, e)
}

func checkEngine(t *testing.T, e *engine.Engine) ([]engine.ErrorID, []format.BlockNr) {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	var ids []engine.ErrorID
	var blocks []format.BlockNr
	if _, err := s.Check(context.Background(), func(f engine.Finding) { ids, blocks = append(ids, f.ID), append(blocks, f.Block) }); err != nil {
		t.Fatal(err)
	}
	return ids, blocks
}

// superKindFinding is the finding each superblock kind must produce.
var superKindFinding = map[string]engine.ErrorID{Bitflip: engine.ErrSuperCopyBad, Zero: engine.ErrSuperCopyBad,
	WrongOwner: engine.ErrSuperCopyBad, StaleGen: engine.ErrSuperCopyStale}

// TestSuperblockKinds: every superblock kind damages the copy asked for
// (or the one the seed picks) and nothing else: a full check finds
// exactly that copy, with the kind's finding; a read-write open rewrites
// it and reports it repaired, and the image is then clean.
func TestSuperblockKinds(t *testing.T) {
	for _, kind := range SuperKinds {
		for _, at := range []format.BlockNr{0, 16, 256} {
			t.Run(fmt.Sprintf("%s/%d", kind, at), func(t *testing.T) {
				img := fsImage(t)
				res, err := Offline(img, Options{Tree: format.OwnerSuper, Kind: kind, Seed: 3, Copy: &at})
				if err != nil {
					t.Fatal(err)
				}
				if res.Tree != Superblock || res.Block != uint64(at) || res.Kind != kind || res.File != nil {
					t.Fatalf("result %+v", res)
				}
				ids, blocks := fullCheck(t, img)
				if !slices.Equal(ids, []engine.ErrorID{superKindFinding[kind]}) || !slices.Equal(blocks, []format.BlockNr{at}) {
					t.Fatalf("%s of copy %d: findings %v at %v", kind, at, ids, blocks)
				}
				e, err := engine.OpenPath(img, engine.Options{})
				if err != nil {
					t.Fatal(err)
				}
				rw := e.TakeOpenRepairs()
				if len(rw) != 1 || rw[0].ID != superKindFinding[kind] || rw[0].Block != at {
					t.Errorf("read-write open repaired %v", rw)
				}
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				if ids, _ := fullCheck(t, img); len(ids) != 0 {
					t.Fatalf("after a read-write open: %v", ids)
				}
			})
		}
	}
	// The seed picks a copy, the same one on every image.
	img := fsImage(t)
	a, err := Offline(img, Options{Tree: format.OwnerSuper, Kind: WrongOwner, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, blocks := fullCheck(t, img); !slices.Equal(blocks, []format.BlockNr{format.BlockNr(a.Block)}) {
		t.Fatalf("seeded wrong-owner of copy %d: findings at %v", a.Block, blocks)
	}
	img2 := fsImage(t)
	if b, err := Offline(img2, Options{Tree: format.OwnerSuper, Kind: WrongOwner, Seed: 5}); err != nil || b.Block != a.Block {
		t.Fatalf("same seed: %+v, then %+v (%v)", a, b, err)
	}
}

// TestSuperblockOnline: a frozen mount's superblock copy is damaged on
// the device, where the check reads the copies.
func TestSuperblockOnline(t *testing.T) {
	img := fsImage(t)
	e, err := engine.OpenPath(img, engine.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	at := format.BlockNr(16)
	res, err := Online(e, Options{Tree: format.OwnerSuper, Kind: StaleGen, Copy: &at})
	if err != nil {
		t.Fatal(err)
	}
	if ids, blocks := checkEngine(t, e); !slices.Equal(ids, []engine.ErrorID{engine.ErrSuperCopyStale}) || !slices.Equal(blocks, []format.BlockNr{at}) {
		t.Fatalf("%+v: findings %v at %v", res, ids, blocks)
	}
	if err := e.RewriteSupers(); err != nil {
		t.Fatal(err)
	}
	if ids, _ := checkEngine(t, e); len(ids) != 0 {
		t.Fatalf("after rewriting the copies: %v", ids)
	}
}

// fsImage makes a filesystem image past generation 1 (stale-gen needs an
// older one).
func fsImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := fs.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return img
}

// fileImage makes an image holding /d/a.txt: 3 blocks of data, a hole of
// 7 blocks, then 1 block and a bit. It returns the image and the file's
// contents.
func fileImage(t *testing.T) (string, []byte) {
	t.Helper()
	img := fsImage(t)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 11*format.BlockSize+100)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		if i < 3*format.BlockSize || i >= 10*format.BlockSize {
			want[i] = byte(1 + r.IntN(255))
		}
	}
	d, err := fsys.Mkdir(fs.RootIno, "d", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	a, err := fsys.Create(d.Ino, "a.txt", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]int{{0, 3 * format.BlockSize}, {10 * format.BlockSize, len(want)}} {
		if _, err := fsys.Write(a.Ino, want[p[0]:p[1]], int64(p[0])); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	return img, want
}

// dataFindings returns the findings of a data scrub of the image at img.
func dataFindings(t *testing.T, img string) []repair.FindingReport {
	t.Helper()
	fsys, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	rep, err := repair.Scrub(context.Background(), fsys, img, repair.ScrubOptions{Data: true, Mode: "offline"})
	if err != nil {
		t.Fatal(err)
	}
	var out []repair.FindingReport
	for _, s := range rep.Structures {
		out = append(out, s.Findings...)
	}
	return out
}

// TestFileKinds: each file kind damages the block holding the byte asked
// for, and a data scrub finds exactly that block of that file (the
// metadata check finds nothing).
func TestFileKinds(t *testing.T) {
	for _, kind := range FileKinds {
		for _, off := range []uint64{0, 5000, 10*format.BlockSize + 50} {
			t.Run(fmt.Sprintf("%s/%d", kind, off), func(t *testing.T) {
				img, _ := fileImage(t)
				res, err := Offline(img, Options{File: "d/a.txt", Offset: off, Kind: kind, Seed: 2})
				if err != nil {
					t.Fatal(err)
				}
				blockOff := off / format.BlockSize * format.BlockSize
				if f := res.File; f == nil || f.Path != "/d/a.txt" || f.Offset != blockOff || uint64(f.DiskBlock) != res.Block || res.Tree != "data" {
					t.Fatalf("result %+v file %+v", res, res.File)
				}
				if ids, _ := fullCheck(t, img); len(ids) != 0 {
					t.Fatalf("metadata findings %v", ids)
				}
				got := dataFindings(t, img)
				if len(got) != 1 {
					t.Fatalf("data scrub found %+v", got)
				}
				f := got[0]
				if f.ID != uint32(engine.ErrDataChecksum) || f.Path != "/d/a.txt" || f.Offset == nil || *f.Offset != blockOff ||
					f.DiskBlock == nil || *f.DiskBlock != res.Block || f.Inode != res.File.Inode {
					t.Fatalf("data scrub found %+v, injected %+v", f, res.File)
				}
			})
		}
	}
}

// TestFileOnline: a frozen mount's file block is damaged on the device,
// and the next read of it fails its checksum.
func TestFileOnline(t *testing.T) {
	img, want := fileImage(t)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	a, err := fsys.Resolve("/d/a.txt")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, format.BlockSize)
	if _, err := fsys.Read(a.Ino, buf, 4096); err != nil || !bytes.Equal(buf, want[4096:8192]) {
		t.Fatalf("read before: %v", err)
	}
	res, err := Online(fsys.Engine(), Options{File: "/d/a.txt", Offset: 4100, Kind: Zero})
	if err != nil {
		t.Fatal(err)
	}
	_, err = fsys.Read(a.Ino, buf, 4096)
	var ce *fs.ChecksumError
	if !errors.As(err, &ce) || ce.Offset != 4096 || uint64(ce.Disk) != res.Block || ce.Ino != a.Ino {
		t.Fatalf("read after %+v: %v", res, err)
	}
}

// TestTargetRefusals: what a superblock copy or a file cannot take is
// refused with ErrRefused, and nothing is written.
func TestTargetRefusals(t *testing.T) {
	img, _ := fileImage(t)
	at, nowhere := format.BlockNr(16), format.BlockNr(5)
	lvl := 0
	for _, o := range []Options{
		{Tree: format.OwnerSuper, Kind: DropRecord},
		{Tree: format.OwnerSuper, Kind: Bitflip, Level: &lvl},
		{Tree: format.OwnerSuper, Kind: Zero, Copy: &nowhere},
		{Tree: format.TreeRmap, Kind: Zero, Copy: &at},
		{File: "/d/a.txt", Kind: DropRecord},
		{File: "/d/a.txt", Kind: StaleGen},
		{File: "/d/a.txt", Kind: WrongOwner},
		{File: "/d/a.txt", Kind: Zero, Level: &lvl},
		{File: "/d/a.txt", Kind: Zero, Copy: &at},
		{File: "/d/a.txt", Kind: Zero, Tree: format.TreeRmap},
		{File: "/d/a.txt", Kind: Zero, Offset: 5 * format.BlockSize},      // a hole
		{File: "/d/a.txt", Kind: Zero, Offset: 11*format.BlockSize + 100}, // the end
		{File: "/d/a.txt", Kind: Bitflip, Offset: 1 << 40},
		{File: "/d", Kind: Zero},
		{File: "/d/missing", Kind: Zero},
		{File: "/d/a.txt/x", Kind: Zero},
	} {
		if _, err := Offline(img, o); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v: %v", o, err)
		}
	}
	if ids, _ := fullCheck(t, img); len(ids) != 0 {
		t.Fatalf("refusals damaged the image: %v", ids)
	}
	if got := dataFindings(t, img); len(got) != 0 {
		t.Fatalf("refusals damaged the data: %+v", got)
	}
	// A copy already damaged is not damaged again, and the last intact
	// copies are kept.
	for _, c := range []format.BlockNr{0, 16} {
		if _, err := Offline(img, Options{Tree: format.OwnerSuper, Kind: Zero, Copy: &c}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []format.BlockNr{0, 256} {
		if _, err := Offline(img, Options{Tree: format.OwnerSuper, Kind: Bitflip, Copy: &c}); !errors.Is(err, ErrRefused) {
			t.Errorf("copy %d: %v", c, err)
		}
	}
}
