package repair

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// TestRootDamageOnline: every kind of damage to the root tree of a mount
// with a writer fsyncing all along: the writer never fails; the damage is
// reported once (by the check, or as the engine's own repair when a
// commit met it first and replaced the tree from the roots in memory) and
// corrected; the next scrub is clean; offline fsck after unmount is
// clean, and every fsync'd byte reads back after a remount.
func TestRootDamageOnline(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range inject.Kinds {
		t.Run(kind, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			w, stop := startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}}, 9, 150)
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			lv := 0
			inj, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeRoot, Kind: kind, Seed: 3, Level: &lv})
			if err != nil {
				stop()
				f.Close()
				if errors.Is(err, inject.ErrRefused) {
					t.Skipf("not injectable here: %v", err)
				}
				t.Fatal(err)
			}
			rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			root := rep.structure("root")
			if rep.Status != StatusCorrected || root == nil || root.Found == 0 || root.Repaired != root.Found {
				t.Fatalf("scrub --repair after %s at block %d: status %s, root %+v, notes %v", kind, inj.Block, rep.Status, root, rep.Notes)
			}
			rep, err = Scrub(context.Background(), f, "test", ScrubOptions{})
			if err != nil || rep.Status != StatusClean {
				t.Fatalf("second scrub: %v %+v", err, rep)
			}
			// (The damaged block, once freed, may hold a later root tree:
			// what counts is that the tree in use was written since.)
			s := f.Engine().Pin()
			rootGen := s.Super().Root.Gen
			s.Release()
			if rootGen <= format.Gen(inj.Generation) {
				t.Fatalf("the root tree in use is of generation %d, the damaged one was %d", rootGen, inj.Generation)
			}
			stop()
			f = remountClean(t, f, img)
			defer f.Close()
			if f.Engine().Sick(engine.StructRoot) {
				t.Fatal("root sick after a clean remount")
			}
			w.verify(t, f)
			verifyPopulated(t, f, nil)
		})
	}
}

// TestRootScanOnline: the header scan runs online against the committed
// generation while a writer fsyncs and commits all along: every scan
// finds, from the image alone, exactly the root of every tree the engine
// has in use at the generation it pinned; the root repairer (which runs
// the scan before it writes the new tree) reports no difference, and the
// image checks clean after unmount with every fsync'd byte.
func TestRootScanOnline(t *testing.T) {
	img := populatedImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, stop := startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}}, 11, 150)
	gens := map[format.Gen]bool{}
	for i := 0; i < 6; i++ {
		scan, differ, err := f.Engine().RootScanCheck(context.Background())
		if err != nil {
			stop()
			t.Fatal(err)
		}
		if len(differ) > 0 || len(scan.Missing) > 0 {
			stop()
			t.Fatalf("scan %d at generation %d: differ %v, missing %v", i, scan.Gen, differ, scan.Missing)
		}
		gens[scan.Gen] = true
		time.Sleep(30 * time.Millisecond)
	}
	if len(gens) < 2 {
		t.Logf("the writer committed no generation between the scans (%v)", gens)
	}
	for i := 0; i < 3; i++ {
		rb, err := repairRoot(context.Background(), f.Engine(), ScrubOptions{})
		if err != nil {
			stop()
			t.Fatal(err)
		}
		s := f.Engine().Pin()
		trees := uint64(len(s.Trees()) - 1) // a record for every tree but the root tree
		s.Release()
		if len(rb.Changes) > 0 || rb.Records != trees {
			stop()
			t.Fatalf("root repair under a writer: %d records for %d trees, the scan disagrees with the roots in use: %v", rb.Records, trees, rb.Changes)
		}
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil || rep.Status != StatusClean {
		stop()
		t.Fatalf("scrub after the rebuilds: %v %+v", err, rep)
	}
	stop()
	f = remountClean(t, f, img)
	defer f.Close()
	w.verify(t, f)
	verifyPopulated(t, f, nil)
}
