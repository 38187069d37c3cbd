package repair

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkCheck: the offline check (what `scrubd fsck IMAGE` runs) of an
// image of N small files (SCRUBD_BENCH_FILES, default 20,000) in 100
// directories plus two fragmented large files (SCRUBD_BENCH_BIG_MIB each,
// default 1024, written in alternating 256 KiB pieces). The check runs in
// a child process of its own, so that what it reports is the check's
// alone: CPU seconds (user+system), wall seconds and peak memory (the
// child's peak resident set, VmHWM, and its peak Go heap; the CPU time
// includes the test binary's start). The full form:
//
//	SCRUBD_BENCH_FILES=200000 go test ./repair -run '^$' -bench '^BenchmarkCheck$' -benchtime 1x -timeout 60m
//
// SCRUBD_BENCH_IMAGE names an image file to keep and reuse between runs
// (built there if missing).
func BenchmarkCheck(b *testing.B) {
	n := benchEnvInt(b, "SCRUBD_BENCH_FILES", 20000)
	bigMiB := benchEnvInt(b, "SCRUBD_BENCH_BIG_MIB", 1024)
	img := os.Getenv("SCRUBD_BENCH_IMAGE")
	if img == "" {
		img = filepath.Join(b.TempDir(), "fs.img")
	}
	if _, err := os.Stat(img); err != nil {
		t0 := time.Now()
		if err := buildCheckImage(img, n, bigMiB); err != nil {
			os.Remove(img)
			b.Fatal(err)
		}
		b.Logf("built %d files + 2×%d MiB in %v", n, bigMiB, time.Since(t0).Round(time.Second))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCheckBenchChild$", "-test.v")
		cmd.Env = append(os.Environ(), "SCRUBD_CHECK_CHILD="+img)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("check child: %v\n%s", err, out)
		}
		var heapMiB, wall, cpu, hwm float64
		var findings int
		if _, err := fmt.Sscanf(string(grepLine(out, "checkchild ")), "checkchild findings=%d wall=%g heap=%g cpu=%g hwm=%g", &findings, &wall, &heapMiB, &cpu, &hwm); err != nil {
			b.Fatalf("check child output: %v\n%s", err, out)
		}
		if findings != 0 {
			b.Fatalf("check of the undamaged image: %d findings\n%s", findings, out)
		}
		b.ReportMetric(cpu, "cpu-s/check")
		b.ReportMetric(wall, "wall-s/check")
		b.ReportMetric(hwm, "MiB-maxrss")
		b.ReportMetric(heapMiB, "MiB-peak-heap")
	}
}

// TestCheckBenchChild is BenchmarkCheck's child: it checks the image
// SCRUBD_CHECK_CHILD names and prints its findings, wall time and peak Go
// heap. Without that variable it does nothing.
func TestCheckBenchChild(t *testing.T) {
	img := os.Getenv("SCRUBD_CHECK_CHILD")
	if img == "" {
		t.Skip("BenchmarkCheck's child process")
	}
	stop := make(chan struct{})
	peak := make(chan uint64)
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	go func() { // sample the heap in use (a GC's view, cheap to read)
		var max uint64
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				peak <- max
				return
			case <-tk.C:
				metrics.Read(sample)
				max = maxU(max, sample[0].Value.Uint64())
			}
		}
	}()
	t0 := time.Now()
	rep, err := CheckOffline(context.Background(), img, Options{})
	wall := time.Since(t0)
	close(stop)
	heap := <-peak
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Structures {
		for _, f := range s.Findings {
			t.Log(s.Name, f)
		}
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("checkchild findings=%d wall=%g heap=%g cpu=%g hwm=%g\n", rep.Found, wall.Seconds(), float64(heap)/(1<<20),
		time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Seconds(), float64(vmHWM())/(1<<20))
}

// buildCheckImage makes BenchmarkCheck's image at path.
func buildCheckImage(path string, n, bigMiB int) error {
	size := int64(n)*8192 + 2*int64(bigMiB)<<20*9/8 + 256<<20
	if err := fs.MkfsPath(path, size, false, engine.MkfsOptions{}); err != nil {
		return err
	}
	f, err := fs.OpenPath(path, fs.Options{CommitInterval: time.Second})
	if err != nil {
		return err
	}
	defer f.Close()
	dirs := make([]uint64, 100)
	for d := range dirs {
		a, err := f.Mkdir(fs.RootIno, fmt.Sprintf("d%d", d), fs.NewInode{Mode: 0o755})
		if err != nil {
			return err
		}
		dirs[d] = a.Ino
	}
	small := make([]byte, 1500)
	for j := 0; j < n; j++ {
		a, err := f.Create(dirs[j%len(dirs)], fmt.Sprintf("f%d", j), fs.NewInode{Mode: 0o644})
		if err != nil {
			return err
		}
		small[0], small[1], small[2] = byte(j), byte(j>>8), byte(j>>16)
		if _, err := f.Write(a.Ino, small, 0); err != nil {
			return err
		}
	}
	var big [2]uint64
	for k := range big {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("big%d", k), fs.NewInode{Mode: 0o644})
		if err != nil {
			return err
		}
		big[k] = a.Ino
	}
	piece := make([]byte, 256<<10)
	for off := int64(0); off < int64(bigMiB)<<20; off += int64(len(piece)) {
		for k, ino := range big {
			piece[0], piece[1] = byte(off>>18), byte(k)
			if _, err := f.Write(ino, piece, off); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

func benchEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a count", name, v)
	}
	return n
}

// grepLine returns the first line of out that starts with prefix.
func grepLine(out []byte, prefix string) []byte {
	for len(out) > 0 {
		i := 0
		for i < len(out) && out[i] != '\n' {
			i++
		}
		line := out[:i]
		if len(line) >= len(prefix) && string(line[:len(prefix)]) == prefix {
			return line
		}
		if i == len(out) {
			break
		}
		out = out[i+1:]
	}
	return nil
}

func maxU(a, b uint64) uint64 { return max(a, b) }

// vmHWM is the process's peak resident set in bytes (VmHWM: unlike the
// rusage of a child, which starts from its parent's before the exec).
func vmHWM() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	line := grepLine(b, "VmHWM:")
	var kb uint64
	fmt.Sscanf(string(line), "VmHWM: %d kB", &kb)
	return kb << 10
}
