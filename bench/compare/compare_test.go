package main

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The crc32c pass reads the written ranges only and checksums every 4 KiB
// block of them.
func TestCRCPass(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	data := chunk(7, 1<<20+512)
	if _, err := f.WriteAt(data, 8<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(32 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n, acc, err := crcPass(p)
	if err != nil {
		t.Fatal(err)
	}
	// The written range ends inside a block: SEEK_HOLE rounds it up to the
	// block. A filesystem without SEEK_DATA reports the whole file.
	start := int64(8 << 20)
	switch n {
	case 1<<20 + 4096:
	case 32 << 20:
		start = 0
	default:
		t.Fatalf("read %d bytes: neither the written blocks nor the whole file", n)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	buf := raw[start : start+n]
	if !bytes.Equal(buf[8<<20-start:][:len(data)], data) {
		t.Fatal("test file not as written")
	}
	var want uint32
	tab := crc32.MakeTable(crc32.Castagnoli)
	for i := 0; i < len(buf); i += 4096 {
		want ^= crc32.Checksum(buf[i:min(i+4096, len(buf))], tab)
	}
	if acc != want {
		t.Fatalf("crc %08x, want %08x", acc, want)
	}
}

func TestSummarizeAndRatios(t *testing.T) {
	s := summarize([]sample{{Wall: 3, CPU: 1, MaxRSS: 10, Metric: 5}, {Wall: 1, CPU: 3, MaxRSS: 30, Metric: 1}, {Wall: 2, CPU: 2, MaxRSS: 20, Metric: 3}})
	if s.Wall != 2 || s.CPU != 2 || s.MaxRSS != 20 || s.Metric != 3 || len(s.Runs) != 3 {
		t.Fatalf("medians: %+v", s.sample)
	}
	r := &row{Scrubd: s, Other: summarize([]sample{{Wall: 4, CPU: 1, MaxRSS: 40, Metric: 6}})}
	r.ratios()
	if r.Ratio.Wall != 0.5 || r.Ratio.CPU != 2 || r.Ratio.Peak != 0.5 || r.Ratio.Metric != 0.5 {
		t.Fatalf("ratios: %+v", r.Ratio)
	}
	if (&row{}).Ratio.Metric != 0 || div(1, 0) != 0 {
		t.Fatal("a missing figure must give no ratio")
	}
}

func TestFioMetric(t *testing.T) {
	out := []byte("note: both iodepth >= 1 and synchronous I/O engine are selected\n" +
		`{"jobs":[{"read":{"iops":10,"bw_bytes":2097152,"io_bytes":4096},"write":{"iops":250.5,"bw_bytes":1048576,"io_bytes":8192}}]}`)
	var s sample
	if err := iopsWrite(out, &s); err != nil || s.Metric != 250.5 || s.Bytes != 8192 {
		t.Fatalf("iops: %v %+v", err, s)
	}
	if err := bwRead(out, &s); err != nil || s.Metric != 2 || s.Bytes != 4096 {
		t.Fatalf("read bw: %v %+v", err, s)
	}
	if err := bwWrite([]byte(`{"jobs":[]}`), &s); err == nil {
		t.Fatal("no job must be an error")
	}
}

func TestScrubdMetric(t *testing.T) {
	var s sample
	s.Wall = 2
	if err := scrubdMetric([]byte(`{"bytes_verified":4194304,"status":"clean","complete":true}`), &s); err != nil || s.Metric != 2 || s.Bytes != 4194304 {
		t.Fatalf("%v %+v", err, s)
	}
	if err := scrubdMetric([]byte(`{"status":"interrupted","complete":false}`), &s); err == nil {
		t.Fatal("an incomplete scrub must be an error")
	}
}

func TestReadProcStat(t *testing.T) {
	ps, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ps.hwmKiB <= 0 || ps.cpu < 0 {
		t.Fatalf("%+v", ps)
	}
}

// The content is the same on every call: every filesystem gets the same.
func TestPopulateDeterministic(t *testing.T) {
	cfg := config{files: 30, treeFiles: 5, fragMiB: 1, dataGB: 1.0 / 1024}
	var sums []string
	for i := 0; i < 2; i++ {
		dir := t.TempDir()
		st, err := populate(context.Background(), cfg, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Files != 30 || st.TreeFiles != 5 || st.DataBytes != 2<<20+1<<20 {
			t.Fatalf("stats %+v", st)
		}
		var b strings.Builder
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if fi.Mode().IsRegular() {
				raw, _ := os.ReadFile(p)
				rel, _ := filepath.Rel(dir, p)
				fmt.Fprintf(&b, "%s %d %08x\n", rel, len(raw), crc32.ChecksumIEEE(raw))
			}
			return nil
		})
		sums = append(sums, b.String())
	}
	if sums[0] != sums[1] || !strings.Contains(sums[0], "frag/a") {
		t.Fatal("populate wrote different content")
	}
}

// checkSpace refuses images that cannot fit in the working directory, and
// lets small ones through.
func TestCheckSpace(t *testing.T) {
	b := &bench{dir: t.TempDir()}
	if err := b.checkSpace(1 << 30); err == nil || !strings.Contains(err.Error(), "--image-gb") {
		t.Fatalf("four images of 1 EiB: %v", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.dir, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < 2<<30 {
		t.Skipf("only %d bytes free here", free)
	}
	if err := b.checkSpace(0); err != nil {
		t.Fatalf("images of 0 GiB: %v", err)
	}
}
