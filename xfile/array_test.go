package xfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

func newArray(t testing.TB, recSize int) *Array {
	t.Helper()
	a, err := NewArray(Options{Dir: t.TempDir()}, recSize)
	if err != nil {
		t.Fatalf("NewArray: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

// TestArrayModel runs random operations against an Array and a slice of
// records. Record sizes that do not divide the page size make records
// straddle pages; the array grows past several remaps.
func TestArrayModel(t *testing.T) {
	for _, rs := range []int{5, 24, 100, 4097} {
		t.Run("", func(t *testing.T) {
			a := newArray(t, rs)
			rng := rand.New(rand.NewPCG(uint64(rs), 7))
			var model [][]byte
			randRec := func() []byte {
				r := make([]byte, rs)
				for i := range r {
					r[i] = byte(rng.Uint32())
				}
				return r
			}
			sizes := map[int64]bool{}
			// Enough appends to fill 400 KiB: mappings of 64, 128, 256,
			// and 512 KiB.
			steps := 3*(400<<10)/rs + 400
			for step := 0; step < steps; step++ {
				switch op := rng.IntN(1000); {
				case step == steps/2: // one big truncation
					n := len(model) / 3
					if err := a.Truncate(uint64(n)); err != nil {
						t.Fatal(err)
					}
					model = model[:n]
				case op < 8 && len(model) > 0: // Truncate a little
					n := len(model) - rng.IntN(min(len(model), 50))
					if err := a.Truncate(uint64(n)); err != nil {
						t.Fatal(err)
					}
					model = model[:n]
				case rng.IntN(steps/8) == 0: // Iterate, stopping early sometimes
					stop := rng.IntN(len(model) + 1)
					var seen int
					err := a.Iterate(func(i uint64, rec []byte) bool {
						if i != uint64(seen) || !bytes.Equal(rec, model[i]) {
							t.Fatalf("Iterate: record %d (seen %d) differs", i, seen)
						}
						seen++
						return seen < stop
					})
					if err != nil {
						t.Fatal(err)
					}
					if want := max(min(stop, len(model)), min(1, len(model))); seen != want {
						t.Fatalf("Iterate visited %d records, want %d", seen, want)
					}
				case rng.IntN(steps/6) == 0: // Sort, a few times per run
					if err := a.Sort(bytesLess); err != nil {
						t.Fatal(err)
					}
					slices.SortFunc(model, bytes.Compare)
				case op < 600 || len(model) == 0: // Append
					r := randRec()
					i, err := a.Append(r)
					if err != nil {
						t.Fatalf("Append: %v", err)
					}
					if i != uint64(len(model)) {
						t.Fatalf("Append returned %d, want %d", i, len(model))
					}
					model = append(model, r)
				case op < 800: // Get
					i := rng.IntN(len(model))
					got := make([]byte, rs)
					if err := a.Get(uint64(i), got); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, model[i]) {
						t.Fatalf("step %d: Get(%d) differs", step, i)
					}
				default: // Set
					i := rng.IntN(len(model))
					r := randRec()
					if err := a.Set(uint64(i), r); err != nil {
						t.Fatal(err)
					}
					model[i] = r
				}
				if a.Len() != uint64(len(model)) {
					t.Fatalf("Len %d, model %d", a.Len(), len(model))
				}
				sizes[a.f.Size()] = true
			}
			checkArray(t, a, model)
			if len(sizes) < 4 {
				t.Errorf("mapping took only %d sizes; want several remaps", len(sizes))
			}
		})
	}
}

func checkArray(t *testing.T, a *Array, model [][]byte) {
	t.Helper()
	if a.Len() != uint64(len(model)) {
		t.Fatalf("Len %d, want %d", a.Len(), len(model))
	}
	got := make([]byte, a.RecordSize())
	for i := range model {
		if err := a.Get(uint64(i), got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
}

func TestArrayErrors(t *testing.T) {
	for _, rs := range []int{0, -1, MaxRecordSize + 1} {
		if _, err := NewArray(Options{Dir: t.TempDir()}, rs); !errors.Is(err, ErrRecordSize) {
			t.Errorf("NewArray(recSize %d): %v, want ErrRecordSize", rs, err)
		}
	}
	if _, err := NewArray(Options{Dir: "/nonexistent/xfile-test"}, 8); !errors.Is(err, ErrTempDir) {
		t.Errorf("NewArray in a missing directory: %v, want ErrTempDir", err)
	}
	a := newArray(t, 8)
	rec := []byte("12345678")
	if _, err := a.Append(rec); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	for name, err := range map[string]error{
		"Get past end":      a.Get(1, buf),
		"Get huge":          a.Get(1<<63, buf),
		"Set past end":      a.Set(1, rec),
		"Truncate past end": a.Truncate(2),
	} {
		if !errors.Is(err, ErrRange) {
			t.Errorf("%s: %v, want ErrRange", name, err)
		}
	}
	_, err := a.Append(rec[:7])
	for name, err := range map[string]error{
		"Append short": err,
		"Get short":    a.Get(0, buf[:4]),
		"Set long":     a.Set(0, append(rec, 'x')),
	} {
		if !errors.Is(err, ErrRecordSize) {
			t.Errorf("%s: %v, want ErrRecordSize", name, err)
		}
	}
	if a.Len() != 1 {
		t.Errorf("failed calls changed Len to %d", a.Len())
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Append(rec); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v", err)
	}
	if err := a.Sort(bytesLess); !errors.Is(err, ErrClosed) {
		t.Errorf("Sort after Close: %v", err)
	}
}

func bytesLess(a, b []byte) bool { return bytes.Compare(a, b) < 0 }

// TestArrayTruncateReturnsMemory checks that Truncate discards storage.
func TestArrayTruncateReturnsMemory(t *testing.T) {
	a := newArray(t, 32)
	rec := make([]byte, 32)
	for i := 0; i < 1<<17; i++ { // 4 MiB
		binary.LittleEndian.PutUint64(rec, uint64(i))
		if _, err := a.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := a.Stat()
	if err := a.Truncate(10); err != nil {
		t.Fatal(err)
	}
	after, _ := a.Stat()
	if after.Allocated >= before.Allocated/2 {
		t.Errorf("Allocated %d -> %d after Truncate", before.Allocated, after.Allocated)
	}
	// The kept records survive, and appending reuses the space.
	for i := uint64(0); i < 10; i++ {
		if err := a.Get(i, rec); err != nil || binary.LittleEndian.Uint64(rec) != i {
			t.Fatalf("record %d after Truncate: %v", i, err)
		}
	}
	clear(rec)
	if _, err := a.Append(rec); err != nil {
		t.Fatal(err)
	}
	if err := a.Get(10, rec); err != nil || !bytes.Equal(rec, make([]byte, 32)) {
		t.Fatalf("appended record after Truncate: %x, %v", rec, err)
	}
}

// TestArrayHuge appends 100M 32-byte records (a 3.2 GB mapping) and sorts
// them. It takes a few minutes, so it runs only when
// SCRUBD_XFILE_HUGE is set.
func TestArrayHuge(t *testing.T) {
	if os.Getenv("SCRUBD_XFILE_HUGE") == "" {
		t.Skip("set SCRUBD_XFILE_HUGE=1 to run")
	}
	const n = 100_000_000
	a, err := NewArray(Options{}, 32)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rec := make([]byte, 32)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := uint64(0); i < n; i++ {
		binary.BigEndian.PutUint64(rec, rng.Uint64())
		binary.BigEndian.PutUint64(rec[8:], i)
		if _, err := a.Append(rec); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	st, _ := a.Stat()
	t.Logf("after appends: %+v", st)
	if err := a.Sort(bytesLess); err != nil {
		t.Fatal(err)
	}
	prev := make([]byte, 32)
	if err := a.Iterate(func(i uint64, rec []byte) bool {
		if i > 0 && bytes.Compare(prev, rec) > 0 {
			t.Fatalf("records %d and %d out of order", i-1, i)
		}
		copy(prev, rec)
		return true
	}); err != nil {
		t.Fatal(err)
	}
}
