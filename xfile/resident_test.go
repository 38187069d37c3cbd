package xfile

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestDropResident: records read back unchanged after their pages were
// dropped from the resident set, across growth (old views) and in both
// kinds of file; SortResident sorts as Sort does while dropping.
func TestDropResident(t *testing.T) {
	for _, dir := range []string{"", t.TempDir()} {
		a, err := NewArray(Options{Dir: dir, Name: "drop"}, 16)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(3, 4))
		n := uint64(20000)
		if testing.Short() {
			n = 5000
		}
		rec := make([]byte, 16)
		for i := uint64(0); i < n; i++ {
			binary.BigEndian.PutUint64(rec, r.Uint64())
			binary.BigEndian.PutUint64(rec[8:], i)
			if _, err := a.Append(rec); err != nil {
				t.Fatal(err)
			}
			if i%1000 == 0 {
				if err := a.DropResident(0, i+1); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := a.DropResident(0, n); err != nil {
			t.Fatal(err)
		}
		seen := make([]bool, n)
		if err := a.SortResident(func(x, y []byte) bool { return bytes.Compare(x[:8], y[:8]) < 0 }, 4999); err != nil {
			t.Fatal(err)
		}
		prev := make([]byte, 16)
		for i := uint64(0); i < n; i++ {
			if err := a.Get(i, rec); err != nil {
				t.Fatal(err)
			}
			if i > 0 && bytes.Compare(rec[:8], prev[:8]) < 0 {
				t.Fatalf("record %d out of order", i)
			}
			seen[binary.BigEndian.Uint64(rec[8:])] = true
			copy(prev, rec)
		}
		for i, ok := range seen {
			if !ok {
				t.Fatalf("record %d lost", i)
			}
		}
		if err := a.DropResident(n, n+10); err != nil { // an empty range
			t.Fatal(err)
		}
		a.Close()
		if err := a.DropResident(0, 1); err == nil {
			t.Fatal("DropResident after Close: no error")
		}
	}
}
