package fs

import (
	"fmt"
	"os"
	"time"

	"testing"

	"github.com/scrubd/scrubd/engine"
)

// BenchmarkSnapshotCreate: the time of CreateSnapshot (its commit
// included) of a subvolume of n files (in directories of 1,000, 4 KiB
// each up to 100,000 files, empty beyond), against n. The fill each
// snapshot then needs runs after the timed loop: its time and the blocks
// it takes (metadata only; data is shared) are reported per snapshot.
// 1,000,000 files with SCRUBD_BENCH_BIG=1.
//
//	go test ./engine/fs -run '^$' -bench SnapshotCreate -benchtime 10x
func BenchmarkSnapshotCreate(b *testing.B) {
	sizes := []int{1000, 10000, 100000}
	if os.Getenv("SCRUBD_BENCH_BIG") != "" {
		sizes = append(sizes, 1000000)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprint("files=", n), func(b *testing.B) {
			auto := fillAuto
			fillAuto = false
			defer func() { fillAuto = auto }()
			f, _ := benchFS(b, 8<<30, Options{})
			defer f.Close()
			sv, err := f.CreateSubvol(RootIno, "src")
			if err != nil {
				b.Fatal(err)
			}
			block := make([]byte, 4096)
			var dir Attr
			for i := 0; i < n; i++ {
				if i%1000 == 0 {
					if dir, err = f.Mkdir(sv.RootIno, fmt.Sprint("d", i/1000), NewInode{Mode: 0o40755}); err != nil {
						b.Fatal(err)
					}
				}
				a, err := f.Create(dir.Ino, fmt.Sprint("f", i), NewInode{Mode: 0o100644})
				if err != nil {
					b.Fatal(err)
				}
				if i < 100000 {
					if _, err := f.Write(a.Ino, block, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			free0 := f.StatFS().BlocksFree
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := f.CreateSnapshot(sv.RootIno, RootIno, fmt.Sprint("snap", i), i%2 == 1); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			created := free0 - f.StatFS().BlocksFree
			t0 := time.Now()
			if err := f.fillAll(b.Context(), f.e); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			fill := time.Since(t0)
			b.ReportMetric(float64(created)/float64(b.N), "blocks/create")
			b.ReportMetric(fill.Seconds()/float64(b.N), "fill-s/snapshot")
			b.ReportMetric(float64(free0-f.StatFS().BlocksFree)/float64(b.N), "blocks/filled-snapshot")
		})
	}
}

// BenchmarkSnapshotOverwrite: the snapshot-heavy workload: a
// subvolume of 32 files of 256 KiB (16 KiB extents) with 5 snapshots
// (filled), then 1,000 random 4 KiB overwrites in the subvolume per
// commit, with the delayed-ref queue and with every update applied at
// once (NoDelayedRefs), without delayed allocation. Every overwrite of a block the snapshots share
// drops one reference and allocates a new extent.
//
//	go test ./engine/fs -run '^$' -bench SnapshotOverwrite -benchtime 20x
func BenchmarkSnapshotOverwrite(b *testing.B) {
	for _, immediate := range []bool{false, true} {
		name := "delayed"
		if immediate {
			name = "immediate"
		}
		b.Run(name, func(b *testing.B) {
			// Without delayed allocation: each write is its own
			// transaction, as in the queue's other benchmarks (with it,
			// every write-out runs in the commit's one transaction and
			// both modes apply the queue once).
			f, _ := benchFS(b, 512<<20, Options{NoDelayedAlloc: true, Engine: engine.Options{NoDelayedRefs: immediate}})
			defer f.Close()
			sv, err := f.CreateSubvol(RootIno, "src")
			if err != nil {
				b.Fatal(err)
			}
			const files, snapshots, blocks = 32, 5, 64
			var inos []uint64
			data := make([]byte, blocks*4096)
			for i := range files {
				a, err := f.Create(sv.RootIno, fmt.Sprint("f", i), NewInode{Mode: 0o100644})
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(data); off += 16 << 10 {
					if _, err := f.Write(a.Ino, data[off:off+16<<10], int64(off)); err != nil {
						b.Fatal(err)
					}
				}
				inos = append(inos, a.Ino)
			}
			for j := range snapshots {
				if _, err := f.CreateSnapshot(sv.RootIno, RootIno, fmt.Sprint("snap", j), true); err != nil {
					b.Fatal(err)
				}
			}
			f.WaitFill()
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			overwriteRounds(b, f, inos, blocks)
		})
	}
}
