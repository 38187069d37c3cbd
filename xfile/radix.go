package xfile

// Most-significant-digit radix sort of fixed-size records by a byte key
//
// SortBufferedKey's records compare by their first keyLen bytes as
// unsigned bytes (bytes.Compare), then, on equal keys, by a tie function.
// Such keys need no comparisons to order: a range of records is cut into
// up to 256 buckets by its byte d, out of place into a scratch buffer of
// the same size and copied back, and each bucket is sorted the same way
// from byte d+1. A byte that every record of the range shares costs one
// counting pass and no move, so keys whose high bytes are zero (inode and
// block numbers) cost a move per byte that varies, not per byte. A range
// of at most radixSmall records is finished by insertion sort with the
// whole comparison, and a range whose keys are all equal by the tie
// function (introsort). The recursion goes at most keyLen deep; each
// level moves every record at most once, so the sort is O(n · keyLen)
// moves and O(n · keyLen) counts, whatever the input.

// radixSmall: ranges of at most this many records are insertion-sorted.
const radixSmall = 32

// radixSorter sorts the records of mem by their first keyLen bytes, then
// by tie (nil: equal keys stay in any order).
type radixSorter struct {
	mem, scratch []byte
	rs, keyLen   int
	tie          func(a, b []byte) int
	key          []byte // insertion sort's held record
}

// radixSortRecords sorts the first n records of mem (rs bytes each) by
// their first keyLen bytes, then tie; scratch holds at least n records.
func radixSortRecords(mem, scratch []byte, rs, n, keyLen int, tie func(a, b []byte) int) {
	if n < 2 {
		return
	}
	keyLen = min(keyLen, rs)
	s := radixSorter{mem: mem[: n*rs : n*rs], scratch: scratch[: n*rs : n*rs], rs: rs, keyLen: keyLen, tie: tie, key: make([]byte, rs)}
	s.sort(0, n, 0)
}

// cmp compares records a and b: key bytes from d on (the range shares
// those before d), then tie.
func (s *radixSorter) cmp(a, b []byte, d int) int {
	for i := d; i < s.keyLen; i++ {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	if s.tie == nil {
		return 0
	}
	return s.tie(a, b)
}

// sort sorts records [lo, hi), which share their first d key bytes.
func (s *radixSorter) sort(lo, hi, d int) {
	rs := s.rs
	var count [256]int
	for hi-lo > radixSmall {
		// The first byte from d on that not every record shares.
		for ; d < s.keyLen; d++ {
			count = [256]int{}
			for o := lo*rs + d; o < hi*rs; o += rs {
				count[s.mem[o]]++
			}
			if count[s.mem[lo*rs+d]] != hi-lo {
				break
			}
		}
		if d == s.keyLen {
			if s.tie != nil {
				sortRecords(s.mem[lo*rs:hi*rs], rs, hi-lo, func(a, b []byte) bool { return s.tie(a, b) < 0 })
			}
			return
		}
		// Scatter into scratch by byte d, stably, and copy back.
		var start [256]int
		at := lo
		for b := range 256 {
			start[b] = at
			at += count[b]
		}
		next := start
		for i := lo; i < hi; i++ {
			rec := s.mem[i*rs : (i+1)*rs]
			b := rec[d]
			copy(s.scratch[next[b]*rs:], rec)
			next[b]++
		}
		copy(s.mem[lo*rs:hi*rs], s.scratch[lo*rs:hi*rs])
		// Sort the buckets from byte d+1; the largest in this loop, so
		// that the recursion stays keyLen deep and the stack small.
		big := -1
		for b := range 256 {
			if count[b] > 1 && (big < 0 || count[b] > count[big]) {
				big = b
			}
		}
		for b := range 256 {
			if b != big && count[b] > 1 {
				s.sort(start[b], start[b]+count[b], d+1)
			}
		}
		if big < 0 {
			return
		}
		lo, hi, d = start[big], start[big]+count[big], d+1
	}
	s.insertionSort(lo, hi, d)
}

// insertionSort sorts [lo, hi), whose records share their first d key
// bytes.
func (s *radixSorter) insertionSort(lo, hi, d int) {
	rs := s.rs
	rec := func(i int) []byte { return s.mem[i*rs : (i+1)*rs] }
	for i := lo + 1; i < hi; i++ {
		if s.cmp(rec(i), rec(i-1), d) >= 0 {
			continue
		}
		copy(s.key, rec(i))
		j := i - 1
		for j > lo && s.cmp(s.key, rec(j-1), d) < 0 {
			j--
		}
		copy(s.mem[(j+1)*rs:(i+1)*rs], s.mem[j*rs:i*rs])
		copy(rec(j), s.key)
	}
}
