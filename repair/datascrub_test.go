package repair

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// dataHit is what a data finding names.
type dataHit struct {
	Path   string
	Inode  uint64
	Offset uint64
	Disk   format.BlockNr
}

func (h dataHit) String() string {
	return fmt.Sprintf("%s@%d(ino %d, disk %d)", h.Path, h.Offset, h.Inode, h.Disk)
}

func hitsOf(t *testing.T, fs []engine.Finding) []dataHit {
	t.Helper()
	var out []dataHit
	for _, f := range fs {
		if f.ID != engine.ErrDataChecksum || f.File == nil || f.Tree != format.OwnerData || f.Block != f.File.DiskBlock {
			t.Fatalf("not a data finding: %+v", f)
		}
		out = append(out, dataHit{f.File.Path, f.File.Inode, f.File.Offset, f.File.DiskBlock})
	}
	sortHits(out)
	return out
}

func reportHits(rep *Report) []dataHit {
	var out []dataHit
	for _, s := range rep.Structures {
		for _, fd := range s.Findings {
			if fd.Name == engine.ErrDataChecksum.Name() {
				out = append(out, dataHit{fd.Path, fd.Inode, *fd.Offset, format.BlockNr(*fd.DiskBlock)})
			}
		}
	}
	sortHits(out)
	return out
}

func sortHits(h []dataHit) {
	slices.SortFunc(h, func(a, b dataHit) int { return strings.Compare(a.String(), b.String()) })
}

// diskOf returns the disk block holding byte off of ino in the last
// commit (0: a hole).
func diskOf(t *testing.T, f *fs.FS, ino, off uint64) format.BlockNr {
	t.Helper()
	s := f.Engine().Pin()
	defer s.Release()
	tr, _ := s.Tree(format.TreeExtent)
	fb := off / format.BlockSize
	k, v, ok, err := tr.Last(format.FileExtentKey(ino, fb))
	if err != nil || !ok || k.Obj != ino || k.Type != format.TypeFileExtent {
		return 0
	}
	fe, err := format.DecodeFileExtent(v)
	if err != nil || k.Off+fe.Count <= fb {
		return 0
	}
	return fe.Disk(k.Off, fb)
}

// TestDataScrubFindsExactly: data blocks damaged in files of every shape
// (small, multi-extent, fragmented, sparse, hard-linked under two paths,
// nested, split by an overwrite, truncated) are found exactly — path,
// inode, offset and disk block, once per file — by the disk-order scrub,
// and exactly as the file-by-file scrub it replaced found them; blocks no
// file maps any more (the middle an overwrite replaced, the tail a
// truncate cut) are not read. A block the device cannot read is found
// (disk block 0, as before). A scrub canceled at a cursor and resumed
// from it finds the same, and verifies the same bytes, once.
func TestDataScrubFindsExactly(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	fill := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) ^ seed ^ byte(i>>12)
		}
		return b
	}
	mk := func(dir uint64, name string) uint64 {
		a, err := f.Create(dir, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		return a.Ino
	}
	mkdir := func(dir uint64, name string) uint64 {
		a, err := f.Mkdir(dir, name, fs.NewInode{Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		return a.Ino
	}
	write := func(ino uint64, p []byte, off int64) {
		if _, err := f.Write(ino, p, off); err != nil {
			t.Fatal(err)
		}
	}
	type target struct {
		path string // the path the finding names ("": none expected)
		ino  uint64
		off  uint64
		disk format.BlockNr // filled in below unless set
	}
	var targets []*target
	hit := func(path string, ino, off uint64) { targets = append(targets, &target{path: path, ino: ino, off: off}) }

	small := mk(fs.RootIno, "small")
	write(small, fill(3000, 1), 0)
	hit("/small", small, 0)

	multi := mk(fs.RootIno, "multi") // 3 MiB: several extents of at most 224 blocks
	for i := 0; i < 3; i++ {
		write(multi, fill(1<<20, byte(10+i)), int64(i)<<20)
	}
	hit("/multi", multi, 0)
	hit("/multi", multi, 1<<20+4096)
	hit("/multi", multi, 3<<20-4096)

	fr1, fr2 := mk(fs.RootIno, "frag1"), mk(fs.RootIno, "frag2") // extents interleaved on disk
	for i := 0; i < 16; i++ {
		write(fr1, fill(8192, byte(i)), int64(i)*8192)
		write(fr2, fill(8192, byte(100+i)), int64(i)*8192)
	}
	hit("/frag1", fr1, 24<<10)
	hit("/frag2", fr2, 40<<10)
	hit("/frag2", fr2, 44<<10)

	sparse := mk(fs.RootIno, "sparse")
	write(sparse, fill(8192, 3), 0)
	write(sparse, fill(8192, 4), 2<<20)
	hit("/sparse", sparse, 2<<20+4096)

	a, b := mkdir(fs.RootIno, "a"), mkdir(fs.RootIno, "b")
	x := mk(a, "x")
	write(x, fill(20000, 5), 0)
	if _, err := f.Link(x, b, "y"); err != nil {
		t.Fatal(err)
	}
	hit("/a/x", x, 4096) // one inode: once, by its first path

	d1 := mkdir(fs.RootIno, "d1")
	d2 := mkdir(d1, "d2")
	d3 := mkdir(d2, "d3")
	deep := mk(d3, "deep")
	write(deep, fill(16384, 6), 0)
	hit("/d1/d2/d3/deep", deep, 8192)

	split := mk(fs.RootIno, "split")
	write(split, fill(65536, 7), 0)
	trunc := mk(fs.RootIno, "trunc")
	write(trunc, fill(65536, 8), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The old disk blocks an overwrite and a truncate leave unmapped:
	// damaged, and not reported.
	dead := []format.BlockNr{diskOf(t, f, split, 16<<10), diskOf(t, f, trunc, 40<<10)}
	write(split, fill(4096, 9), 16<<10)
	if err := f.Truncate(trunc, 10000); err != nil {
		t.Fatal(err)
	}
	hit("/split", split, 32<<10)
	hit("/trunc", trunc, 8192) // the partial last block
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if diskOf(t, f, split, 16<<10) == dead[0] || dead[0] == 0 || dead[1] == 0 {
		t.Fatalf("the overwrite did not move the block: %v", dead)
	}
	var want []dataHit
	for _, tg := range targets {
		tg.disk = diskOf(t, f, tg.ino, tg.off)
		if tg.disk == 0 {
			t.Fatalf("%s offset %d is not mapped", tg.path, tg.off)
		}
		want = append(want, dataHit{tg.path, tg.ino, tg.off - tg.off%format.BlockSize, tg.disk})
	}
	sortHits(want)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		fh.WriteAt(bytes.Repeat([]byte{0xee}, format.BlockSize), int64(tg.disk)*format.BlockSize)
	}
	for _, d := range dead {
		fh.WriteAt(bytes.Repeat([]byte{0xdd}, format.BlockSize), int64(d)*format.BlockSize)
	}
	fh.Close()

	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustClean(t, f.Engine()); f.Close() })
	ctx := context.Background()
	rep, err := Scrub(ctx, f, img, ScrubOptions{Data: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := reportHits(rep); !slices.Equal(got, want) || rep.Found != len(want) {
		t.Fatalf("the scrub found (%d in all)\n%v\nwant\n%v", rep.Found, got, want)
	}
	if rep.ThroughputBytesS <= 0 {
		t.Errorf("no throughput in the report: %+v", rep)
	}
	newF, st, err := scrubData(ctx, f, nil, true, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldF, oldVerified, err := scrubDataByFile(ctx, f, nil, true, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, old := hitsOf(t, newF), hitsOf(t, oldF); !slices.Equal(got, old) || !slices.Equal(got, want) {
		t.Fatalf("disk order found\n%v\nfile by file\n%v", got, old)
	}
	// The file-by-file scrub counted the sparse file's hole as verified;
	// the disk-order one reads only what is mapped.
	if hole := uint64(2<<20 - 8192); st.verified+hole != oldVerified || rep.BytesVerified != st.verified {
		t.Fatalf("verified %d bytes (report %d), the file-by-file scrub %d (with a %d-byte hole)", st.verified, rep.BytesVerified, oldVerified, hole)
	}

	t.Run("resume", func(t *testing.T) {
		defer func(n uint64) { dataRunBlocks = n }(dataRunBlocks)
		dataRunBlocks = 128 // several runs on this image
		var cps []engine.ScrubCursor
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, _, err := scrubData(cctx, f, nil, true, nil, func(c engine.ScrubCursor) {
			c.Bad = slices.Clone(c.Bad)
			if cps = append(cps, c); len(cps) == 3 {
				cancel()
			}
		}, nil)
		if !errors.Is(err, context.Canceled) || len(cps) < 3 {
			t.Fatalf("canceled scrub: %v after %d cursors", err, len(cps))
		}
		cur := cps[2]
		if !cur.DiskOrder || cur.NextDisk == 0 || cur.Verified == 0 || cur.Verified >= st.verified {
			t.Fatalf("cursor %+v (of %d bytes)", cur, st.verified)
		}
		// Through the image, as the daemon keeps it.
		if err := f.Engine().Update(func(tx *engine.Tx) error { return tx.SetScrubCursor(cur) }); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		kept, ok, err := f.Engine().ScrubCursor()
		if err != nil || !ok || kept.NextDisk != cur.NextDisk || len(kept.Bad) != len(cur.Bad) {
			t.Fatalf("kept cursor %+v %v %v, want %+v", kept, ok, err, cur)
		}
		rf, rst, err := scrubData(ctx, f, nil, true, &kept, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := hitsOf(t, rf); !slices.Equal(got, want) || rst.verified != st.verified {
			t.Fatalf("resumed at disk block %d: found\n%v\nverified %d, want %d", kept.NextDisk, got, rst.verified, st.verified)
		}
		if err := f.Engine().Update(func(tx *engine.Tx) error { return tx.ClearScrubCursor() }); err != nil {
			t.Fatal(err)
		}
		// An inode-order cursor of an older build: the files below its
		// inode are not read again (nor reported, but from its list).
		old := engine.ScrubCursor{Data: true, NextIno: deep}
		rf, _, err = scrubData(ctx, f, nil, true, &old, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var above []dataHit
		for _, h := range want {
			if h.Inode >= deep {
				above = append(above, h)
			}
		}
		if got := hitsOf(t, rf); !slices.Equal(got, above) {
			t.Fatalf("resumed at inode %d: found\n%v\nwant\n%v", deep, got, above)
		}
	})

	t.Run("unreadable", func(t *testing.T) {
		// The same image through a device failing the reads of one data
		// block of /d1/d2/d3/deep.
		bad := diskOf(t, f, deep, 0)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1}); err != nil {
				t.Fatal(err)
			}
		}()
		dev, err := disk.Open(img, true)
		if err != nil {
			t.Fatal(err)
		}
		fd := disk.NewFaulty(dev)
		fd.FailReads(int64(bad)*format.BlockSize, format.BlockSize, syscall.EIO)
		g, err := fs.Open(fd, fs.Options{CommitInterval: -1, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		nf, _, err := scrubData(ctx, g, nil, true, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		of, _, err := scrubDataByFile(ctx, g, nil, true, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		w := append(slices.Clone(want), dataHit{"/d1/d2/d3/deep", deep, 0, 0})
		sortHits(w)
		if got, old := hitsOf(t, nf), hitsOf(t, of); !slices.Equal(got, w) || !slices.Equal(old, w) {
			t.Fatalf("with an unreadable block: found\n%v\nthe file-by-file scrub\n%v\nwant\n%v", got, old, w)
		}
	})
}

// TestDataScrubNoFalsePositivesUnderLoad: online data scrubs of a
// filesystem that writers keep overwriting, truncating, deleting and
// creating files on (committing every few milliseconds, so blocks the
// scrub's generation maps are freed under it) find nothing: the pin keeps
// them from reuse until the scrub is done.
func TestDataScrubNoFalsePositivesUnderLoad(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Sync(); err != nil {
			t.Error(err)
		}
		mustClean(t, f.Engine())
		f.Close()
	})
	// Some data to scrub that the writers do not touch, and theirs.
	nbase := 8
	if testing.Short() {
		nbase = 4
	}
	mkFiles(t, f, "base", nbase, 256<<10)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops [2]atomic.Int64
	var werr [2]error
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			names := map[string]uint64{}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", w, r.IntN(6))
				ino, ok := names[name]
				var err error
				switch op := r.IntN(10); {
				case !ok:
					var a fs.Attr
					a, err = f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
					ino = a.Ino
					names[name] = ino
				case op < 6:
					data := make([]byte, 1+r.IntN(96<<10))
					for j := range data {
						data[j] = byte(r.Uint32())
					}
					_, err = f.Write(ino, data, int64(r.IntN(256<<10)))
				case op < 8:
					err = f.Truncate(ino, uint64(r.IntN(128<<10)))
				default:
					err = f.Unlink(fs.RootIno, name)
					delete(names, name)
				}
				if err != nil {
					werr[w] = fmt.Errorf("op %d on %s: %w", i, name, err)
					return
				}
				ops[w].Add(1)
			}
		}()
	}
	// Paced (the online rate limit), so that the writers change much
	// while each run reads.
	runs, minOps := 6, int64(2000)
	if testing.Short() {
		runs, minOps = 2, 60
	}
	var verified uint64
	i := 0
	for ; i < runs || (ops[0].Load()+ops[1].Load() < minOps && i < 2*runs); i++ {
		ctl := NewScrubControl(nil)
		ctl.SetRate(Rate{BytesPerSec: 16 << 20})
		rf, st, err := scrubData(context.Background(), f, ctl, true, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rf) != 0 {
			close(stop)
			wg.Wait()
			t.Fatalf("run %d: false findings under load: %v", i, hitsOf(t, rf))
		}
		verified += st.verified
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Data: true})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Found != 0 {
		t.Fatalf("scrub under load found %d: %+v", rep.Found, rep.Structures)
	}
	for w, err := range werr {
		if err != nil {
			t.Fatalf("writer %d: %v", w, err)
		}
	}
	if verified < uint64(i*nbase)*256<<10 {
		t.Fatalf("%d bytes verified in %d runs", verified, i)
	}
	t.Logf("%d runs verified %d bytes while the writers made %d+%d changes", i, verified, ops[0].Load(), ops[1].Load())
}

// mkFiles makes n files of size bytes each, named prefix0…, and syncs.
func mkFiles(tb testing.TB, f *fs.FS, prefix string, n, size int) []uint64 {
	tb.Helper()
	buf := make([]byte, min(size, 1<<20))
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	var inos []uint64
	for i := 0; i < n; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("%s%d", prefix, i), fs.NewInode{Mode: 0o644})
		if err != nil {
			tb.Fatal(err)
		}
		for off := 0; off < size; off += len(buf) {
			if _, err := f.Write(a.Ino, buf[:min(len(buf), size-off)], int64(off)); err != nil {
				tb.Fatal(err)
			}
		}
		inos = append(inos, a.Ino)
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	return inos
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDataScrub: the disk-order data scrub of an image holding
// SCRUBD_BENCH_DATA_MB MiB (default 256) of file data — files written in
// large and in small interleaved pieces — against a bare crc32c pass over
// the same image file, in the same run: MB/s and CPU ns a byte of each,
// and their ratios (the target: the scrub's CPU a byte at most 2x the
// bare pass's). The file-by-file scrub it replaced runs once too, with
// -bench-old... (SCRUBD_BENCH_OLD=1). Use -benchtime=1x.
func BenchmarkDataScrub(b *testing.B) {
	mb := 256
	if v := os.Getenv("SCRUBD_BENCH_DATA_MB"); v != "" {
		fmt.Sscan(v, &mb)
	}
	img := filepath.Join(b.TempDir(), "data.img")
	if err := engine.MkfsPath(img, int64(mb)<<20*5/4+64<<20, false, engine.MkfsOptions{}); err != nil {
		b.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	// Three quarters in 8 MiB files written a MiB at a time, a quarter in
	// pairs of files written 16 KiB at a time, interleaved.
	mkFiles(b, f, "big", mb*3/4/8, 8<<20)
	small := make([]byte, 16<<10)
	for i := range small {
		small[i] = byte(i * 31)
	}
	for p := 0; p < mb/4/4; p++ {
		x, _ := f.Create(fs.RootIno, fmt.Sprintf("frag%da", p), fs.NewInode{Mode: 0o644})
		y, _ := f.Create(fs.RootIno, fmt.Sprintf("frag%db", p), fs.NewInode{Mode: 0o644})
		for off := 0; off < 2<<20; off += len(small) {
			f.Write(x.Ino, small, int64(off))
			f.Write(y.Ino, small, int64(off))
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	st, _ := os.Stat(img)
	type pass struct {
		bytes   uint64
		wall    time.Duration
		cpu     time.Duration
		checked bool
	}
	measure := func(fn func() uint64) pass {
		c0, t0 := cpuTime(), time.Now()
		n := fn()
		return pass{bytes: n, wall: time.Since(t0), cpu: cpuTime() - c0}
	}
	mbs := func(p pass) float64 { return float64(p.bytes) / p.wall.Seconds() / 1e6 }
	nsb := func(p pass) float64 { return float64(p.cpu.Nanoseconds()) / float64(p.bytes) }
	table := crc32.MakeTable(crc32.Castagnoli)
	for i := 0; i < b.N; i++ {
		// Warm both the same way: the image is in the page cache after
		// the writes; read it once more so neither pass pays for it.
		bare := func() uint64 {
			fh, err := os.Open(img)
			if err != nil {
				b.Fatal(err)
			}
			defer fh.Close()
			buf := make([]byte, 1<<20)
			var n uint64
			var sum uint32
			for {
				k, err := fh.Read(buf)
				for j := 0; j+format.BlockSize <= k; j += format.BlockSize {
					sum ^= crc32.Checksum(buf[j:j+format.BlockSize], table)
				}
				n += uint64(k)
				if err != nil {
					break
				}
			}
			_ = sum
			return n
		}
		bare()
		crc := measure(bare)
		scrub := measure(func() uint64 {
			out, ds, err := scrubData(context.Background(), f, nil, true, nil, nil, nil)
			if err != nil || len(out) != 0 {
				b.Fatalf("scrub: %v %d found", err, len(out))
			}
			return ds.verified
		})
		b.ReportMetric(mbs(crc), "crc32c-MB/s")
		b.ReportMetric(nsb(crc), "crc32c-cpu-ns/B")
		b.ReportMetric(mbs(scrub), "scrub-MB/s")
		b.ReportMetric(nsb(scrub), "scrub-cpu-ns/B")
		b.ReportMetric(nsb(scrub)/nsb(crc), "cpu/B-ratio")
		b.ReportMetric(mbs(crc)/mbs(scrub), "MB/s-ratio")
		b.Logf("image %d MiB, %d MiB of file data: bare crc32c %.0f MB/s %.3f cpu-ns/B; scrub %.0f MB/s %.3f cpu-ns/B",
			st.Size()>>20, scrub.bytes>>20, mbs(crc), nsb(crc), mbs(scrub), nsb(scrub))
		if os.Getenv("SCRUBD_BENCH_OLD") != "" {
			old := measure(func() uint64 {
				out, n, err := scrubDataByFile(context.Background(), f, nil, true, nil, nil, nil)
				if err != nil || len(out) != 0 {
					b.Fatalf("old scrub: %v %d found", err, len(out))
				}
				return n
			})
			b.ReportMetric(mbs(old), "byfile-MB/s")
			b.ReportMetric(nsb(old), "byfile-cpu-ns/B")
			b.Logf("file by file: %.0f MB/s %.3f cpu-ns/B (%.1fx the disk-order scrub's CPU a byte)", mbs(old), nsb(old), nsb(old)/nsb(scrub))
		}
	}
}

// TestDataRuns: runs partition the sorted mappings in order, each spans
// every block of its mappings and at most dataRunBlocks plus one extent,
// mappings starting at one block share a run (a run's start is a cursor
// position: every mapping before it starts below it).
func TestDataRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 200; iter++ {
		var p dataPlan
		d := format.BlockNr(100)
		for i := 0; i < 1+r.IntN(300); i++ {
			n := uint16(1 + r.IntN(format.MaxExtentBlocks))
			p.maps = append(p.maps, dataMap{disk: d, n: n, ino: uint64(r.IntN(5))})
			if r.IntN(4) == 0 { // shared by a second file
				p.maps = append(p.maps, dataMap{disk: d, n: uint16(1 + r.IntN(int(n))), ino: 9})
			}
			switch r.IntN(4) {
			case 0:
				d += format.BlockNr(n)
			case 1:
				d += format.BlockNr(n) + format.BlockNr(r.IntN(50))
			case 2: // a gap a run may not read across
				d += format.BlockNr(n) + dataGapBlocks + 1 + format.BlockNr(r.IntN(500))
			default:
				d += format.BlockNr(r.IntN(int(n))) // overlapping
			}
		}
		slices.SortFunc(p.maps, func(a, b dataMap) int { return cmp.Or(cmp.Compare(a.disk, b.disk), cmp.Compare(a.ino, b.ino)) })
		runs := p.runs(dataRunBlocks, dataGapBlocks)
		i := 0
		for j, run := range runs {
			if run.n > dataRunBlocks+format.MaxExtentBlocks {
				t.Fatalf("run %d spans %d blocks", j, run.n)
			}
			for _, m := range run.maps {
				if m != p.maps[i] {
					t.Fatalf("run %d: mapping %d out of order", j, i)
				}
				if m.disk < run.start || m.disk+format.BlockNr(m.n) > run.start+format.BlockNr(run.n) {
					t.Fatalf("run %d [%d+%d] does not cover mapping %+v", j, run.start, run.n, m)
				}
				i++
			}
			if j > 0 && runs[j-1].maps[len(runs[j-1].maps)-1].disk >= run.start {
				t.Fatalf("run %d starts at %d, not above its predecessor's last mapping", j, run.start)
			}
			for k := 1; k < len(run.maps); k++ { // no long gap inside a run
				covered := run.start
				for _, m := range run.maps[:k] {
					covered = max(covered, m.disk+format.BlockNr(m.n))
				}
				if run.maps[k].disk > covered+dataGapBlocks {
					t.Fatalf("run %d reads across a gap of %d blocks", j, run.maps[k].disk-covered)
				}
			}
		}
		if i != len(p.maps) {
			t.Fatalf("runs hold %d of %d mappings", i, len(p.maps))
		}
	}
}
