package btree

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// Benchmarks of the B-tree alone, on the in-place MemStore (no copy-on-write,
// no device). Each operation is a fixed workload of benchKeys keys, so run
// them with -benchtime=1x; the per-key figures are the ns/key and keys/s
// metrics, not ns/op. See docs/benchmarks.md.

const benchKeys = 1_000_000 // keys per operation

// benchKeySet returns n distinct keys with random Obj, in random order.
func benchKeySet(n int, seed uint64) []format.Key {
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

// benchValue is a 16-byte value.
var benchValue = []byte("0123456789abcdef")

// reportPerKey reports the time per key and the key rate of one b.N loop
// that processed keys keys per iteration.
func reportPerKey(b *testing.B, elapsed time.Duration, keys int) {
	b.Helper()
	total := float64(keys) * float64(b.N)
	b.ReportMetric(float64(elapsed.Nanoseconds())/total, "ns/key")
	b.ReportMetric(total/elapsed.Seconds(), "keys/s")
}

func buildMemTree(b *testing.B, keys []format.Key) (*Tree, *MemStore) {
	b.Helper()
	s := NewMemStore(false)
	tr, err := Create(s, format.TreeInode)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range keys {
		if err := tr.Insert(k, benchValue); err != nil {
			b.Fatal(err)
		}
	}
	return tr, s
}

// BenchmarkMemStoreInsert inserts benchKeys random keys into an empty tree.
func BenchmarkMemStoreInsert(b *testing.B) {
	keys := benchKeySet(benchKeys, 1)
	b.ReportAllocs()
	var elapsed time.Duration
	var tr *Tree
	var s *MemStore
	for i := 0; i < b.N; i++ {
		start := time.Now()
		tr, s = buildMemTree(b, keys)
		elapsed += time.Since(start)
	}
	b.StopTimer()
	if tr.Items != benchKeys {
		b.Fatalf("tree holds %d items, want %d", tr.Items, benchKeys)
	}
	reportPerKey(b, elapsed, benchKeys)
	b.ReportMetric(float64(s.Len()), "nodes")
	b.ReportMetric(float64(tr.Level+1), "levels")
}

// BenchmarkMemStoreLookup looks up every key of a benchKeys-key tree once,
// in an order unrelated to the insertion order.
func BenchmarkMemStoreLookup(b *testing.B) {
	keys := benchKeySet(benchKeys, 1)
	tr, _ := buildMemTree(b, keys)
	order := make([]format.Key, len(keys))
	copy(order, keys)
	rand.New(rand.NewPCG(2, 2)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var buf []byte
	for i := 0; i < b.N; i++ {
		for _, k := range order {
			v, ok, err := tr.Get(k, buf[:0])
			if err != nil || !ok || len(v) != len(benchValue) {
				b.Fatalf("get %s: found %v, %d bytes, err %v", k, ok, len(v), err)
			}
			buf = v
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportPerKey(b, elapsed, benchKeys)
}
