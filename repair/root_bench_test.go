package repair

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkRootHeaderScan: the header scan that finds every tree's root
// without the root tree (engine/roottree_scan.go) over an image of N
// files (SCRUBD_BENCH_FILES, default 20,000) of 16 KiB each in 100
// directories, against a plain sequential read of the same image in the
// same chunks in the same run (the peer: what the disk and page cache
// give). Each iteration drops the image from the page cache
// (fadvise DONTNEED) before each of the two reads, three rounds of both
// per iteration. Reported: the scan's
// and the plain read's MB/s, their ratio, the nodes indexed, the trees
// found, and the bytes the scan allocated. The full form (200,000 files,
// about 3.5 GiB):
//
//	SCRUBD_BENCH_FILES=200000 go test ./repair -run '^$' -bench RootHeaderScan -benchtime 1x -timeout 60m
func BenchmarkRootHeaderScan(b *testing.B) {
	n := 20000
	if v := os.Getenv("SCRUBD_BENCH_FILES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	img := filepath.Join(b.TempDir(), "fs.img")
	buildStart := time.Now()
	if err := fs.MkfsPath(img, int64(n)*24<<10+256<<20, false, engine.MkfsOptions{}); err != nil {
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
	data := make([]byte, 16<<10)
	for j := 0; j < n; j++ {
		a, err := f.Create(dirs[j%len(dirs)], fmt.Sprintf("f%d", j), fs.NewInode{Mode: 0o644})
		if err != nil {
			b.Fatal(err)
		}
		for k := range data {
			data[k] = byte(j + k*7)
		}
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	e, err := engine.OpenPath(img, engine.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	s := e.Pin()
	sb := s.Super()
	s.Release()
	e.Close()
	b.Logf("image of %d files, %d MiB, built in %v", n, sb.TotalBlocks*4096>>20, time.Since(buildStart).Round(time.Second))

	dev, err := disk.Open(img, true)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	fd, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Sync(); err != nil { // nothing dirty left for DONTNEED to skip
		b.Fatal(err)
	}
	drop := func() {
		if err := unix.Fadvise(int(fd.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Logf("fadvise: %v", err)
		}
	}
	size := dev.Size()
	var scanD, readD time.Duration
	var nodes, found uint64
	var alloc uint64
	b.ResetTimer()
	const rounds = 3 // per b.N: run with -benchtime 1x, the image is built once
	for i := 0; i < b.N*rounds; i++ {
		plain := func() {
			drop()
			t0 := time.Now()
			buf := make([]byte, 4<<20)
			for off := int64(0); off < size; off += int64(len(buf)) {
				p := buf[:min(int64(len(buf)), size-off)]
				if _, err := dev.ReadAt(p, off); err != nil {
					b.Fatal(err)
				}
			}
			readD += time.Since(t0)
		}
		// The peer, a plain sequential read 4 MiB at a time, goes first
		// in even rounds and last in odd ones.
		if i%2 == 0 {
			plain()
		}
		drop()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		scan, err := engine.ScanRoots(context.Background(), dev, &sb, engine.RootScanOptions{})
		if err != nil {
			b.Fatal(err)
		}
		scanD += time.Since(t0)
		runtime.ReadMemStats(&m1)
		alloc += m1.TotalAlloc - m0.TotalAlloc
		if i%2 == 1 {
			plain()
		}
		if len(scan.Missing) > 0 {
			b.Fatalf("scan missed trees: %v", scan.Missing)
		}
		nodes, found = scan.Nodes, uint64(len(scan.Found))
	}
	mb := float64(size) / 1e6 * float64(b.N*rounds)
	b.ReportMetric(mb/scanD.Seconds(), "scan_MB/s")
	b.ReportMetric(mb/readD.Seconds(), "read_MB/s")
	b.ReportMetric(readD.Seconds()/scanD.Seconds(), "scan/read_speed")
	b.ReportMetric(scanD.Seconds()/float64(b.N*rounds), "scan_s")
	b.ReportMetric(float64(nodes), "nodes")
	b.ReportMetric(float64(found), "trees")
	b.ReportMetric(float64(alloc)/float64(b.N*rounds)/(1<<20), "scan_alloc_MiB")
}
