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
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkNlinkRepair: the link-count repair of a filesystem of N files
// (SCRUBD_BENCH_FILES, default 20,000) in 100 directories, 1% of their
// counts skewed, while a writer creates, renames and unlinks files in one
// of those directories; reported: wall time, the writers' hold (the
// exclusive transaction), the writer's longest operation during the
// repair, its operations per second during the repair against idle, and
// the growth of the heap in use. The full form (200,000 files):
//
//	SCRUBD_BENCH_FILES=200000 go test ./repair -run '^$' -bench NlinkRepair -benchtime 1x -count 2 -timeout 60m
func BenchmarkNlinkRepair(b *testing.B) {
	n := 20000
	if v := os.Getenv("SCRUBD_BENCH_FILES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		img := filepath.Join(b.TempDir(), "fs.img")
		if err := fs.MkfsPath(img, int64(n)*8192+256<<20, false, engine.MkfsOptions{}); err != nil {
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
		var files []uint64
		for j := 0; j < n; j++ {
			a, err := f.Create(dirs[j%len(dirs)], fmt.Sprintf("f%d", j), fs.NewInode{Mode: 0o644})
			if err != nil {
				b.Fatal(err)
			}
			files = append(files, a.Ino)
		}
		e := f.Engine()
		if err := e.Update(func(tx *engine.Tx) error {
			for j := 0; j < n; j += 100 {
				if _, _, err := fs.SetNlink(tx, files[j], 7); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		// The writer: create, rename, unlink in dirs[0], timing each.
		var ops atomic.Uint64
		var longest atomic.Int64
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
				if _, err := f.Create(dirs[0], name, fs.NewInode{Mode: 0o644}); err == nil {
					f.Rename(dirs[0], name, dirs[0], "r"+name, 0)
					f.Unlink(dirs[0], "r"+name)
				}
				if d := time.Since(t0).Nanoseconds(); d > longest.Load() {
					longest.Store(d)
				}
				ops.Add(1)
			}
		}()
		time.Sleep(time.Second)
		idle := float64(ops.Swap(0))
		longest.Store(0)
		heap := heapGrowth()
		b.StartTimer()
		t0 := time.Now()
		rb, err := repairNlinks(context.Background(), e, ScrubOptions{fsys: f})
		took := time.Since(t0)
		b.StopTimer()
		during := float64(ops.Load()) / took.Seconds()
		inuse, _ := heap()
		close(stop)
		wg.Wait()
		if err != nil {
			b.Fatal(err)
		}
		if want := uint64((n + 99) / 100); rb.Records != want {
			b.Fatalf("fixed %d counts, want %d", rb.Records, want)
		}
		b.ReportMetric(took.Seconds(), "s/repair")
		b.ReportMetric(rb.PauseMs, "ms-hold")
		b.ReportMetric(float64(longest.Load())/1e6, "ms-longest-writer-op")
		b.ReportMetric(during/idle*100, "%writer-vs-idle")
		b.ReportMetric(float64(inuse)/(1<<20), "MiB-heap-growth")
		f.Close()
	}
}
