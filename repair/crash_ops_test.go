package repair

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// TestCrashDuringOpRepair is TestCrashDuringRebuild for the repairers that
// are not tree rebuilds on the kit — the link counts (one transaction
// after a pinned scan) and the trees this version keeps empty (one
// exclusive section): it records every write and flush of the row's
// repairer and opens the image as a crash at each flush boundary would
// leave it. Each must mount, and its check must find nothing but the
// row's own damage (the repair not done yet), which a second run of the
// repairer then clears.
func TestCrashDuringOpRepair(t *testing.T) {
	skipShort(t)
	for _, c := range []struct {
		row    string
		damage func(t *testing.T, f *fs.FS)
	}{
		{"inode", func(t *testing.T, f *fs.FS) {
			// Skew the link counts of a few files: the repair sets
			// them back.
			var inos []uint64
			for i := range 3 {
				a, err := f.Lookup(fs.RootIno, fmt.Sprintf("f%d", 5+i))
				if err != nil {
					t.Fatal(err)
				}
				inos = append(inos, a.Ino)
			}
			err := f.Engine().Update(func(tx *engine.Tx) error {
				for i, n := range []uint32{2, 3, 7} {
					if _, _, err := fs.SetNlink(tx, inos[i], n); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"subvol", func(t *testing.T, f *fs.FS) {
			if _, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeSubvol, Kind: inject.Bitflip, Seed: 5}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.row, func(t *testing.T) { crashDuringOpRepair(t, c.row, c.damage) })
	}
}

func crashDuringOpRepair(t *testing.T, row string, damage func(*testing.T, *fs.FS)) {
	op := opByName(row)
	dev := disk.NewMem(32768 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Open(nopClose{dev}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 40; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(a.Ino, make([]byte, 1+r.IntN(30000)), 0); err != nil {
			t.Fatal(err)
		}
	}
	damage(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(dev.Bytes())
	f, err = fs.Open(nopClose{rec}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if found := checkFindings(t, f.Engine()); len(found) == 0 || !onlyFor(op, found) {
		t.Fatalf("the damage gives findings %v", found)
	}
	startFlush := rec.Flushes()
	if _, err := op.Repair(context.Background(), f.Engine(), ScrubOptions{TempDir: t.TempDir(), fsys: f}); err != nil {
		t.Fatal(err)
	}
	endFlush := rec.Flushes()
	mustClean(t, f.Engine())
	f.Close()
	if endFlush == startFlush {
		t.Fatal("the repair flushed nothing")
	}
	rng := rand.New(rand.NewPCG(10, 10))
	for k := startFlush; k <= endFlush; k++ {
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			name := fmt.Sprintf("%s: flush %d %v", row, k, mode)
			cf, err := fs.Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			if found := checkFindings(t, cf.Engine()); len(found) > 0 {
				if !onlyFor(op, found) {
					t.Fatalf("%s: findings after a crash mid-repair: %v", name, found)
				}
				if _, err := op.Repair(context.Background(), cf.Engine(), ScrubOptions{TempDir: t.TempDir(), fsys: cf}); err != nil {
					t.Fatalf("%s: second repair: %v", name, err)
				}
				mustClean(t, cf.Engine())
			}
			cf.Close()
		}
	}
}
