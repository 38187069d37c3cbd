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
)

type nopClose struct{ disk.Device }

func (nopClose) Close() error { return nil }

// TestCrashDuringRebuild records every write and flush of an rmap rebuild
// (of a healthy and of a damaged tree) and opens the image as a crash at
// each flush boundary would leave it: it must mount and pass the self-check
// — with the old rmap tree or the new one — after at most one more rebuild
// when the old one was the damaged one.
func TestCrashDuringRebuild(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) {
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
				if _, err := InjectOnline(f.Engine(), InjectOptions{Tree: format.TreeRmap, Kind: KindBitflip, Seed: 5}); err != nil {
					t.Fatal(err)
				}
				f.Engine().SetRmapSick(true)
			}
			startFlush := rec.Flushes()
			if _, err := RebuildRmap(context.Background(), f.Engine(), RmapRebuildOptions{TempDir: t.TempDir()}); err != nil {
				t.Fatal(err)
			}
			endFlush := rec.Flushes()
			f.Close()
			rng := rand.New(rand.NewPCG(10, 10))
			completed := 0 // mounts that completed logged operations, freeing blocks
			for k := startFlush; k <= endFlush; k++ {
				for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
					name := fmt.Sprintf("flush %d %v", k, mode)
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
						if !damaged || !needsRmapRebuild(found) {
							t.Fatalf("%s: findings after a crash mid-rebuild of a healthy tree: %v", name, found)
						}
						cf.Engine().SetRmapSick(true)
						if _, err := RebuildRmap(context.Background(), cf.Engine(), RmapRebuildOptions{TempDir: t.TempDir()}); err != nil {
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
		})
	}
}
