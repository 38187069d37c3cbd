package fuse

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkTree measures the kernel cache and the write size through a
// real mount, with the ordinary tools: cp -a of a tree of small files into
// the mount, find and ls -lR over it, rm -rf of it, and a sequential dd
// write and read. It runs two configurations on fresh images, interleaved
// by rounds (one round each per b.N): "nocache" (entry and attribute
// timeouts 0, every lookup and getattr a request; WRITE requests of 128
// KiB, go-fuse's default) and "default" (the mount's defaults: 1 s
// timeouts, 1 MiB writes). It reports each step's seconds per round as a
// metric named config-step. It needs root.
//
// SCRUBD_BENCH_FILES (default 20000) and SCRUBD_BENCH_MB (default 256)
// size it.
func BenchmarkTree(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("FUSE benchmarks need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		b.Skipf("no /dev/fuse: %v", err)
	}
	for _, bin := range []string{"fusermount3", "cp", "find", "ls", "rm", "dd"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("no %s", bin)
		}
	}
	files := envInt("SCRUBD_BENCH_FILES", 20000)
	mb := envInt("SCRUBD_BENCH_MB", 256)
	// The source tree, on the host filesystem: 100 directories of small
	// files (100 to 4000 bytes).
	src := filepath.Join(b.TempDir(), "src")
	for i := 0; i < files; i++ {
		d := filepath.Join(src, fmt.Sprintf("d%03d", i%100))
		if i < 100 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		data := bytes.Repeat([]byte{byte('a' + i%26)}, 100+(i*131)%3900)
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%06d", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	// The dd source: random bytes (zeros might be stored as holes).
	rnd := filepath.Join(b.TempDir(), "rnd")
	if o, err := exec.Command("dd", "if=/dev/urandom", "of="+rnd, "bs=1M", fmt.Sprintf("count=%d", mb)).CombinedOutput(); err != nil {
		b.Fatalf("dd: %v\n%s", err, o)
	}
	configs := []struct {
		name string
		opts Options
	}{
		{"nocache", Options{EntryTimeout: -1, AttrTimeout: -1, maxWrite: 128 << 10}},
		{"default", Options{}},
	}
	steps := []string{"cp", "find", "ls", "rm", "ddwrite", "ddread"}
	total := map[string]time.Duration{}
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for _, c := range configs {
			for step, d := range treeRound(b, src, rnd, mb, c.opts) {
				total[c.name+"-"+step] += d
			}
		}
	}
	b.StopTimer()
	for _, c := range configs {
		var line []string
		for _, s := range steps {
			sec := total[c.name+"-"+s].Seconds() / float64(b.N)
			b.ReportMetric(sec, c.name+"-"+s+"-s")
			line = append(line, fmt.Sprintf("%s %.2fs", s, sec))
		}
		b.Logf("%s (%d files, %d MiB): %s", c.name, files, mb, strings.Join(line, ", "))
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// treeRound runs the steps once on a fresh image mounted with opts.
func treeRound(b *testing.B, src, rnd string, mb int, opts Options) map[string]time.Duration {
	b.Helper()
	tmp := b.TempDir()
	img := filepath.Join(tmp, "fs.img")
	if err := engine.MkfsPath(img, int64(mb+512)<<20, false, engine.MkfsOptions{}); err != nil {
		b.Fatal(err)
	}
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	opts.FsName = img
	srv, err := Mount(fsys, dir, opts)
	if err != nil {
		fsys.Close()
		b.Fatal(err)
	}
	defer func() {
		if err := srv.Unmount(); err != nil {
			b.Errorf("unmount: %v", err)
		}
		if err := fsys.Close(); err != nil {
			b.Errorf("close: %v", err)
		}
	}()
	out := map[string]time.Duration{}
	run := func(step string, name string, args ...string) {
		b.Helper()
		start := time.Now()
		if o, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s %s: %v\n%.2000s", name, strings.Join(args, " "), err, o)
		}
		out[step] += time.Since(start)
	}
	tree := filepath.Join(dir, "tree")
	run("cp", "cp", "-a", src, tree)
	run("find", "find", tree, "-type", "f", "-size", "+1k")
	run("ls", "ls", "-lR", tree)
	run("rm", "rm", "-rf", tree)
	big := filepath.Join(dir, "big")
	run("ddwrite", "dd", "if="+rnd, "of="+big, "bs=1M", fmt.Sprintf("count=%d", mb), "conv=fsync")
	run("ddread", "dd", "if="+big, "of=/dev/null", "bs=1M")
	return out
}
