package repair

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// BenchmarkDirRepair: the directory rebuild of a filesystem of N entries
// (SCRUBD_BENCH_FILES, default 100,000) in 100 directories, one leaf of
// the dir tree destroyed (zeroed), while a writer creates, renames and
// unlinks files in a directory the damage does not reach; reported: wall
// time, the exclusive section's hold, the longest writer-lock hold of the
// rebuild, the writer's longest operation during the repair (and idle),
// its operations per second during the repair against idle, the growth of
// the heap in use, the entries rebuilt and the inodes adopted; each
// phase's time and longest hold are logged. The full form (200,000 files):
//
//	SCRUBD_BENCH_FILES=200000 go test ./repair -run '^$' -bench DirRepair -benchtime 1x -count 2 -timeout 60m
func BenchmarkDirRepair(b *testing.B) {
	n := 100000
	if v := os.Getenv("SCRUBD_BENCH_FILES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		img := filepath.Join(b.TempDir(), "fs.img")
		if err := fs.MkfsPath(img, int64(n)*4096+256<<20, false, engine.MkfsOptions{}); err != nil {
			b.Fatal(err)
		}
		f, err := fs.OpenPath(img, fs.Options{CommitInterval: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		dirs := make([]uint64, 100)
		for d := range dirs {
			a, err := f.Mkdir(fs.RootIno, fmt.Sprintf("d%d", d), fs.NewInode{Mode: 0o755})
			if err != nil {
				b.Fatal(err)
			}
			dirs[d] = a.Ino
		}
		for j := 0; j < n; j++ {
			if _, err := f.Create(dirs[j%len(dirs)], fmt.Sprintf("file-%d", j), fs.NewInode{Mode: 0o644}); err != nil {
				b.Fatal(err)
			}
		}
		busy, err := f.Mkdir(fs.RootIno, "busy", fs.NewInode{Mode: 0o755})
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		e := f.Engine()
		lv := 0
		if _, err := inject.Online(e, inject.Options{Tree: format.TreeDir, Kind: inject.Zero, Seed: 3, Level: &lv}); err != nil {
			b.Fatal(err)
		}
		// The writer: create, rename, unlink in busy, timing each.
		var ops atomic.Uint64
		var longest atomic.Int64
		var werr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				name := fmt.Sprintf("w%d", k)
				err := func() error {
					if _, err := f.Create(busy.Ino, name, fs.NewInode{Mode: 0o644}); err != nil {
						return err
					}
					if err := f.Rename(busy.Ino, name, busy.Ino, "r"+name, 0); err != nil {
						return err
					}
					return f.Unlink(busy.Ino, "r"+name)
				}()
				if err != nil {
					werr.Store(err)
					return
				}
				if d := time.Since(t0).Nanoseconds(); d > longest.Load() {
					longest.Store(d)
				}
				ops.Add(1)
			}
		}()
		time.Sleep(time.Second)
		idle := float64(ops.Swap(0))
		idleLongest := longest.Swap(0)
		heap := heapGrowth()
		b.StartTimer()
		t0 := time.Now()
		dr, err := RebuildDir(context.Background(), f, RebuildOptions{TempDir: b.TempDir()})
		took := time.Since(t0)
		b.StopTimer()
		during := float64(ops.Load()) / took.Seconds()
		inuse, live := heap()
		close(stop)
		wg.Wait()
		if err != nil {
			b.Fatal(err)
		}
		if err, ok := werr.Load().(error); ok {
			b.Fatalf("writer: %v", err)
		}
		if len(dr.Rebuilt) == 0 && len(dr.Adopted) == 0 {
			b.Fatal("the rebuild rebuilt nothing: the damage was not met")
		}
		for _, p := range dr.Phases {
			b.Logf("phase %-9s %8.3f s, longest hold %.1f ms", p.Name, p.Took.Seconds(), float64(p.LongestHold.Microseconds())/1000)
		}
		b.ReportMetric(took.Seconds(), "s/repair")
		b.ReportMetric(float64(dr.ExclusivePause.Microseconds())/1000, "ms-exclusive")
		b.ReportMetric(float64(dr.LongestHold.Microseconds())/1000, "ms-longest-hold")
		b.ReportMetric(float64(longest.Load())/1e6, "ms-longest-writer-op")
		b.ReportMetric(float64(idleLongest)/1e6, "ms-longest-writer-op-idle")
		b.ReportMetric(float64(inuse)/(1<<20), "MiB-heap-growth")
		b.ReportMetric(float64(live)/(1<<20), "MiB-live-heap-growth")
		b.ReportMetric(during/idle*100, "%writer-vs-idle")
		b.ReportMetric(float64(len(dr.Rebuilt)), "entries-rebuilt")
		b.ReportMetric(float64(len(dr.Adopted)), "adopted")
		b.ReportMetric(float64(dr.Records), "records")
		mustCleanB(b, e)
		f.Close()
	}
}

// mustCleanB fails the benchmark unless a check of e finds nothing but
// link counts (the inode row's to fix after a rebuild that lost names).
func mustCleanB(b *testing.B, e *engine.Engine) {
	b.Helper()
	s := e.Pin()
	defer s.Release()
	var bad []engine.Finding
	if _, err := s.Check(context.Background(), func(f engine.Finding) {
		if f.ID != engine.ErrNlink {
			bad = append(bad, f)
		}
	}); err != nil {
		b.Fatal(err)
	}
	if len(bad) > 0 {
		b.Fatalf("%d findings after the rebuild, first %v", len(bad), bad[0])
	}
}
