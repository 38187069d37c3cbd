package repair

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// TestTwoDamagedStructures damages two trees of one image and repairs it
// offline through the ops table: what can be repaired is, in dependency
// order; what cannot is refused with a note naming the damaged input, and
// the image is left as it was for those structures (never worse).
func TestTwoDamagedStructures(t *testing.T) {
	skipShort(t)
	base := populatedImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	lv := 0
	for _, c := range []struct {
		name      string
		damage    []inject.Options
		refused   []string // rows the notes must say were not repaired
		zeroSuper bool     // also destroy superblock copy 16
		status    string
	}{
		{
			// The rmap is rebuilt from every tree: the extent tree's
			// damage (no repairer yet) makes it refuse, not rebuild
			// from what is left.
			name: "rmap and extent",
			damage: []inject.Options{{Tree: format.TreeRmap, Kind: inject.Bitflip, Seed: 3, Level: &lv},
				{Tree: format.TreeExtent, Kind: inject.DropRecord, Seed: 4, Level: &lv}},
			refused: []string{"rmap not repaired: it is rebuilt from extent"},
			status:  StatusUncorrected,
		},
		{
			// The allocation tree cannot be read: the rmap rebuild,
			// which reads every tree, refuses.
			name: "rmap and alloc",
			damage: []inject.Options{{Tree: format.TreeRmap, Kind: inject.Zero, Seed: 3, Level: &lv},
				{Tree: format.TreeAlloc, Kind: inject.Bitflip, Seed: 4, Level: &lv}},
			refused: []string{"rmap not repaired: it is rebuilt from alloc"},
			status:  StatusUncorrected,
		},
		{
			// The free-space tree is rebuilt from the alloc tree, which
			// is rebuilt from the rmap first; the mount loads its free
			// space from the rmap meanwhile.
			name: "alloc and free",
			damage: []inject.Options{{Tree: format.TreeAlloc, Kind: inject.Bitflip, Seed: 3, Level: &lv},
				{Tree: format.TreeFree, Kind: inject.Zero, Seed: 4, Level: &lv}},
			status: StatusCorrected,
		},
		{
			// The alloc tree lost a record: rebuilt from the rmap;
			// the free-space tree's stale block is rebuilt after it.
			name: "alloc drop-record and free stale",
			damage: []inject.Options{{Tree: format.TreeAlloc, Kind: inject.DropRecord, Seed: 3, Level: &lv},
				{Tree: format.TreeFree, Kind: inject.StaleGen, Seed: 4, Level: &lv}},
			status: StatusCorrected,
		},
		{
			// The rmap is rebuilt from every tree's blocks, the old
			// free-space tree's blocks are listed from the rmap: each
			// waits for the other, both are refused, the image is left
			// as it was.
			name: "rmap and free",
			damage: []inject.Options{{Tree: format.TreeRmap, Kind: inject.Bitflip, Seed: 3, Level: &lv},
				{Tree: format.TreeFree, Kind: inject.Bitflip, Seed: 4, Level: &lv}},
			refused: []string{"rmap not repaired", "free not repaired"},
			status:  StatusUncorrected,
		},
		{
			// A superblock copy and the rmap: both repaired.
			name:      "superblock and rmap",
			damage:    []inject.Options{{Tree: format.TreeRmap, Kind: inject.StaleGen, Seed: 3, Level: &lv}},
			zeroSuper: true,
			status:    StatusCorrected,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := base + "." + strings.ReplaceAll(c.name, " ", "-")
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, d := range c.damage {
				if _, err := inject.Offline(img, d); err != nil {
					t.Fatalf("inject %+v: %v", d, err)
				}
			}
			if c.zeroSuper {
				b, _ := os.ReadFile(img)
				clear(b[16*format.BlockSize : 17*format.BlockSize])
				if err := os.WriteFile(img, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before, err := CheckOffline(context.Background(), img, Options{})
			if err != nil || before.Found == 0 {
				t.Fatalf("damage not found: %v %+v", err, before)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != c.status {
				t.Fatalf("status %s, want %s; notes %v", rep.Status, c.status, rep.Notes)
			}
			for _, want := range c.refused {
				found := false
				for _, n := range rep.Notes {
					found = found || strings.HasPrefix(n, want)
				}
				if !found {
					t.Errorf("no note %q in %v", want, rep.Notes)
				}
			}
			after, err := CheckOffline(context.Background(), img, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if c.status == StatusCorrected && (after.Found != 0 || rep.Repaired != before.Found) {
				t.Fatalf("repaired %d of %d; after repair: %+v", rep.Repaired, before.Found, after.Structures)
			}
			if c.status == StatusUncorrected && after.Found > before.Found {
				t.Fatalf("refused repair made the image worse: %d findings before, %d after", before.Found, after.Found)
			}
		})
	}
}
