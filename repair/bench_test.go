package repair

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkRmapRebuild: online rmap rebuild of an image holding N data
// extents (SCRUBD_BENCH_EXTENTS, default 1M), with a writer running, against
// the same writer idle (before and after). Reports wall time, peak Go heap growth, xfile size,
// writer throughput during the rebuild as a share of idle, and the longest
// writer operation (pause). Use -benchtime=1x; see docs/benchmarks.md.
func BenchmarkRmapRebuild(b *testing.B) { benchRebuild(b, "rmap") }

// BenchmarkAllocRebuild is BenchmarkRmapRebuild for the alloc tree: N
// extents, N alloc records.
func BenchmarkAllocRebuild(b *testing.B) { benchRebuild(b, "alloc") }

// BenchmarkFreeRebuild is BenchmarkRmapRebuild for the free-space tree:
// 2N extents built and every other one freed again, so the free-space
// tree holds N records.
func BenchmarkFreeRebuild(b *testing.B) { benchRebuild(b, "free") }

// BenchmarkExtentRebuild is BenchmarkRmapRebuild for the file extent
// tree: N file extent items, rebuilt from the rmap's N file records while
// the writer's overwrites keep changing them.
func BenchmarkExtentRebuild(b *testing.B) { benchRebuild(b, "extent") }

// BenchmarkCsumRebuild is BenchmarkRmapRebuild for the data checksum
// tree: N records of one block each (4 bytes), every one readable and kept,
// while the writer's overwrites add and free records.
func BenchmarkCsumRebuild(b *testing.B) { benchRebuild(b, "csum") }

func benchRebuild(b *testing.B, tree string) {
	n := 1_000_000
	if s := os.Getenv("SCRUBD_BENCH_EXTENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	run := rebuilders[tree].run
	built := n
	if tree == "free" {
		built = 2 * n
	}
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		img := filepath.Join(b.TempDir(), "rebuild.img")
		size := int64(built)*2*format.BlockSize + 1<<30
		if err := engine.MkfsPath(img, size, false, engine.MkfsOptions{}); err != nil {
			b.Fatal(err)
		}
		// The engine's default commit interval, as `scrubd mount` runs it:
		// the idle measurement below spans a periodic commit too.
		f, err := fs.OpenPath(img, fs.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		e := f.Engine()
		// N one-block data extents mapped by a file extent item each, the
		// way the filesystem maps them (data blocks are not written).
		t0 := time.Now()
		const batch = 5000
		for i := 0; i < built; i += batch {
			err := e.Update(func(tx *engine.Tx) error {
				et, err := tx.Tree(format.TreeExtent)
				if err != nil {
					return err
				}
				ct, err := tx.Tree(format.TreeCsum)
				if err != nil {
					return err
				}
				for j := i; j < min(built, i+batch); j++ {
					ino, fb := uint64(1_000_000+j/1000), uint64(j%1000)
					start, err := tx.AllocExtent(1, format.Owner{Inode: ino, Offset: fb})
					if err != nil {
						return err
					}
					if err := et.Insert(format.FileExtentKey(ino, fb), format.FileExtent{Start: start, Len: 1, Count: 1}.Encode()); err != nil {
						return err
					}
					if err := ct.Put(format.CsumKey(start), make([]byte, 4)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			if i%(20*batch) == 0 {
				if err := e.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := e.Sync(); err != nil {
			b.Fatal(err)
		}
		if built > n {
			// Every other extent freed: the free space in N pieces.
			if err := freeEveryOther(e, built); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("built %d extents in %v", built, time.Since(t0))
		// The writer: 4 KiB writes with an fsync every 16, timed one by one.
		a, _ := f.Create(fs.RootIno, "writer", fs.NewInode{Mode: 0o644})
		var worstAt time.Time  // when the longest writer operation started
		var opEnds []time.Time // when each writer operation ended
		type opTimes struct {
			write, fsync time.Duration
			synced       bool
		}
		var opSplit []opTimes // each operation's write and fsync time
		writer := func(stop <-chan struct{}, ops *atomic.Int64, lat *[]time.Duration, wg *sync.WaitGroup) {
			defer wg.Done()
			block := make([]byte, 4096)
			var worst time.Duration
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				t := time.Now()
				f.Write(a.Ino, block, int64(i%4096)*4096)
				wrote := time.Since(t)
				if i%16 == 15 {
					f.Fsync(a.Ino)
				}
				d := time.Since(t)
				opSplit = append(opSplit, opTimes{wrote, d - wrote, i%16 == 15})
				if d > worst {
					worst, worstAt = d, t
				}
				*lat = append(*lat, d)
				opEnds = append(opEnds, time.Now())
				ops.Add(1)
			}
		}
		measure := func(d time.Duration, during func()) (float64, time.Duration) {
			var ops atomic.Int64
			var lat []time.Duration
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			start := time.Now()
			go writer(stop, &ops, &lat, &wg)
			if during != nil {
				during()
			} else {
				time.Sleep(d)
			}
			close(stop)
			wg.Wait()
			el := time.Since(start)
			sort.Slice(lat, func(i, j int) bool { return lat[i] > lat[j] })
			var worst time.Duration
			if len(lat) > 0 {
				worst = lat[0]
			}
			return float64(ops.Load()) / el.Seconds(), worst
		}
		// Warm up first: the writer's first pass allocates its file, and
		// the build's garbage is still being collected.
		measure(3*time.Second, nil)
		opEnds, opSplit = opEnds[:0], opSplit[:0]
		idleRate, idleWorst := measure(engine.DefaultCommitInterval+time.Second, nil)
		// Time per write and per fsync, idle: what the phases compare with.
		split := func(from, to time.Time) (w, fs, longest time.Duration) {
			nw, nf := 0, 0
			for i, t := range opEnds {
				if t.Before(from) || !t.Before(to) {
					continue
				}
				longest = max(longest, opSplit[i].write+opSplit[i].fsync)
				w += opSplit[i].write
				nw++
				if opSplit[i].synced {
					fs += opSplit[i].fsync
					nf++
				}
			}
			return w / time.Duration(max(nw, 1)), fs / time.Duration(max(nf, 1)), longest
		}
		idleW, idleF, _ := split(time.Time{}, time.Now())
		opEnds, opSplit = opEnds[:0], opSplit[:0]
		growth := heapGrowth()
		var res *RebuildResult
		// SCRUBD_BENCH_YIELD sets the scan's yield (RebuildOptions.Yield).
		var opts RebuildOptions
		if s := os.Getenv("SCRUBD_BENCH_YIELD"); s != "" {
			opts.Yield, _ = strconv.ParseFloat(s, 64)
		}
		b.ResetTimer()
		rebuildStart := time.Now()
		rate, worst := measure(0, func() {
			var err error
			res, err = run(context.Background(), e, opts)
			if err != nil {
				b.Fatal(err)
			}
		})
		b.StopTimer()
		grown, live := growth()
		rebuildWorstAt := worstAt
		// The idle rate again, after: this machine's speed drifts by a
		// third over minutes, so the baseline is the mean of before and
		// after.
		idleBefore := idleRate
		idleAfter, idleWorstAfter := measure(engine.DefaultCommitInterval+time.Second, nil)
		idleRate = (idleBefore + idleAfter) / 2
		idleWorst = max(idleWorst, idleWorstAfter)
		worstAt = rebuildWorstAt
		worstPhase := "start" // before the first phase: the commit that opens the rebuild
		for _, p := range res.Phases {
			if at := worstAt.Sub(rebuildStart); at >= p.Start {
				worstPhase = p.Name
			}
		}
		// The writer's rate per phase, as a share of idle.
		logPhases := func() {
			b.Logf("rebuild %+v; writer %.0f ops/s during vs %.0f idle (%.0f before, %.0f after); longest writer op in phase %s", *res, rate, idleRate, idleBefore, idleAfter, worstPhase)
			for _, p := range res.Phases {
				from, to := rebuildStart.Add(p.Start), rebuildStart.Add(p.Start+p.Took)
				n := 0
				for _, t := range opEnds {
					if !t.Before(from) && t.Before(to) {
						n++
					}
				}
				if p.Took > 0 {
					w, fs, longest := split(from, to)
					b.Logf("phase %-9s %8.3f s  writer %3.0f%% of idle  write %v fsync %v (idle %v, %v)  longest op %v, hold %v", p.Name, p.Took.Seconds(), 100*float64(n)/p.Took.Seconds()/idleRate, w.Round(time.Microsecond), fs.Round(time.Microsecond), idleW.Round(time.Microsecond), idleF.Round(time.Microsecond), longest.Round(100*time.Microsecond), p.LongestHold.Round(100*time.Microsecond))
				}
			}
		}
		if os.Getenv("SCRUBD_BENCH_QUICK") != "" {
			// For iterating: no check, no second rebuild.
			logPhases()
			b.Logf("writer %.0f%% of idle, longest op %v (idle %v), longest writer-lock hold %v", 100*rate/idleRate, worst, idleWorst, res.LongestHold)
			return
		}
		// Untimed: the rebuilt image must check clean.
		if err := e.Sync(); err != nil {
			b.Fatal(err)
		}
		if _, found, err := checkEngine(context.Background(), e); err != nil || len(found) > 0 {
			b.Fatalf("after the rebuild: %v, %d findings, first %v", err, len(found), found)
		}
		b.ReportMetric(res.Duration.Seconds(), "rebuild-s")
		b.ReportMetric(float64(res.Records), "records")
		b.ReportMetric(float64(grown)/(1<<20), "heap-growth-MiB")
		b.ReportMetric(float64(live)/(1<<20), "live-heap-growth-MiB")
		b.ReportMetric(float64(res.XfileBytes)/(1<<20), "xfile-MiB")
		b.ReportMetric(float64(res.ExclusivePause.Microseconds())/1000, "exclusive-ms")
		b.ReportMetric(float64(worst.Microseconds())/1000, "longest-writer-op-ms")
		b.ReportMetric(float64(res.LongestHold.Microseconds())/1000, "longest-hold-ms")
		b.ReportMetric(float64(idleWorst.Microseconds())/1000, "idle-longest-op-ms")
		b.ReportMetric(100*rate/idleRate, "writer-%-of-idle")
		// The rebuild's own time: a second rebuild with no writer running.
		alone, err := run(context.Background(), e, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(alone.Duration.Seconds(), "alone-rebuild-s")
		// The rebuild's own heap: a third rebuild with no writer running
		// (the writer's garbage would otherwise count), with the GC run at
		// GOGC=10 so that the heap in use stays close to what is live
		// (at the default the peak is mostly garbage awaiting a collection
		// that the already-live heap postpones).
		old := debug.SetGCPercent(10)
		growth = heapGrowth()
		if _, err := run(context.Background(), e, opts); err != nil {
			b.Fatal(err)
		}
		grown, live = growth()
		debug.SetGCPercent(old)
		b.ReportMetric(float64(grown)/(1<<20), "alone-heap-growth-gogc10-MiB")
		b.ReportMetric(float64(live)/(1<<20), "alone-live-heap-growth-MiB")
		logPhases()
	})
}

// freeEveryOther frees every other extent the benchmark built (built of
// them, owned by inode 1000000+j/1000 at block j%1000).
func freeEveryOther(e *engine.Engine, built int) error {
	const batch = 5000
	for i := 0; i < built; i += 2 * batch {
		err := e.Update(func(tx *engine.Tx) error {
			et, err := tx.Tree(format.TreeExtent)
			if err != nil {
				return err
			}
			for j := i; j < min(built, i+2*batch); j += 2 {
				ino, fb := uint64(1_000_000+j/1000), uint64(j%1000)
				k := format.FileExtentKey(ino, fb)
				v, ok, err := et.Get(k, nil)
				if err != nil || !ok {
					return fmt.Errorf("extent %d: %v %v", j, ok, err)
				}
				fe, err := format.DecodeFileExtent(v)
				if err != nil {
					return err
				}
				if _, err := et.Delete(k); err != nil {
					return err
				}
				// (The extent's checksums go with its last reference.)
				if err := tx.DropRef(fe.Start, fe.Len, format.Owner{Inode: ino, Offset: fb}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if i%(20*batch) == 0 {
			if err := e.Sync(); err != nil {
				return err
			}
		}
	}
	return e.Sync()
}

// BenchmarkScrub: a scrub of the metadata only, and with --data, of an
// image holding 512 MiB of file data, against reading the image file
// sequentially (the raw limit), in the same run. Use -benchtime=1x.
func BenchmarkScrub(b *testing.B) {
	img := filepath.Join(b.TempDir(), "scrub.img")
	if err := engine.MkfsPath(img, 1<<30, false, engine.MkfsOptions{}); err != nil {
		b.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	const files, perFile = 64, 8 << 20
	for i := 0; i < files; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%02d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < perFile; off += len(buf) {
			if _, err := f.Write(a.Ino, buf, int64(off)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	st, _ := os.Stat(img)
	b.Run("raw-read", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			fh, _ := os.Open(img)
			t := time.Now()
			n := int64(0)
			for {
				k, err := fh.Read(buf)
				n += int64(k)
				if err != nil {
					break
				}
			}
			fh.Close()
			b.ReportMetric(float64(n)/time.Since(t).Seconds()/(1<<20), "MiB/s")
		}
		_ = st
	})
	for _, data := range []bool{false, true} {
		b.Run(fmt.Sprintf("data=%v", data), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				t := time.Now()
				rep, err := Scrub(context.Background(), f, "bench", ScrubOptions{Data: data})
				if err != nil || rep.Found != 0 {
					b.Fatalf("scrub: %v %+v", err, rep)
				}
				el := time.Since(t).Seconds()
				var blocks uint64
				for _, s := range rep.Structures {
					blocks += s.Blocks
				}
				b.ReportMetric(float64(blocks)*format.BlockSize/el/(1<<20), "metadata-MiB/s")
				if data {
					b.ReportMetric(float64(files*perFile)/el/(1<<20), "data-MiB/s")
				}
				b.ReportMetric(el, "s")
			}
		})
	}
}

// BenchmarkScrubForegroundFsync: a writer doing 4 KiB writes, each
// followed by an fsync, 1 ms apart, on the same filesystem as a data scrub
// of SCRUBD_BENCH_SCRUB_MB MiB (default 128): its fsync latency (p50, p99)
// while idle, during a scrub in adaptive mode (--rate auto) and during an
// unlimited one, and how long each scrub took. Target: p99 during the
// adaptive scrub at most 1.5x idle, the scrub finishing. Use
// -benchtime=1x; see docs/benchmarks.md.
func BenchmarkScrubForegroundFsync(b *testing.B) {
	mb := 128
	if v := os.Getenv("SCRUBD_BENCH_SCRUB_MB"); v != "" {
		mb, _ = strconv.Atoi(v)
	}
	img := filepath.Join(b.TempDir(), "fg.img")
	if err := engine.MkfsPath(img, int64(mb)<<20+512<<20, false, engine.MkfsOptions{}); err != nil {
		b.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < (mb+15)/16; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("d%03d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < 16<<20; off += len(buf) {
			if _, err := f.Write(a.Ino, buf, int64(off)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	w, _ := f.Create(fs.RootIno, "writer", fs.NewInode{Mode: 0o644})
	block := make([]byte, 4096)
	// measure runs the writer until during returns (or for d) and
	// returns its fsync latencies, sorted.
	measure := func(d time.Duration, during func()) []time.Duration {
		var lat []time.Duration
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f.Write(w.Ino, block, int64(i%2048)*4096)
				t := time.Now()
				f.Fsync(w.Ino)
				lat = append(lat, time.Since(t))
				time.Sleep(time.Millisecond)
			}
		}()
		if during != nil {
			during()
		} else {
			time.Sleep(d)
		}
		close(stop)
		<-done
		slices.Sort(lat)
		return lat
	}
	pct := func(lat []time.Duration, p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	measure(2*time.Second, nil) // warm up
	idle := measure(3*time.Second, nil)
	scrub := func(r Rate) func() {
		return func() {
			ctl := NewScrubControl(nil)
			ctl.SetRate(r)
			t := time.Now()
			rep, err := Scrub(context.Background(), f, "bench", ScrubOptions{Data: true, Control: ctl})
			if err != nil || rep.Found != 0 {
				b.Fatalf("scrub: %v %+v", err, rep)
			}
			b.Logf("scrub %q: %.2f s, %.1f MiB/s, throttled %.2f s", r.String(), time.Since(t).Seconds(),
				float64(rep.BytesVerified)/time.Since(t).Seconds()/(1<<20), ctl.Progress().ThrottledS)
			b.ReportMetric(time.Since(t).Seconds(), map[bool]string{true: "auto-scrub-s", false: "unlimited-scrub-s"}[r.Auto])
		}
	}
	b.ResetTimer()
	auto := measure(0, scrub(Rate{Auto: true, Activity: f.Activity}))
	unlimited := measure(0, scrub(Rate{}))
	idle2 := measure(3*time.Second, nil)
	idle = append(idle, idle2...)
	slices.Sort(idle)
	b.StopTimer()
	for _, x := range []struct {
		name string
		lat  []time.Duration
	}{{"idle", idle}, {"auto", auto}, {"unlimited", unlimited}} {
		b.Logf("%-9s fsyncs %5d  p50 %v  p99 %v", x.name, len(x.lat), pct(x.lat, 0.5), pct(x.lat, 0.99))
	}
	b.ReportMetric(float64(pct(idle, 0.99).Microseconds())/1000, "idle-p99-ms")
	b.ReportMetric(float64(pct(auto, 0.99).Microseconds())/1000, "auto-p99-ms")
	b.ReportMetric(float64(pct(unlimited, 0.99).Microseconds())/1000, "unlimited-p99-ms")
	b.ReportMetric(float64(pct(auto, 0.99))/float64(pct(idle, 0.99)), "auto-p99-x-idle")
	b.ReportMetric(float64(pct(unlimited, 0.99))/float64(pct(idle, 0.99)), "unlimited-p99-x-idle")
}

// heapGrowth starts sampling the Go heap every 2 ms from a level taken after
// a GC and returns a function that stops and returns the peak growth in
// bytes of the heap in use (HeapInuse: live objects and garbage not yet
// collected; bounded by the GC's pacing, so it scales with the heap that
// was already live) and of the live heap (/gc/heap/live:bytes, what the
// last GC marked: the memory the work actually holds). It reads
// runtime/metrics, which does not stop the world (runtime.ReadMemStats
// would, every 2 ms, and slow the writer being measured).
func heapGrowth() func() (inuse, live uint64) {
	runtime.GC()
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	read := func() (inuse, live uint64) {
		metrics.Read(samples)
		return samples[1].Value.Uint64() + samples[2].Value.Uint64(), samples[0].Value.Uint64()
	}
	base, liveBase := read()
	var peak, livePeak atomic.Uint64
	peak.Store(base)
	livePeak.Store(liveBase)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			inuse, live := read()
			if inuse > peak.Load() {
				peak.Store(inuse)
			}
			if live > livePeak.Load() {
				livePeak.Store(live)
			}
		}
	}()
	return func() (uint64, uint64) {
		close(stop)
		wg.Wait()
		return peak.Load() - base, livePeak.Load() - liveBase
	}
}
