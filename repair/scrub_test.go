package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// onlineMatrixTrees are the trees the online damage matrix covers: every
// tree with an online repairer.
var onlineMatrixTrees = []format.TreeID{format.TreeRmap, format.TreeFree, format.TreeAlloc, format.TreeExtent}

// goldenIDs reads testdata/inject_matrix.golden: for each "tree kind
// level=N", the finding ids an offline check reported.
func goldenIDs(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "inject_matrix.golden"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		head, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		rest, _, _ = strings.Cut(rest, " -> ")
		out[head] = strings.Fields(rest)
	}
	return out
}

// primaryID is the finding an injection of kind at level must produce in
// the damaged tree itself, whatever else it causes.
func primaryID(kind string, level int, tree format.TreeID) string {
	switch kind {
	case inject.Bitflip:
		return "node_bad_checksum"
	case inject.Zero:
		return "node_bad_magic"
	case inject.StaleGen:
		return "node_stale"
	case inject.WrongOwner:
		if level == 0 && (tree == format.TreeRmap || tree == format.TreeExtent) {
			return "" // a record's owner: only cross-references see it
		}
		return "node_wrong_owner"
	}
	return "tree_item_count"
}

// TestScrubRepairDamageOnline: for every tree with an online repairer,
// every kind of damage, at a leaf and at an interior node, on a mount with
// a writer fsyncing all along: scrub finds it (uncorrected, the damaged
// tree named with its primary finding at the damaged block, its findings
// among those the offline matrix lists for that damage, cross-references
// elsewhere), scrub --repair corrects it, a
// second scrub is clean, the degraded marker is cleared, the writer never
// failed, offline fsck after unmount is clean, and every byte the writer
// fsync'd reads back after a remount. Under the race detector (or -short)
// a slice runs; SCRUBD_MATRIX_ALL=1 runs it all.
func TestScrubRepairDamageOnline(t *testing.T) {
	golden := goldenIDs(t)
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tree := range onlineMatrixTrees {
		for _, kind := range inject.Kinds {
			for level := 0; level <= 1; level++ {
				n++
				if (raceEnabled || testing.Short()) && os.Getenv("SCRUBD_MATRIX_ALL") == "" && n%3 != 0 {
					continue
				}
				name := fmt.Sprintf("%s %s level=%d", tree, kind, level)
				t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
					img := filepath.Join(t.TempDir(), "fs.img")
					if err := os.WriteFile(img, pristine, 0o600); err != nil {
						t.Fatal(err)
					}
					onlineDamageCase(t, img, tree, kind, level, golden[name])
				})
			}
		}
	}
}

// hasFinding says whether rep holds a finding of one of names.
func hasFinding(rep *Report, names ...string) bool {
	for _, s := range rep.Structures {
		for _, fd := range s.Findings {
			if slices.Contains(names, fd.Name) {
				return true
			}
		}
	}
	return false
}

func onlineDamageCase(t *testing.T, img string, tree format.TreeID, kind string, level int, allowed []string) {
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Writes to files whose extent records are in the damaged block
	// fail with EIO until the repair (an interior node of a small tree
	// covers every file); every other write goes on.
	w, stop := startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}, tolerateEIO: tree == format.TreeExtent}, 7, 150)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	lv := level
	inj, err := inject.Online(f.Engine(), inject.Options{Tree: tree, Kind: kind, Seed: 3, Level: &lv})
	if err != nil {
		stop()
		f.Close()
		if errors.Is(err, inject.ErrRefused) {
			t.Skipf("not injectable here: %v", err)
		}
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// What the files read once damaged: a file extent record moved, with
	// a valid checksum, into a hole of its own file is indistinguishable
	// from its reverse mapping having moved (no finding proves which);
	// the repair then keeps what the files read (it rebuilds the rmap).
	// Any other damage is repaired to what was written.
	var wantFiles map[string][]byte
	if tree == format.TreeExtent && kind == inject.WrongOwner && level == 0 && !hasFinding(rep, "extent_past_eof", "extent_overlap") {
		wantFiles = readPopulated(t, f)
	}
	if rep.Status != StatusUncorrected || rep.ExitCode() != ExitUncorrected {
		t.Fatalf("scrub after the damage: status %s: %+v", rep.Status, rep.Structures)
	}
	if kind == inject.WrongOwner && level == 0 && tree == format.TreeRmap {
		// The record given another owner may be a tree's (the offline
		// matrix's image had a file's there): its blocks then have a
		// record of the wrong tree and none of their own.
		allowed = append(slices.Clone(allowed), "rmap_orphan", "rmap_missing")
	}
	if tree == format.TreeAlloc && f.Engine().Degraded(engine.StructAlloc) {
		// The writer met the damage first (a reference to an extent
		// whose record is gone) and the engine stopped updating the
		// tree: the blocks it copied on write meanwhile have no record
		// in the stale tree.
		allowed = append(slices.Clone(allowed), "alloc_missing")
	}
	primary := primaryID(kind, level, tree)
	sawPrimary := primary == ""
	for _, s := range rep.Structures {
		for _, fd := range s.Findings {
			// The damaged tree's own findings are those the offline
			// matrix lists for this damage; elsewhere only
			// cross-references (which records the lost ones named
			// depends on the writer's files).
			if s.Name == tree.String() && !slices.Contains(allowed, fd.Name) && fd.Name != "tree_untrusted" ||
				s.Name != tree.String() && fd.Severity != "xref" {
				t.Errorf("%s: finding %s (%s, %s) is not one this damage causes (offline: %v)", s.Name, fd.Name, fd.Severity, fd.Detail, allowed)
			}
			if s.Name == tree.String() && fd.Name == primary && (fd.Block == inj.Block || primary == "tree_item_count") {
				sawPrimary = true
			}
		}
	}
	if !sawPrimary {
		t.Fatalf("no %s finding in %s at block %d: %+v", primary, tree, inj.Block, rep.Structures)
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusCorrected || rep.Repaired == 0 || rep.ExitCode() != ExitCorrected {
		var left []string
		for _, s := range rep.Structures {
			for _, fd := range s.Findings {
				if !fd.Repaired {
					left = append(left, s.Name+": "+fd.Name+": "+fd.Detail)
				}
			}
		}
		t.Fatalf("repair: status %s found %d repaired %d notes %v; left: %v", rep.Status, rep.Found, rep.Repaired, rep.Notes, left)
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil || rep.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep)
	}
	if f.Engine().Degraded(engine.StructFree) || f.Engine().Degraded(engine.StructRmap) || f.Engine().Degraded(engine.StructAlloc) {
		t.Fatal("a space tree is still degraded after the repair")
	}
	stop()
	f = remountClean(t, f, img)
	w.verify(t, f)
	verifyPopulated(t, f, wantFiles)
	f.Close()
}

// TestScrubNoFalsePositivesUnderLoad scrubs a healthy filesystem again and
// again while a writer runs: no findings, ever.
func TestScrubNoFalsePositivesUnderLoad(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, stop := startWriter(t, f, 8, 0)
	for i := 0; i < 40; i++ {
		for w.count() < 2*i {
			time.Sleep(time.Millisecond)
		}
		rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Data: i%4 == 0})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Found != 0 {
			t.Fatalf("scrub %d of a healthy filesystem under load found %d: %+v", i, rep.Found, rep.Structures)
		}
	}
	stop()
}

// TestRepairRefusesDamagedSources: damage to a tree the rmap is derived
// from (a file extent record dropped) must not be "repaired" by rebuilding
// the rmap from it, which would lose the extent's last record. On a format
// 1.2 image the extent tree is rebuilt from the rmap instead, and every
// file reads back whole; on a format 1.1 image, whose rmap records do not
// say what each file maps, the repair is refused and the image unchanged.
func TestRepairRefusesDamagedSources(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := engine.MkfsPath(img, 256<<20, false, engine.MkfsOptions{NoRmapMaps: legacy}); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint64][]byte{}
			r := rand.New(rand.NewPCG(5, 5))
			for i := 0; i < 30; i++ {
				a, _ := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
				data := make([]byte, 20000+r.IntN(40000))
				for j := range data {
					data[j] = byte(r.Uint32())
				}
				f.Write(a.Ino, data, 0)
				// An overwrite in the middle splits the extent.
				f.Write(a.Ino, data[4096:8192], 4096)
				want[a.Ino] = data
			}
			f.Close()
			if _, err := inject.Offline(img, inject.Options{Tree: format.TreeExtent, Kind: inject.DropRecord, Seed: 1}); err != nil {
				t.Fatal(err)
			}
			before, err := CheckOffline(context.Background(), img, Options{})
			if err != nil || before.Found == 0 {
				t.Fatalf("damage not found: %v %+v", err, before)
			}
			f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline"})
			if err != nil {
				t.Fatal(err)
			}
			if !legacy {
				if rep.Status != StatusCorrected || len(rep.Rebuilds) != 1 || rep.Rebuilds[0].Structure != "extent" {
					t.Fatalf("repair: status %s rebuilds %+v notes %v", rep.Status, rep.Rebuilds, rep.Notes)
				}
				for ino, data := range want {
					got := make([]byte, len(data)+1)
					n, err := f.Read(ino, got, 0)
					if err != nil || n != len(data) || !bytes.Equal(got[:n], data) {
						t.Fatalf("inode %d after the repair: %d bytes, %v", ino, n, err)
					}
				}
				f.Close()
				if after, err := CheckOffline(context.Background(), img, Options{}); err != nil || after.Found != 0 {
					t.Fatalf("after the repair: %v %+v", err, after)
				}
				return
			}
			f.Close()
			if rep.Status != StatusUncorrected || rep.Repaired != 0 || len(rep.Rebuilds) != 0 {
				t.Fatalf("repair from a damaged extent tree: status %s repaired %d rebuilds %d", rep.Status, rep.Repaired, len(rep.Rebuilds))
			}
			if !strings.Contains(strings.Join(rep.Notes, " "), "do not record") {
				t.Errorf("the refusal does not say why: %v", rep.Notes)
			}
			after, err := CheckOffline(context.Background(), img, Options{})
			if err != nil || after.Found != before.Found {
				t.Fatalf("the image changed: %d findings before, %d after (%v)", before.Found, after.Found, err)
			}
		})
	}
}

// remountClean closes f, requires a clean offline check of img, and
// opens it again (without periodic commits) for the caller to verify.
func remountClean(t *testing.T, f *fs.FS, img string) *fs.FS {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	off, err := CheckOffline(context.Background(), img, Options{})
	if err != nil || off.Status != StatusClean {
		t.Fatalf("offline fsck after repair: %v %+v", err, off)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return f
}
