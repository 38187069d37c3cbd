package fs

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Benchmarks of the filesystem layer on real image files (fdatasync is
// real). Run with -benchtime=1x where a benchmark does a fixed workload;
// see docs/benchmarks.md for the commands and results.

func benchFS(b *testing.B, size int64, opts Options) (*FS, string) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.img")
	// Preallocated, as a block device or a long-used image would be: the
	// host filesystem then has no block allocation to journal on our
	// writes. (Writing zeroes before mkfs does not do it: mkfs truncates.)
	if err := engine.MkfsPath(path, size, false, engine.MkfsOptions{Preallocate: preallocate}); err != nil {
		b.Fatal(err)
	}
	if opts.CommitInterval == 0 {
		opts.CommitInterval = -1
	}
	f, err := OpenPath(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	return f, path
}

const fsyncFileSize = 50 << 20

// preallocate makes benchmark images with MkfsOptions.Preallocate
// (SCRUBD_BENCH_SPARSE=1 measures sparse images instead).
var preallocate = true

func init() {
	if os.Getenv("SCRUBD_BENCH_SPARSE") != "" {
		preallocate = false
	}
}

// BenchmarkFsyncRandom4K: random 4 KiB pwrite + fsync on a 50 MB file, the
// workload of the btrfs fast-fsync work. Sub-benchmarks: the log tree, a full
// commit per fsync (notreelog), and pwrite+fdatasync on a host file (the
// physical limit).
func BenchmarkFsyncRandom4K(b *testing.B) {
	for _, mode := range []string{"log", "log-nodelalloc", "notreelog", "hostfile"} {
		b.Run(mode, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 1))
			block := make([]byte, 4096)
			var write func(off int64) error
			var sync func() error
			switch mode {
			case "hostfile":
				fh, err := os.Create(filepath.Join(b.TempDir(), "host"))
				if err != nil {
					b.Fatal(err)
				}
				defer fh.Close()
				buf := make([]byte, 1<<20)
				for off := int64(0); off < fsyncFileSize; off += int64(len(buf)) {
					fh.WriteAt(buf, off)
				}
				unix.Fdatasync(int(fh.Fd()))
				write = func(off int64) error { _, err := fh.WriteAt(block, off); return err }
				sync = func() error { return unix.Fdatasync(int(fh.Fd())) }
			default:
				f, _ := benchFS(b, 1<<30, Options{NoTreeLog: mode == "notreelog", NoDelayedAlloc: mode == "log-nodelalloc"})
				defer f.Close()
				a, err := f.Create(RootIno, "data", NewInode{Mode: 0o644})
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, 1<<20)
				for off := int64(0); off < fsyncFileSize; off += int64(len(buf)) {
					if _, err := f.Write(a.Ino, buf, off); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				write = func(off int64) error { _, err := f.Write(a.Ino, block, off); return err }
				sync = func() error { return f.Fsync(a.Ino) }
				defer func() {
					st := f.Stats()
					b.ReportMetric(float64(st.FsyncLogged)/float64(b.N), "logged/op")
				}()
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				off := int64(r.IntN(fsyncFileSize/4096)) * 4096
				block[0] = byte(i)
				if err := write(off); err != nil {
					b.Fatal(err)
				}
				if err := sync(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "fsyncs/s")
		})
	}
}

const seqSize = 1 << 30

// BenchmarkSequential writes then reads a 1 GiB file in 1 MiB requests,
// through the API and on a host file. Use -benchtime=1x.
func BenchmarkSequential(b *testing.B) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.Run("api", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			f, _ := benchFS(b, seqSize+seqSize/2, Options{})
			a, _ := f.Create(RootIno, "big", NewInode{Mode: 0o644})
			start := time.Now()
			for off := int64(0); off < seqSize; off += int64(len(buf)) {
				if _, err := f.Write(a.Ino, buf, off); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Fsync(a.Ino); err != nil {
				b.Fatal(err)
			}
			w := time.Since(start)
			start = time.Now()
			for off := int64(0); off < seqSize; off += int64(len(buf)) {
				if _, err := f.Read(a.Ino, buf, off); err != nil {
					b.Fatal(err)
				}
			}
			rd := time.Since(start)
			b.ReportMetric(seqSize/w.Seconds()/(1<<20), "write-MB/s")
			b.ReportMetric(seqSize/rd.Seconds()/(1<<20), "read-MB/s")
			f.Close()
		}
	})
	b.Run("hostfile", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fh, err := os.Create(filepath.Join(b.TempDir(), "host"))
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for off := int64(0); off < seqSize; off += int64(len(buf)) {
				if _, err := fh.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			unix.Fdatasync(int(fh.Fd()))
			w := time.Since(start)
			start = time.Now()
			for off := int64(0); off < seqSize; off += int64(len(buf)) {
				if _, err := fh.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			rd := time.Since(start)
			b.ReportMetric(seqSize/w.Seconds()/(1<<20), "write-MB/s")
			b.ReportMetric(seqSize/rd.Seconds()/(1<<20), "read-MB/s")
			fh.Close()
		}
	})
}

// BenchmarkDelayedRefsOverwrite: a copy-on-write-heavy workload — random
// 4 KiB overwrites of a hot region (256 KiB or 4 MiB), committed every 1000
// writes — with
// the delayed-ref queue and with each operation's refs applied at once.
// Reports alloc/rmap/free-tree modifications and time per commit.
func BenchmarkDelayedRefsOverwrite(b *testing.B) {
	for _, hot := range []int{64, 1024} {
		for _, immediate := range []bool{false, true} {
			name := "delayed"
			if immediate {
				name = "immediate"
			}
			b.Run(fmt.Sprintf("hot=%dKiB/%s", hot*4, name), func(b *testing.B) { overwriteBench(b, hot, immediate) })
		}
	}
}

func overwriteBench(b *testing.B, hot int, immediate bool) {
	f, _ := benchFS(b, 256<<20, Options{Engine: engine.Options{NoDelayedRefs: immediate}})
	defer f.Close()
	a, _ := f.Create(RootIno, "hot", NewInode{Mode: 0o644})
	f.Write(a.Ino, make([]byte, hot*4096), 0)
	f.Sync()
	r := rand.New(rand.NewPCG(2, 2))
	block := make([]byte, 4096)
	before := f.Engine().Stats().Refs
	var commitTime, writeTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for j := 0; j < 1000; j++ {
			if _, err := f.Write(a.Ino, block, int64(r.IntN(hot))*4096); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		writeTime += t1.Sub(t0)
		commitTime += time.Since(t1)
	}
	after := f.Engine().Stats().Refs
	b.ReportMetric(float64(after.TreeMods-before.TreeMods)/float64(b.N), "treemods/commit")
	b.ReportMetric(float64(after.Merged-before.Merged)/float64(b.N), "merged/commit")
	b.ReportMetric(commitTime.Seconds()*1000/float64(b.N), "commit-ms")
	b.ReportMetric((commitTime+writeTime).Seconds()*1000/float64(b.N), "total-ms/1000writes")
}

// BenchmarkBufferedWrites: writes without fsync, as a program's buffered
// writes reach the filesystem — random 4 KiB writes over a 256 MiB file,
// and 1 GiB written sequentially in 128 KiB requests (FUSE's usual write
// size) — with delayed allocation and with every write allocated at once.
// A commit every 5,000 writes (random) or 32 MiB (sequential), and one at
// the end, are in the time: what delayed allocation moves to the commit
// is counted. Reports the extent items the file ends with.
func BenchmarkBufferedWrites(b *testing.B) {
	for _, wl := range []string{"random4k", "seq128k"} {
		for _, mode := range []string{"delalloc", "nodelalloc"} {
			b.Run(wl+"/"+mode, func(b *testing.B) {
				f, _ := benchFS(b, 2<<30, Options{NoDelayedAlloc: mode == "nodelalloc"})
				defer f.Close()
				a, err := f.Create(RootIno, "data", NewInode{Mode: 0o644})
				if err != nil {
					b.Fatal(err)
				}
				const span = 256 << 20
				buf := make([]byte, 1<<20)
				if wl == "random4k" {
					for off := int64(0); off < span; off += int64(len(buf)) {
						if _, err := f.Write(a.Ino, buf, off); err != nil {
							b.Fatal(err)
						}
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				r := rand.New(rand.NewPCG(1, 2))
				block := make([]byte, 4096)
				chunk := make([]byte, 128<<10)
				var bytes int64
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if wl == "random4k" {
						block[0] = byte(i)
						if _, err := f.Write(a.Ino, block, int64(r.IntN(span/4096))*4096); err != nil {
							b.Fatal(err)
						}
						bytes += 4096
						if i%5000 == 4999 {
							if err := f.Sync(); err != nil {
								b.Fatal(err)
							}
						}
						continue
					}
					for off := int64(0); off < 1<<30; off += int64(len(chunk)) {
						if _, err := f.Write(a.Ino, chunk, off); err != nil {
							b.Fatal(err)
						}
						if off%(32<<20) == 0 && off > 0 {
							if err := f.Sync(); err != nil {
								b.Fatal(err)
							}
						}
					}
					bytes += 1 << 30
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				el := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(bytes)/el.Seconds()/(1<<20), "MB/s")
				if wl == "random4k" {
					b.ReportMetric(float64(b.N)/el.Seconds(), "writes/s")
				}
				var items int
				f.e.View(func(tx *engine.Tx) error {
					tr, _ := tx.ReadTree(format.TreeExtent)
					return tr.Ascend(format.FileExtentKey(a.Ino, 0), func(k format.Key, _ []byte) bool {
						if k.Obj != a.Ino {
							return false
						}
						items++
						return true
					})
				})
				b.ReportMetric(float64(items), "extents")
			})
		}
	}
}
