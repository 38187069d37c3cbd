package repair

import (
	"context"
	"errors"
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

// TestEmptyTreesRepairOnline damages the subvolume, snapshot and UUID
// trees (empty leaves in this version) with every kind that applies, on a
// mount with a writer running: scrub --repair writes a new empty tree and
// frees the old block, the check after it is clean, the structure is
// healthy, every byte the writer fsync'd and every populated file reads
// back, and the image checks clean after a remount.
func TestEmptyTreesRepairOnline(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tree format.TreeID
		st   engine.Structure
	}{{format.TreeSubvol, engine.StructSubvol}, {format.TreeSnapshot, engine.StructSnapshot}, {format.TreeUUID, engine.StructUUID}} {
		for _, kind := range inject.Kinds {
			t.Run(c.tree.String()+"_"+kind, func(t *testing.T) {
				img := filepath.Join(t.TempDir(), "fs.img")
				if err := os.WriteFile(img, pristine, 0o600); err != nil {
					t.Fatal(err)
				}
				f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				lv := 0
				if _, err := inject.Online(f.Engine(), inject.Options{Tree: c.tree, Kind: kind, Seed: 2, Level: &lv}); err != nil {
					f.Close()
					if errors.Is(err, inject.ErrRefused) {
						t.Skipf("not injectable: %v", err)
					}
					t.Fatal(err)
				}
				w, stop := startWriter(t, f, 31, 10)
				rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
				stop()
				if err != nil {
					t.Fatal(err)
				}
				if rep.Status != StatusCorrected {
					t.Fatalf("status %s; notes %v", rep.Status, rep.Notes)
				}
				if !slices.ContainsFunc(rep.Notes, func(n string) bool {
					return strings.Contains(n, "wrote a new empty "+c.tree.String()+" tree")
				}) {
					t.Errorf("no note of the new tree: %v", rep.Notes)
				}
				if f.Engine().Sick(c.st) {
					t.Errorf("%s still sick", c.tree)
				}
				w.verify(t, f)
				verifyPopulated(t, f, nil)
				f = remountClean(t, f, img)
				f.Close()
			})
		}
	}
}
