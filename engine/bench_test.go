package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Benchmarks of the engine on a real image file: a sparse file in the
// benchmark's temporary directory (set TMPDIR to choose the filesystem),
// written with pwrite and made durable with fdatasync. Every benchmark runs a
// fixed workload per operation and reports per-key or per-commit metrics, so
// run them with -benchtime=1x; ns/op is the time of the whole workload. Each
// benchmark ends with the full self-check of the image it built, untimed.
// See docs/benchmarks.md for the commands and results.

const (
	benchImageSize   = 2 << 30 // bytes, sparse
	benchKeys        = 1_000_000
	benchBatch       = 1000    // keys per Update
	benchCommitEvery = 100_000 // keys per commit
	benchBaseItems   = 100_000 // items of the tree the commit and delayed-ref benchmarks modify
)

// countingDev counts the engine's device I/O.
type countingDev struct {
	disk.Device
	reads, writes, written, flushes atomic.Int64
}

func (d *countingDev) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	return d.Device.ReadAt(p, off)
}

func (d *countingDev) WriteAt(p []byte, off int64) (int, error) {
	d.writes.Add(1)
	d.written.Add(int64(len(p)))
	return d.Device.WriteAt(p, off)
}

func (d *countingDev) Flush() error {
	d.flushes.Add(1)
	return d.Device.Flush()
}

// newBenchImage makes a filesystem on a new sparse image file of size bytes
// and opens it with opts; it returns the engine, its counting device and the
// image path.
func newBenchImage(b *testing.B, size int64, opts Options) (*Engine, *countingDev, string) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.img")
	f, err := disk.Create(path, size, false)
	if err != nil {
		b.Fatal(err)
	}
	if err := Mkfs(f, MkfsOptions{Label: "bench"}); err != nil {
		f.Close()
		b.Fatal(err)
	}
	e, dev := openBench(b, f, opts)
	return e, dev, path
}

// openBench opens the engine on dev, periodic commits off unless opts sets
// them, and closes it when the benchmark ends.
func openBench(b *testing.B, dev disk.Device, opts Options) (*Engine, *countingDev) {
	b.Helper()
	if opts.CommitInterval == 0 {
		opts.CommitInterval = -1
	}
	cd := &countingDev{Device: dev}
	e, err := Open(cd, opts)
	if err != nil {
		dev.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() }) // ErrClosed if the benchmark closed it
	return e, cd
}

// checkAndClose commits, runs the full self-check and closes the engine.
func checkAndClose(b *testing.B, e *Engine) {
	b.Helper()
	if err := e.Sync(); err != nil {
		b.Fatal(err)
	}
	mustCheck(b, e)
	if err := e.Close(); err != nil {
		b.Fatal(err)
	}
}

// randomKeys returns n distinct inode-tree keys with random Obj, in random
// order.
func randomKeys(n int, seed uint64) []format.Key {
	r := rand.New(rand.NewPCG(seed, seed))
	seen := make(map[uint64]bool, n)
	keys := make([]format.Key, 0, n)
	for len(keys) < n {
		o := r.Uint64()
		if seen[o] {
			continue
		}
		seen[o] = true
		keys = append(keys, format.Key{Obj: o, Type: 1})
	}
	return keys
}

func shuffled(keys []format.Key, seed uint64) []format.Key {
	out := slices.Clone(keys)
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// benchValue returns the 16-byte value stored under k.
func benchValue(k format.Key, salt uint64) []byte {
	v := make([]byte, 16)
	binary.LittleEndian.PutUint64(v, k.Obj)
	binary.LittleEndian.PutUint64(v[8:], salt)
	return v
}

// insertKeys inserts keys into the inode tree, benchBatch per Update, and
// commits every benchCommitEvery keys and at the end. It returns the
// duration of each commit.
func insertKeys(b *testing.B, e *Engine, keys []format.Key) []time.Duration {
	b.Helper()
	var syncs []time.Duration
	for off := 0; off < len(keys); off += benchBatch {
		batch := keys[off:min(off+benchBatch, len(keys))]
		err := e.Update(func(tx *Tx) error {
			tr, err := tx.Tree(format.TreeInode)
			if err != nil {
				return err
			}
			for _, k := range batch {
				if err := tr.Insert(k, benchValue(k, 0)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if done := off + len(batch); done%benchCommitEvery == 0 || done == len(keys) {
			start := time.Now()
			if err := e.Sync(); err != nil {
				b.Fatal(err)
			}
			syncs = append(syncs, time.Since(start))
		}
	}
	return syncs
}

// lookupAll looks up every key in the inode tree of s and checks its value.
func lookupAll(b *testing.B, s *Snapshot, keys []format.Key) {
	b.Helper()
	tr, ok := s.Tree(format.TreeInode)
	if !ok {
		b.Fatal("no inode tree")
	}
	var buf []byte
	for _, k := range keys {
		v, found, err := tr.Get(k, buf[:0])
		if err != nil || !found || len(v) != 16 || binary.LittleEndian.Uint64(v) != k.Obj {
			b.Fatalf("get %s: found %v, value %x, err %v", k, found, v, err)
		}
		buf = v
	}
}

func reportPerKey(b *testing.B, elapsed time.Duration, keys int) {
	b.Helper()
	total := float64(keys) * float64(b.N)
	b.ReportMetric(float64(elapsed.Nanoseconds())/total, "ns/key")
	b.ReportMetric(total/elapsed.Seconds(), "keys/s")
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func meanDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// percentile returns the p-th percentile (0 < p <= 100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// BenchmarkEngineInsert inserts benchKeys random keys with 16-byte values
// into the inode tree of a new image, benchBatch keys per Update and a
// commit every benchCommitEvery keys; commit time is included.
func BenchmarkEngineInsert(b *testing.B) {
	keys := randomKeys(benchKeys, 1)
	var elapsed time.Duration
	var syncs []time.Duration
	var written int64
	var used uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e, dev, _ := newBenchImage(b, benchImageSize, Options{})
		b.StartTimer()
		start := time.Now()
		syncs = append(syncs, insertKeys(b, e, keys)...)
		elapsed += time.Since(start)
		b.StopTimer()
		written += dev.written.Load()
		used = e.TotalBlocks() - e.Stats().FreeBlocks
		checkAndClose(b, e)
		b.StartTimer()
	}
	b.StopTimer()
	reportPerKey(b, elapsed, len(keys))
	b.ReportMetric(ms(meanDuration(syncs)), "ms/commit")
	b.ReportMetric(float64(written)/float64(b.N)/(1<<20), "MiB-written/op")
	b.ReportMetric(float64(used*format.BlockSize)/(1<<20), "MiB-used")
}

// BenchmarkEngineLookup builds a benchKeys-key image as BenchmarkEngineInsert
// does, then looks every key up once per operation, in random order, through
// a pinned snapshot of a read-only mount, after an untimed warm-up. With the
// default 128 MiB cache the whole tree fits in it; with a 4 MiB cache most
// leaf reads go to the device (pread, served by the OS page cache).
func BenchmarkEngineLookup(b *testing.B) {
	keys := randomKeys(benchKeys, 1)
	e, _, path := newBenchImage(b, benchImageSize, Options{})
	insertKeys(b, e, keys)
	checkAndClose(b, e)
	order := shuffled(keys, 2)
	for _, c := range []struct {
		name   string
		blocks int
	}{{"cache=128MiB", 0}, {"cache=4MiB", 1024}} {
		b.Run(c.name, func(b *testing.B) {
			f, err := disk.Open(path, true)
			if err != nil {
				b.Fatal(err)
			}
			e, dev := openBench(b, f, Options{ReadOnly: true, CacheBlocks: c.blocks})
			s := e.Pin()
			defer s.Release()
			// Warm the cache: 200,000 random keys touch nearly every leaf.
			lookupAll(b, s, order[:len(order)/5])
			reads := dev.reads.Load()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				lookupAll(b, s, order)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportPerKey(b, elapsed, len(order))
			b.ReportMetric(float64(dev.reads.Load()-reads)/float64(len(order)*b.N), "reads/key")
		})
	}
}

// modifyKeys gives n distinct random keys of keys a new value of the same
// length, benchBatch per Update.
func modifyKeys(b *testing.B, e *Engine, keys []format.Key, n int, r *rand.Rand, salt uint64) {
	b.Helper()
	pick := make([]format.Key, n)
	if n == 1 {
		pick[0] = keys[r.IntN(len(keys))]
	} else {
		for i, j := range r.Perm(len(keys))[:n] {
			pick[i] = keys[j]
		}
	}
	for off := 0; off < n; off += benchBatch {
		batch := pick[off:min(off+benchBatch, n)]
		err := e.Update(func(tx *Tx) error {
			tr, err := tx.Tree(format.TreeInode)
			if err != nil {
				return err
			}
			for _, k := range batch {
				if err := tr.Put(k, benchValue(k, salt)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCommit measures the latency of Sync after a transaction that
// changed 1 item (commits=200 per operation) or 50,000 distinct items
// (commits=10 per operation) of a benchBaseItems-item inode tree.
func BenchmarkCommit(b *testing.B) {
	for _, c := range []struct {
		items, commits int
	}{{1, 200}, {50_000, 10}} {
		b.Run(fmt.Sprintf("items=%d", c.items), func(b *testing.B) {
			e, dev, _ := newBenchImage(b, benchImageSize, Options{})
			keys := randomKeys(benchBaseItems, 3)
			insertKeys(b, e, keys)
			r := rand.New(rand.NewPCG(4, 4))
			var syncs []time.Duration
			var updating time.Duration
			var dirty int
			written, flushes := dev.written.Load(), dev.flushes.Load()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < c.commits; j++ {
					t0 := time.Now()
					modifyKeys(b, e, keys, c.items, r, uint64(i*c.commits+j+1))
					t1 := time.Now()
					dirty += e.Stats().DirtyBlocks
					if err := e.Sync(); err != nil {
						b.Fatal(err)
					}
					syncs = append(syncs, time.Since(t1))
					updating += t1.Sub(t0)
				}
			}
			b.StopTimer()
			n := float64(len(syncs))
			b.ReportMetric(ms(meanDuration(syncs)), "ms/commit")
			b.ReportMetric(ms(percentile(syncs, 50)), "p50-ms")
			b.ReportMetric(ms(percentile(syncs, 100)), "max-ms")
			b.ReportMetric(ms(updating)/n, "update-ms/commit")
			b.ReportMetric(float64(dirty)/n, "dirty-blocks/commit")
			b.ReportMetric(float64(dev.written.Load()-written)/n/1024, "KiB-written/commit")
			b.ReportMetric(float64(dev.flushes.Load()-flushes)/n, "flushes/commit")
			checkAndClose(b, e)
		})
	}
}

// cowWorkload is a copy-on-write-heavy stream of small updates. Each changes
// cowKeysPerUpdate random items of a benchBaseItems-item inode tree. In the
// "cow" mix, one update in four also allocates a data extent of 1 to 8
// blocks and one in four drops a random live extent, allocated in this
// transaction or a committed one. In the "churn" mix every update allocates
// an extent and drops one allocated earlier in the same transaction, if any:
// data that dies before it is committed (temporary files, rewritten ranges).
type cowWorkload struct {
	r       *rand.Rand
	keys    []format.Key
	churn   bool
	live    []benchExtent // "cow": every live extent; "churn": this transaction's
	nextOff uint64
}

type benchExtent struct {
	start format.BlockNr
	n     uint64
	owner format.Owner
}

const cowKeysPerUpdate = 4

func (w *cowWorkload) step(tx *Tx) error {
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	for range cowKeysPerUpdate {
		k := w.keys[w.r.IntN(len(w.keys))]
		if err := tr.Put(k, benchValue(k, w.r.Uint64())); err != nil {
			return err
		}
	}
	op := w.r.IntN(4)
	if w.churn && len(w.live) > 0 {
		if err := w.drop(tx); err != nil {
			return err
		}
	}
	if w.churn || op == 0 {
		n := 1 + w.r.Uint64N(8)
		o := format.Owner{Inode: 1 << 20, Offset: w.nextOff}
		w.nextOff++
		start, err := tx.AllocExtent(n, o)
		if err != nil {
			return err
		}
		w.live = append(w.live, benchExtent{start, n, o})
	}
	if !w.churn && op == 1 && len(w.live) > 0 {
		return w.drop(tx)
	}
	return nil
}

func (w *cowWorkload) drop(tx *Tx) error {
	i := w.r.IntN(len(w.live))
	x := w.live[i]
	w.live[i] = w.live[len(w.live)-1]
	w.live = w.live[:len(w.live)-1]
	tx.DropRef(x.start, x.n, x.owner)
	return nil
}

// committed tells the workload a commit happened: in the "churn" mix the
// extents of the transaction stay allocated for good.
func (w *cowWorkload) committed() {
	if w.churn {
		w.live = w.live[:0]
	}
}

// BenchmarkDelayedRefs runs cowWorkload with the delayed-ref queue (the
// default) and with NoDelayedRefs, which applies the queue at the end of
// every Update, committing every "updates" Updates (commits=20 per
// operation). It reports the modifications of the alloc, rmap and
// free-space trees per commit (RefStats.TreeMods), the entries applied and
// merged per commit, the time in Sync and the time in the Updates of one
// commit interval. Both modes start from the same image content and run the
// same random stream.
func BenchmarkDelayedRefs(b *testing.B) {
	const commits = 20
	type mix struct {
		name  string
		churn bool
		every int
	}
	mixes := []mix{{"cow", false, 10}, {"cow", false, 100}, {"cow", false, 1000}, {"churn", true, 100}}
	for _, m := range mixes {
		for _, mode := range []struct {
			name    string
			noDelay bool
		}{{"delayed", false}, {"immediate", true}} {
			b.Run(fmt.Sprintf("%s/updates=%d/%s", m.name, m.every, mode.name), func(b *testing.B) {
				e, dev, _ := newBenchImage(b, benchImageSize/2, Options{NoDelayedRefs: mode.noDelay})
				keys := randomKeys(benchBaseItems, 5)
				insertKeys(b, e, keys)
				w := &cowWorkload{r: rand.New(rand.NewPCG(6, 6)), keys: keys, churn: m.churn}
				var syncs []time.Duration
				var updating time.Duration
				before := e.Stats().Refs
				written := dev.written.Load()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j := 0; j < commits; j++ {
						t0 := time.Now()
						for range m.every {
							if err := e.Update(w.step); err != nil {
								b.Fatal(err)
							}
						}
						t1 := time.Now()
						if err := e.Sync(); err != nil {
							b.Fatal(err)
						}
						syncs = append(syncs, time.Since(t1))
						updating += t1.Sub(t0)
						w.committed()
					}
				}
				b.StopTimer()
				after := e.Stats().Refs
				n := float64(len(syncs))
				b.ReportMetric(float64(after.TreeMods-before.TreeMods)/n, "treemods/commit")
				b.ReportMetric(float64(after.Applied-before.Applied)/n, "applied/commit")
				b.ReportMetric(float64(after.Merged-before.Merged)/n, "merged/commit")
				b.ReportMetric(ms(meanDuration(syncs)), "ms/commit")
				b.ReportMetric(ms(updating)/n, "update-ms/commit")
				b.ReportMetric(float64(dev.written.Load()-written)/n/1024, "KiB-written/commit")
				checkAndClose(b, e)
			})
		}
	}
}
