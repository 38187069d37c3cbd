package repair

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

type nopClose struct{ disk.Device }

func (nopClose) Close() error { return nil }

// rebuilders are the online rebuilds by structure, for the crash test.
var rebuilders = map[string]struct {
	tree format.TreeID
	st   engine.Structure
	run  func(context.Context, *engine.Engine, RebuildOptions) (*RebuildResult, error)
}{
	"rmap":   {format.TreeRmap, engine.StructRmap, RebuildRmap},
	"alloc":  {format.TreeAlloc, engine.StructAlloc, RebuildAlloc},
	"free":   {format.TreeFree, engine.StructFree, RebuildFree},
	"extent": {format.TreeExtent, engine.StructExtent, RebuildExtent},
	"csum":   {format.TreeCsum, engine.StructCsum, RebuildCsum},
}

// onlyFor reports whether every finding is the row's own (in its trees, or
// one it answers for).
func onlyFor(op *Op, found []engine.Finding) bool {
	for _, f := range found {
		if !op.wants([]engine.Finding{f}) {
			return false
		}
	}
	return true
}

// TestCrashDuringRebuild records every write and flush of each online
// rebuild (rmap, alloc, free, extent; of a healthy and of a damaged tree) and
// opens the image as a crash at each flush boundary would leave it: it
// must mount and pass the self-check — with the old tree or the new one —
// after at most one more rebuild of the same tree, needed only when the
// old one was damaged or, for alloc and free, degraded for the rebuild
// (the engine stops updating a tree being rebuilt from the others, so a
// crash leaves it marked untrusted), and never leak a block.
//
// Left to the full pass (skipped under -short, the race pass): a crash
// image costs a mount, a check and often a second rebuild, and the
// rebuilds' concurrency is what TestScrubRepairDamageOnline runs under the
// race detector.
func TestCrashDuringRebuild(t *testing.T) {
	skipShort(t)
	for _, name := range []string{"rmap", "alloc", "free", "extent"} {
		for _, damaged := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/damaged=%v", name, damaged), func(t *testing.T) { crashDuringRebuild(t, name, damaged) })
		}
	}
}

func crashDuringRebuild(t *testing.T, name string, damaged bool) {
	rb := rebuilders[name]
	op := opByName(name)
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
		buf := make([]byte, 1+r.IntN(30000))
		if _, err := f.Write(a.Ino, buf, int64(r.IntN(9000))); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(dev.Bytes())
	f, err = fs.Open(nopClose{rec}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if damaged {
		if _, err := inject.Online(f.Engine(), inject.Options{Tree: rb.tree, Kind: inject.Bitflip, Seed: 5}); err != nil {
			t.Fatal(err)
		}
		f.Engine().MarkSick(rb.st, 0, engine.ErrNodeBadChecksum)
	}
	startFlush := rec.Flushes()
	if _, err := rb.run(context.Background(), f.Engine(), RebuildOptions{TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	endFlush := rec.Flushes()
	f.Close()
	rng := rand.New(rand.NewPCG(10, 10))
	completed := 0 // mounts that completed logged operations, freeing blocks
	for k := startFlush; k <= endFlush; k++ {
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			name := fmt.Sprintf("%s: flush %d %v", name, k, mode)
			img := rec.CrashImage(k, mode, rng)
			cf, err := fs.Open(disk.NewMemFrom(img), fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			for _, n := range cf.Engine().MountInfo().Notes {
				if strings.Contains(n, "interrupted logged operations") && !strings.Contains(n, "(0 blocks freed)") {
					completed++
				}
			}
			found := checkFindings(t, cf.Engine())
			if len(found) > 0 {
				// Rebuilding a healthy rmap or extent tree leaves no
				// trace a crash could expose; alloc and free are
				// degraded for their rebuilds.
				healthyStays := rb.st == engine.StructRmap || rb.st == engine.StructExtent
				if !damaged && healthyStays || !onlyFor(op, found) {
					t.Fatalf("%s: findings after a crash mid-rebuild (damaged=%v): %v", name, damaged, found)
				}
				if _, err := rb.run(context.Background(), cf.Engine(), RebuildOptions{TempDir: t.TempDir()}); err != nil {
					t.Fatalf("%s: second rebuild: %v", name, err)
				}
				mustClean(t, cf.Engine())
			}
			cf.Close()
		}
	}
	if completed == 0 {
		t.Fatal("no crash image needed its logged operations completed: the boundaries were not covered")
	}
}
