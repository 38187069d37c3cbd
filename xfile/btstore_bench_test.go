package xfile

import (
	"encoding/binary"
	"fmt"
	"iter"
	"runtime"
	"testing"
	"time"

	tidwall "github.com/tidwall/btree"

	"github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Benchmarks of the xfile B-tree store with rmap-sized records: a 25-byte
// key and an 8-byte value, 33 bytes of payload each. Each operation is a
// whole workload of benchRecords records (1M with -short), so run them with
// -benchtime=1x and read the custom metrics (records/s, heap, file size),
// not ns/op. See docs/benchmarks.md.

func benchRecords() uint64 {
	if testing.Short() {
		return 1_000_000
	}
	return 10_000_000
}

// recordBytes is the payload of one rmap record: key and value.
const recordBytes = format.KeySize + 8

// mix is the splitmix64 finalizer, a bijection on uint64: distinct inputs
// give distinct, randomly spread outputs.
func mix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// randomRmap returns record i of a stream of distinct rmap records in random
// order: a random start block (distinct for every i, since mix is a
// bijection), one owner type in eight a tree, the rest inodes with an
// offset. Records are computed, not stored, so the benchmark's own memory
// does not hide the tree's.
func randomRmap(i uint64) (format.Key, [8]byte) {
	h := mix(i)
	g := mix(h)
	k := format.Key{Obj: h, Type: format.TypeRmapInode, Off: 1 + g%1_000_000, Aux: g >> 40}
	if g&7 == 0 {
		k.Type, k.Off, k.Aux = format.TypeRmapTree, uint64(format.TreeExtent), 0
	}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], 1+g%64) // extent length, flags
	return k, v
}

// sortedRmap returns record i of a sorted stream of distinct rmap records.
func sortedRmap(i uint64) (format.Key, [8]byte) {
	k := format.Key{Obj: i * 5, Type: format.TypeRmapInode, Off: 1 + i%1_000_000, Aux: i}
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], 1+i%64)
	return k, v
}

// heapAfterGC returns the Go heap in use and allocated, after a full GC.
func heapAfterGC() (inuse, alloc uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.HeapAlloc
}

// reportHeap reports the Go heap (after GC, minus the base measured before
// the workload) in MiB and as a share of the records' payload.
func reportHeap(b *testing.B, base uint64, n uint64) {
	b.Helper()
	inuse, alloc := heapAfterGC()
	grown := int64(alloc) - int64(base)
	b.ReportMetric(float64(inuse)/(1<<20), "heapinuse-MiB")
	b.ReportMetric(float64(grown)/(1<<20), "heap-MiB")
	b.ReportMetric(100*float64(grown)/float64(n*recordBytes), "heap-%-of-records")
}

func reportStore(b *testing.B, s *BTreeStore, tr *btree.Tree, n uint64) {
	b.Helper()
	st, err := s.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(st.Blocks), "blocks")
	b.ReportMetric(float64(tr.Level+1), "levels")
	b.ReportMetric(float64(st.File.Allocated)/(1<<20), "xfile-MiB")
	b.ReportMetric(float64(st.Blocks*format.BlockSize)/float64(n*recordBytes), "nodes/records-bytes")
}

// checkTree runs the full structural check, untimed, and fails on a problem.
func checkBenchTree(b *testing.B, tr *btree.Tree, n uint64) {
	b.Helper()
	if tr.Items != n {
		b.Fatalf("tree holds %d items, want %d", tr.Items, n)
	}
	err := tr.Check(btree.CheckVisitor{Problem: func(p btree.Problem) { b.Fatalf("check: %s", p) }})
	if err != nil {
		b.Fatal(err)
	}
}

func newBenchStore(b *testing.B) *BTreeStore {
	b.Helper()
	s, err := NewBTreeStore(Options{Dir: b.TempDir(), Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkBTreeStoreInsertRmap inserts 10M rmap records in random order
// into an empty tree on the xfile store.
func BenchmarkBTreeStoreInsertRmap(b *testing.B) {
	n := benchRecords()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		_, base := heapAfterGC()
		s := newBenchStore(b)
		tr, err := s.CreateTree(format.TreeRmap)
		if err != nil {
			b.Fatal(err)
		}
		val := make([]byte, 8)
		b.StartTimer()
		start := time.Now()
		for j := uint64(0); j < n; j++ {
			k, v := randomRmap(j)
			copy(val, v[:])
			if err := tr.Insert(k, val); err != nil {
				b.Fatal(err)
			}
		}
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
		reportHeap(b, base, n)
		reportStore(b, s, tr, n)
		checkBenchTree(b, tr, n)
		s.Close()
	}
}

type rmapItem struct {
	k format.Key
	v [8]byte
}

// BenchmarkTidwallInsertRmap inserts the same records into a
// github.com/tidwall/btree BTreeG on the Go heap, for comparison.
func BenchmarkTidwallInsertRmap(b *testing.B) {
	n := benchRecords()
	less := func(a, b rmapItem) bool { return a.k.Less(b.k) }
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		_, base := heapAfterGC()
		tr := tidwall.NewBTreeGOptions(less, tidwall.Options{NoLocks: true})
		b.StartTimer()
		start := time.Now()
		for j := uint64(0); j < n; j++ {
			k, v := randomRmap(j)
			tr.Set(rmapItem{k, v})
		}
		elapsed := time.Since(start)
		b.StopTimer()
		if uint64(tr.Len()) != n {
			b.Fatalf("tree holds %d items, want %d", tr.Len(), n)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
		reportHeap(b, base, n)
		runtime.KeepAlive(tr)
	}
}

// generated yields records 0..n-1 of rec.
func generated(n uint64, rec func(uint64) (format.Key, [8]byte)) iter.Seq2[format.Key, []byte] {
	return func(yield func(format.Key, []byte) bool) {
		buf := make([]byte, 8) // one buffer: a [8]byte sliced per record would escape
		for i := uint64(0); i < n; i++ {
			k, v := rec(i)
			copy(buf, v[:])
			if !yield(k, buf) {
				return
			}
		}
	}
}

// BenchmarkBTreeStoreBulkLoadRmap bulk-loads 10M sorted rmap records into
// an empty xfile store: from a generated stream at two fill factors, and
// from another xfile tree (the repair path: a shadow tree built by random
// inserts, read back with Ascend).
func BenchmarkBTreeStoreBulkLoadRmap(b *testing.B) {
	n := benchRecords()
	load := func(b *testing.B, fill float64, recs iter.Seq2[format.Key, []byte], srcErr func() error) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			_, base := heapAfterGC()
			s := newBenchStore(b)
			b.StartTimer()
			start := time.Now()
			plan, err := btree.PlanBulkFixed(n, 8, fill)
			if err != nil {
				b.Fatal(err)
			}
			tr, err := plan.Build(s, format.TreeRmap, recs, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := srcErr(); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(plan.Blocks)/elapsed.Seconds(), "blocks/s")
			reportHeap(b, base, n)
			reportStore(b, s, tr, n)
			checkBenchTree(b, tr, n)
			s.Close()
		}
	}
	for _, fill := range []float64{1, 0.75} {
		b.Run(fmt.Sprintf("generated/fill=%.2f", fill), func(b *testing.B) {
			load(b, fill, generated(n, sortedRmap), func() error { return nil })
		})
	}
	b.Run("fromXfileTree/fill=1.00", func(b *testing.B) {
		src := newBenchStore(b)
		defer src.Close()
		st, err := src.CreateTree(format.TreeRmap)
		if err != nil {
			b.Fatal(err)
		}
		val := make([]byte, 8)
		for j := uint64(0); j < n; j++ {
			k, v := randomRmap(j)
			copy(val, v[:])
			if err := st.Insert(k, val); err != nil {
				b.Fatal(err)
			}
		}
		var ascendErr error
		recs := func(yield func(format.Key, []byte) bool) {
			ascendErr = st.Ascend(format.Key{}, func(k format.Key, v []byte) bool { return yield(k, v) })
		}
		b.ResetTimer()
		load(b, 1, recs, func() error { return ascendErr })
	})
}
