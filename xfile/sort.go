package xfile

// In-place introsort of fixed-size records
//
// Array.Sort must sort up to ~100M records that live in the mapping, so it
// cannot copy them to the heap, and it must stay O(n log n) whatever the
// input looks like. Introsort (Musser, 1997) gives both:
//
//   - Quicksort does the work. The pivot is the median of three records for
//     small ranges and Tukey's ninther (median of three medians of three) for
//     ranges above ninetherThreshold, which makes sorted, reversed, and
//     organ-pipe inputs split near the middle.
//   - Partitioning is Hoare-style and both scans stop on records equal to
//     the pivot, so runs of equal keys (all-equal input, few distinct keys)
//     are split evenly instead of degenerating to O(n²).
//   - The recursion depth is capped at 2·⌊log₂ n⌋+2; a range that exceeds it
//     (an adversarial "median-of-3 killer") is finished with heapsort,
//     which is O(n log n) worst case. So the whole sort is O(n log n).
//   - Ranges of at most insertionMax records are finished by insertion
//     sort, which is fastest there.
//   - Quicksort recurses into the smaller part and loops on the larger, so
//     the stack is O(log n) frames; the heap use is one record-sized buffer
//     (swaps exchange eight bytes at a time in registers).
//
// Partition correctness: the pivot is swapped to position lo and does not
// move until the end. Scan i upward over records < pivot, j downward over
// records > pivot; when both stop and i <= j, a[i] >= pivot >= a[j], so
// swapping them and stepping both keeps the invariant
// a[lo+1:i] <= pivot <= a[j+1:hi]. When i > j, j = i-1 (or j = lo), a[j] <=
// pivot, and swapping a[lo] and a[j] leaves a[lo:j] <= a[j] = pivot <=
// a[j+1:hi]. Both parts exclude j, so every step makes progress. The scans
// test i <= j before comparing, so even a comparator that is not a strict
// weak order cannot push an index outside [lo, hi): the result is then
// unsorted but no record is lost or duplicated (records are only permuted).

import (
	"encoding/binary"
	"math/bits"
)

const (
	insertionMax      = 12
	ninetherThreshold = 40
)

// sorter sorts the records in mem, each rs bytes long.
type sorter struct {
	mem  []byte
	rs   int
	less func(a, b []byte) bool
	key  []byte // scratch: the record being inserted by insertionSort
}

func (s *sorter) rec(i int) []byte {
	o := i * s.rs
	return s.mem[o : o+s.rs : o+s.rs]
}

func (s *sorter) lessAt(i, j int) bool { return s.less(s.rec(i), s.rec(j)) }

func (s *sorter) swap(i, j int) {
	if i != j {
		swapBytes(s.rec(i), s.rec(j))
	}
}

// swapBytes exchanges the contents of a and b (same length), eight bytes at
// a time, without a scratch buffer.
func swapBytes(a, b []byte) {
	b = b[:len(a)]
	for len(a) >= 8 {
		x, y := binary.LittleEndian.Uint64(a), binary.LittleEndian.Uint64(b)
		binary.LittleEndian.PutUint64(a, y)
		binary.LittleEndian.PutUint64(b, x)
		a, b = a[8:], b[8:]
	}
	for i := range a {
		a[i], b[i] = b[i], a[i]
	}
}

// sortRecords sorts the first n records of mem.
func sortRecords(mem []byte, rs, n int, less func(a, b []byte) bool) {
	if n < 2 {
		return
	}
	s := sorter{mem: mem[: n*rs : n*rs], rs: rs, less: less, key: make([]byte, rs)}
	s.introsort(0, n, 2*bits.Len(uint(n)))
}

func (s *sorter) introsort(lo, hi, depth int) {
	for hi-lo > insertionMax {
		if depth == 0 {
			s.heapSort(lo, hi)
			return
		}
		depth--
		p := s.partition(lo, hi)
		if p-lo < hi-p-1 {
			s.introsort(lo, p, depth)
			lo = p + 1
		} else {
			s.introsort(p+1, hi, depth)
			hi = p
		}
	}
	s.insertionSort(lo, hi)
}

// partition partitions [lo, hi) around a pivot and returns its final index
// p: records in [lo, p) are <= it and records in (p, hi) are >= it.
func (s *sorter) partition(lo, hi int) int {
	s.swap(lo, s.choosePivot(lo, hi))
	pivot := s.rec(lo) // stays at lo until the final swap
	i, j := lo+1, hi-1
	for {
		for i <= j && s.less(s.rec(i), pivot) {
			i++
		}
		for i <= j && s.less(pivot, s.rec(j)) {
			j--
		}
		if i > j {
			break
		}
		s.swap(i, j)
		i++
		j--
	}
	s.swap(lo, j)
	return j
}

func (s *sorter) choosePivot(lo, hi int) int {
	n := hi - lo
	m := lo + n/2
	if n > ninetherThreshold {
		d := n / 8
		a := s.median3(lo, lo+d, lo+2*d)
		b := s.median3(m-d, m, m+d)
		c := s.median3(hi-1-2*d, hi-1-d, hi-1)
		return s.median3(a, b, c)
	}
	return s.median3(lo, m, hi-1)
}

// median3 returns the index of the median of the records at a, b, c.
func (s *sorter) median3(a, b, c int) int {
	if s.lessAt(b, a) {
		a, b = b, a
	}
	// a <= b
	if s.lessAt(c, b) {
		if s.lessAt(c, a) {
			return a
		}
		return c
	}
	return b
}

// insertionSort sorts [lo, hi): each record is held in s.key while the
// larger records before it shift up by one in a single move.
func (s *sorter) insertionSort(lo, hi int) {
	rs := s.rs
	for i := lo + 1; i < hi; i++ {
		if !s.lessAt(i, i-1) {
			continue
		}
		copy(s.key, s.rec(i))
		j := i - 1
		for j > lo && s.less(s.key, s.rec(j-1)) {
			j--
		}
		copy(s.mem[(j+1)*rs:(i+1)*rs], s.mem[j*rs:i*rs])
		copy(s.rec(j), s.key)
	}
}

// heapSort sorts [lo, hi) with a max-heap rooted at lo.
func (s *sorter) heapSort(lo, hi int) {
	n := hi - lo
	for i := n/2 - 1; i >= 0; i-- {
		s.siftDown(lo, i, n)
	}
	for end := n - 1; end > 0; end-- {
		s.swap(lo, lo+end)
		s.siftDown(lo, 0, end)
	}
}

// siftDown restores the heap property below root in the heap of n records
// starting at lo.
func (s *sorter) siftDown(lo, root, n int) {
	for {
		child := 2*root + 1
		if child >= n {
			return
		}
		if child+1 < n && s.lessAt(lo+child, lo+child+1) {
			child++
		}
		if !s.lessAt(lo+root, lo+child) {
			return
		}
		s.swap(lo+root, lo+child)
		root = child
	}
}
