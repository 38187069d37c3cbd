package xfile

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// Sort test records are sortRecSize bytes: a little-endian uint64 key, then
// a uint64 id naming the record's original index (to check the output is a
// permutation of the input), then padding.
const sortRecSize = 32

func key(rec []byte) uint64 { return binary.LittleEndian.Uint64(rec) }
func id(rec []byte) uint64  { return binary.LittleEndian.Uint64(rec[8:]) }
func keyLess(a, b []byte) bool {
	return key(a) < key(b)
}

// Adversarial input shapes for quicksort, by key at index i of n.
var sortInputs = map[string]func(i, n int, rng *rand.Rand) uint64{
	"sorted":     func(i, n int, _ *rand.Rand) uint64 { return uint64(i) },
	"reversed":   func(i, n int, _ *rand.Rand) uint64 { return uint64(n - i) },
	"all-equal":  func(i, n int, _ *rand.Rand) uint64 { return 42 },
	"organ-pipe": func(i, n int, _ *rand.Rand) uint64 { return uint64(min(i, n-1-i)) },
	"few-keys":   func(i, n int, rng *rand.Rand) uint64 { return rng.Uint64N(4) },
	"sawtooth":   func(i, n int, _ *rand.Rand) uint64 { return uint64(i % 17) },
	"random":     func(i, n int, rng *rand.Rand) uint64 { return rng.Uint64() },
	"two-values": func(i, n int, _ *rand.Rand) uint64 { return uint64(i & 1) },
	"sorted-tail": func(i, n int, rng *rand.Rand) uint64 { // sorted, then 8 random
		if i < n-8 {
			return uint64(i)
		}
		return rng.Uint64N(uint64(n) + 1)
	},
	"push-front": func(i, n int, _ *rand.Rand) uint64 { return uint64((i + 1) % n) },
	"max-min": func(i, n int, _ *rand.Rand) uint64 { // n, 0, n-1, 1, ...
		if i%2 == 0 {
			return uint64(n - i/2)
		}
		return uint64(i / 2)
	},
}

func fillArray(t testing.TB, a *Array, n int, gen func(i, n int, rng *rand.Rand) uint64, rng *rand.Rand) {
	t.Helper()
	if err := a.Truncate(0); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, sortRecSize)
	for i := range n {
		binary.LittleEndian.PutUint64(rec, gen(i, n, rng))
		binary.LittleEndian.PutUint64(rec[8:], uint64(i))
		binary.LittleEndian.PutUint64(rec[16:], ^uint64(i))
		if _, err := a.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
}

// checkSorted verifies that a is sorted by key and is a permutation of the
// input that gen produced, record for record.
func checkSorted(t *testing.T, a *Array, n int, keys []uint64) {
	t.Helper()
	if a.Len() != uint64(n) {
		t.Fatalf("Len %d after Sort, want %d", a.Len(), n)
	}
	seen := make([]bool, n)
	var prev uint64
	err := a.Iterate(func(i uint64, rec []byte) bool {
		k, x := key(rec), id(rec)
		if x >= uint64(n) || seen[x] || keys[x] != k || binary.LittleEndian.Uint64(rec[16:]) != ^x {
			t.Fatalf("record %d (key %d, id %d) is not an input record or is duplicated", i, k, x)
		}
		seen[x] = true
		if i > 0 && k < prev {
			t.Fatalf("records %d and %d out of order: %d > %d", i-1, i, prev, k)
		}
		prev = k
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSortAdversarial(t *testing.T) {
	a := newArray(t, sortRecSize)
	sizes := []int{0, 1, 2, 3, 5, 12, 13, 41, 100, 1000, 10007}
	if !testing.Short() && !raceEnabled {
		sizes = append(sizes, 200_003)
	}
	for name, gen := range sortInputs {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("%s/%d", name, n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), 99))
				fillArray(t, a, n, gen, rng)
				keys := make([]uint64, n)
				rec := make([]byte, sortRecSize)
				for i := range n {
					if err := a.Get(uint64(i), rec); err != nil {
						t.Fatal(err)
					}
					keys[i] = key(rec)
				}
				var cmps int
				err := a.Sort(func(x, y []byte) bool {
					cmps++
					return keyLess(x, y)
				})
				if err != nil {
					t.Fatal(err)
				}
				checkSorted(t, a, n, keys)
				// O(n log n) on every shape: comparison counts are
				// deterministic, so this bound is a stable assertion.
				if limit := 3*n*int(math.Ceil(math.Log2(float64(n+1)))) + 8; cmps > limit {
					t.Errorf("%d comparisons for %d records (limit %d)", cmps, n, limit)
				}
			})
		}
	}
}

// TestSortAdversary runs McIlroy's "A Killer Adversary for Quicksort"
// (1999): the comparator decides values lazily so as to make any quicksort
// quadratic. Introsort's heapsort fallback must keep it O(n log n).
func TestSortAdversary(t *testing.T) {
	const n = 5000
	a := newArray(t, sortRecSize)
	rec := make([]byte, sortRecSize)
	for i := range n {
		binary.LittleEndian.PutUint64(rec[8:], uint64(i))
		if _, err := a.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	gas := n
	val := make([]int, n)
	for i := range val {
		val[i] = gas
	}
	nsolid, candidate, cmps := 0, 0, 0
	freeze := func(x int) { val[x] = nsolid; nsolid++ }
	less := func(x, y []byte) bool {
		cmps++
		i, j := int(id(x)), int(id(y))
		if val[i] == gas && val[j] == gas {
			if i == candidate {
				freeze(i)
			} else {
				freeze(j)
			}
		}
		if val[i] == gas {
			candidate = i
		} else if val[j] == gas {
			candidate = j
		}
		return val[i] < val[j]
	}
	if err := a.Sort(less); err != nil {
		t.Fatal(err)
	}
	if limit := 6 * n * int(math.Ceil(math.Log2(n))); cmps > limit {
		t.Errorf("adversary forced %d comparisons for %d records (limit %d)", cmps, n, limit)
	}
	// The values the adversary settled on must now be in order.
	prev := -1
	seen := make([]bool, n)
	a.Iterate(func(i uint64, rec []byte) bool {
		x := int(id(rec))
		if seen[x] || val[x] < prev {
			t.Fatalf("record %d (id %d, value %d) out of order or duplicated", i, x, val[x])
		}
		seen[x], prev = true, val[x]
		return true
	})
	t.Logf("%d comparisons for %d records", cmps, n)
}

// TestHeapSort exercises the depth-limit fallback directly.
func TestHeapSort(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 1001} {
		rng := rand.New(rand.NewPCG(uint64(n), 5))
		mem := make([]byte, n*sortRecSize)
		keys := make([]uint64, n)
		for i := range n {
			keys[i] = rng.Uint64N(50)
			binary.LittleEndian.PutUint64(mem[i*sortRecSize:], keys[i])
			binary.LittleEndian.PutUint64(mem[i*sortRecSize+8:], uint64(i))
		}
		s := sorter{mem: mem, rs: sortRecSize, less: keyLess, key: make([]byte, sortRecSize)}
		s.introsort(0, n, 0) // depth 0: heapsort at once (or insertion sort if small)
		s.heapSort(0, n)
		seen := make([]bool, n)
		for i := range n {
			rec := s.rec(i)
			if seen[id(rec)] || keys[id(rec)] != key(rec) || (i > 0 && key(s.rec(i-1)) > key(rec)) {
				t.Fatalf("n=%d: heapsort output wrong at %d", n, i)
			}
			seen[id(rec)] = true
		}
	}
}

// TestSortBadComparator checks that a comparator that is not a strict weak
// order cannot make Sort lose, duplicate, or corrupt records.
func TestSortBadComparator(t *testing.T) {
	a := newArray(t, sortRecSize)
	rng := rand.New(rand.NewPCG(8, 8))
	fillArray(t, a, 3000, sortInputs["random"], rng)
	for _, less := range []func(x, y []byte) bool{
		func(x, y []byte) bool { return true },
		func(x, y []byte) bool { return false },
		func(x, y []byte) bool { return rng.IntN(2) == 0 },
	} {
		if err := a.Sort(less); err != nil {
			t.Fatal(err)
		}
		seen := make([]bool, 3000)
		a.Iterate(func(i uint64, rec []byte) bool {
			x := id(rec)
			if x >= 3000 || seen[x] || binary.LittleEndian.Uint64(rec[16:]) != ^x {
				t.Fatalf("record %d corrupted or duplicated", i)
			}
			seen[x] = true
			return true
		})
	}
}

func TestSwapBytes(t *testing.T) {
	for n := range 40 {
		a, b := make([]byte, n), make([]byte, n)
		for i := range n {
			a[i], b[i] = byte(i), byte(100+i)
		}
		swapBytes(a, b)
		for i := range n {
			if a[i] != byte(100+i) || b[i] != byte(i) {
				t.Fatalf("n=%d: swap wrong at %d", n, i)
			}
		}
	}
}

func BenchmarkArrayAppend(b *testing.B) {
	a := newArray(b, 32)
	rec := make([]byte, 32)
	b.SetBytes(32)
	b.ReportAllocs()
	var i uint64
	for b.Loop() {
		binary.LittleEndian.PutUint64(rec, i)
		if _, err := a.Append(rec); err != nil {
			b.Fatal(err)
		}
		i++
		if a.Len() == 1<<23 { // 256 MiB: recycle the storage
			b.StopTimer()
			if err := a.Truncate(0); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
}

func BenchmarkArraySort(b *testing.B) {
	const n = 1 << 20
	a := newArray(b, 32)
	rng := rand.New(rand.NewPCG(1, 1))
	rec := make([]byte, 32)
	for range n {
		binary.LittleEndian.PutUint64(rec, rng.Uint64())
		if _, err := a.Append(rec); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for i := range uint64(n) { // reshuffle keys
			binary.LittleEndian.PutUint64(rec, rng.Uint64())
			if err := a.Set(i, rec); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if err := a.Sort(keyLess); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
}
