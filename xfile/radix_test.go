package xfile

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
)

// radixRecords makes n records of rs bytes whose key (the first keyLen
// bytes) is drawn by gen, with the record's number in its last 4 bytes.
func radixRecords(r *rand.Rand, n, rs, keyLen int, gen func(r *rand.Rand, i int, key []byte)) []byte {
	mem := make([]byte, n*rs)
	for i := range n {
		rec := mem[i*rs : (i+1)*rs]
		gen(r, i, rec[:keyLen])
		for j := keyLen; j < rs-4; j++ {
			rec[j] = byte(r.Uint32())
		}
		binary.BigEndian.PutUint32(rec[rs-4:], uint32(i))
	}
	return mem
}

// TestRadixSortRecords: the radix sort orders records as bytes.Compare of
// their keys then tie would, against slices.SortFunc, and loses or
// duplicates none.
func TestRadixSortRecords(t *testing.T) {
	const rs = 23
	small := func(max uint64) func(r *rand.Rand, i int, key []byte) {
		return func(r *rand.Rand, i int, key []byte) {
			binary.BigEndian.PutUint64(key, r.Uint64N(max))
			binary.BigEndian.PutUint64(key[8:], r.Uint64N(max))
		}
	}
	gens := []struct {
		name string
		gen  func(r *rand.Rand, i int, key []byte)
	}{
		{"random", func(r *rand.Rand, i int, key []byte) {
			for j := range key {
				key[j] = byte(r.Uint32())
			}
		}},
		{"small numbers", small(1000)},
		{"few keys", small(3)},
		{"all equal", small(1)},
		{"sorted", func(r *rand.Rand, i int, key []byte) { binary.BigEndian.PutUint64(key[8:], uint64(i)) }},
		{"reversed", func(r *rand.Rand, i int, key []byte) { binary.BigEndian.PutUint64(key[8:], uint64(1<<40-i)) }},
		{"one byte varies", func(r *rand.Rand, i int, key []byte) { key[7] = byte(r.Uint32()) }},
	}
	// tie: the byte after the key, then nothing (records with equal keys
	// and tie bytes stay in any order).
	tie := func(a, b []byte) int { return int(a[16]) - int(b[16]) }
	for _, g := range gens {
		for _, n := range []int{0, 1, 2, 31, 33, 500, 20000} {
			for _, withTie := range []bool{false, true} {
				r := rand.New(rand.NewPCG(uint64(n), 9))
				mem := radixRecords(r, n, rs, 16, g.gen)
				want := make([][]byte, n)
				for i := range n {
					want[i] = slices.Clone(mem[i*rs : (i+1)*rs])
				}
				tf := tie
				if !withTie {
					tf = nil
				}
				cmpRec := func(a, b []byte) int {
					if c := bytes.Compare(a[:16], b[:16]); c != 0 || tf == nil {
						return c
					}
					return tf(a, b)
				}
				radixSortRecords(mem, make([]byte, len(mem)+7), rs, n, 16, tf)
				seen := make([]bool, n)
				for i := range n {
					rec := mem[i*rs : (i+1)*rs]
					if i > 0 && cmpRec(rec, mem[(i-1)*rs:i*rs]) < 0 {
						t.Fatalf("%s, %d records, tie %v: record %d out of order", g.name, n, withTie, i)
					}
					id := binary.BigEndian.Uint32(rec[rs-4:])
					if int(id) >= n || seen[id] || !bytes.Equal(rec, want[id]) {
						t.Fatalf("%s, %d records: record %d (%x) lost or duplicated", g.name, n, i, rec)
					}
					seen[id] = true
				}
			}
		}
	}
}

// checkRecords: records shaped as the check's entries by name (35 bytes,
// keyed by inode, directory, place: 24 bytes) for 250,000 files in 100
// directories, in directory order as the walk gathers them.
func checkRecords(n int) []byte {
	const rs = 35
	r := rand.New(rand.NewPCG(1, 2))
	mem := make([]byte, n*rs)
	for i := range n {
		rec := mem[i*rs:]
		binary.BigEndian.PutUint64(rec, 1000+r.Uint64N(uint64(n)))
		binary.BigEndian.PutUint64(rec[8:], uint64(i*100/n))
		binary.BigEndian.PutUint64(rec[16:], uint64(i)*20)
		binary.BigEndian.PutUint64(rec[24:], r.Uint64())
	}
	return mem
}

// BenchmarkSortRun: one 4 MiB run of the check's sorts, by introsort with
// the check's word comparison and by the radix sort.
func BenchmarkSortRun(b *testing.B) {
	const rs = 35
	n := 4 << 20 / rs
	orig := checkRecords(n)
	mem := make([]byte, len(orig))
	scratch := make([]byte, len(orig))
	less := func(a, b []byte) bool {
		for i := 0; i < 24; i += 8 {
			if x, y := binary.BigEndian.Uint64(a[i:]), binary.BigEndian.Uint64(b[i:]); x != y {
				return x < y
			}
		}
		return false
	}
	b.Run("introsort", func(b *testing.B) {
		b.SetBytes(int64(len(orig)))
		for b.Loop() {
			copy(mem, orig)
			sortRecords(mem, rs, n, less)
		}
	})
	b.Run("radix", func(b *testing.B) {
		b.SetBytes(int64(len(orig)))
		for b.Loop() {
			copy(mem, orig)
			radixSortRecords(mem, scratch, rs, n, 24, nil)
		}
	})
}
