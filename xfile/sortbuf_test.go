package xfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestSortBuffered(t *testing.T) {
	const rs = 12
	less := func(a, b []byte) bool { return bytes.Compare(a[:8], b[:8]) < 0 }
	for _, tc := range []struct {
		name   string
		n      int
		bufRec int
		gen    func(r *rand.Rand, i int) uint64
	}{
		{"random, many runs", 5000, 97, func(r *rand.Rand, i int) uint64 { return r.Uint64() }},
		{"few keys", 3000, 50, func(r *rand.Rand, i int) uint64 { return r.Uint64N(5) }},
		{"sorted", 4000, 100, func(r *rand.Rand, i int) uint64 { return uint64(i) }},
		{"reversed", 4000, 100, func(r *rand.Rand, i int) uint64 { return uint64(10000 - i) }},
		{"one run", 300, 1000, func(r *rand.Rand, i int) uint64 { return r.Uint64() }},
		{"runs sorted, not the whole", 1000, 100, func(r *rand.Rand, i int) uint64 { return uint64(i % 100) }},
		{"tiny", 1, 2, func(r *rand.Rand, i int) uint64 { return 0 }},
	} {
		for _, byKey := range []bool{false, true} {
			name := tc.name
			if byKey {
				name += ", by key"
			}
			t.Run(name, func(t *testing.T) {
				r := rand.New(rand.NewPCG(1, uint64(tc.n)))
				a, err := NewArray(Options{Dir: t.TempDir()}, rs)
				if err != nil {
					t.Fatal(err)
				}
				defer a.Close()
				want := make([][]byte, tc.n)
				rec := make([]byte, rs)
				for i := range want {
					binary.BigEndian.PutUint64(rec, tc.gen(r, i))
					binary.BigEndian.PutUint32(rec[8:], uint32(i))
					want[i] = append([]byte(nil), rec...)
					if _, err := a.Append(rec); err != nil {
						t.Fatal(err)
					}
				}
				buf := make([]byte, tc.bufRec*rs+5)
				sort := func() error { return a.SortBuffered(less, buf) }
				if byKey {
					// Half of buf is the radix sort's scratch: as many
					// runs, of the same size, from twice the buffer.
					buf = make([]byte, 2*tc.bufRec*rs+5)
					sort = func() error { return a.SortBufferedKey(8, nil, buf) }
				}
				if err := sort(); err != nil {
					t.Fatal(err)
				}
				if a.Len() != uint64(tc.n) {
					t.Fatalf("len %d, want %d", a.Len(), tc.n)
				}
				seen := make([]bool, tc.n)
				var prev []byte
				for i := uint64(0); i < a.Len(); i++ {
					if err := a.Get(i, rec); err != nil {
						t.Fatal(err)
					}
					if prev != nil && less(rec, prev) {
						t.Fatalf("record %d out of order", i)
					}
					id := binary.BigEndian.Uint32(rec[8:])
					if int(id) >= tc.n || seen[id] || !bytes.Equal(rec, want[id]) {
						t.Fatalf("record %d: %x lost or duplicated", i, rec)
					}
					seen[id] = true
					prev = append(prev[:0], rec...)
				}
				// The array stays usable: append after the sort.
				if _, err := a.Append(rec); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	a, err := NewArray(Options{}, rs)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.Append(make([]byte, rs))
	a.Append(make([]byte, rs))
	if err := a.SortBuffered(less, make([]byte, rs)); !errors.Is(err, ErrRecordSize) {
		t.Fatalf("a buffer of one record: %v", err)
	}
	if err := a.SortBufferedKey(8, nil, make([]byte, 3*rs)); !errors.Is(err, ErrRecordSize) {
		t.Fatalf("by key, a buffer of three records: %v", err)
	}
	if err := a.SortBufferedKey(rs+1, nil, make([]byte, 100*rs)); !errors.Is(err, ErrRecordSize) {
		t.Fatalf("by key, a key longer than the record: %v", err)
	}
}

func TestAppendReadRecords(t *testing.T) {
	const rs = 10
	for _, dir := range []string{"", t.TempDir()} {
		a, err := NewArray(Options{Dir: dir}, rs)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		rec := make([]byte, rs)
		var batch []byte
		n := 0
		for round := 0; round < 200; round++ {
			// Mixed: single appends through the mapping and batches.
			for j := 0; j < round%7; j++ {
				binary.BigEndian.PutUint64(rec, uint64(n))
				n++
				batch = append(batch, rec...)
			}
			if i, err := a.AppendRecords(batch); err != nil || i != uint64(n-len(batch)/rs) {
				t.Fatalf("AppendRecords: %d %v", i, err)
			}
			batch = batch[:0]
			binary.BigEndian.PutUint64(rec, uint64(n))
			n++
			if _, err := a.Append(rec); err != nil {
				t.Fatal(err)
			}
		}
		if a.Len() != uint64(n) {
			t.Fatalf("len %d, want %d", a.Len(), n)
		}
		buf := make([]byte, 33*rs+3)
		for i := 0; i < n; {
			k, err := a.ReadRecords(uint64(i), buf)
			if err != nil || k == 0 {
				t.Fatalf("ReadRecords(%d): %d %v", i, k, err)
			}
			for j := 0; j < k; j++ {
				if v := binary.BigEndian.Uint64(buf[j*rs:]); v != uint64(i+j) {
					t.Fatalf("record %d reads %d", i+j, v)
				}
				if err := a.Get(uint64(i+j), rec); err != nil || binary.BigEndian.Uint64(rec) != uint64(i+j) {
					t.Fatalf("Get(%d): %x %v", i+j, rec, err)
				}
			}
			i += k
		}
		if k, err := a.ReadRecords(uint64(n), buf); k != 0 || err != nil {
			t.Fatalf("ReadRecords at the end: %d %v", k, err)
		}
		if _, err := a.ReadRecords(uint64(n+1), buf); err == nil {
			t.Fatal("ReadRecords past the end: no error")
		}
		if _, err := a.AppendRecords(make([]byte, rs+1)); err == nil {
			t.Fatal("AppendRecords of a partial record: no error")
		}
	}
}
