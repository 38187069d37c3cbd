package disk

import (
	"bytes"
	"errors"
	"math"
	"path/filepath"
	"sync"
	"testing"
)

// deviceKinds lists every Device in the package, each opened as a fresh
// zero-filled device of the given size, so the contract tests run on all.
var deviceKinds = []struct {
	name string
	open func(t *testing.T, size int64) Device
}{
	{"file", func(t *testing.T, size int64) Device {
		f, err := Create(filepath.Join(t.TempDir(), "img"), size, false)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}},
	{"mem", func(t *testing.T, size int64) Device { return NewMem(size) }},
	{"recorder", func(t *testing.T, size int64) Device { return NewRecorder(make([]byte, size)) }},
	{"faulty", func(t *testing.T, size int64) Device { return NewFaulty(NewMem(size)) }},
}

// pattern returns n bytes that differ from zero and from other seeds.
func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i%251) + 1
		if p[i] == 0 {
			p[i] = seed | 1
		}
	}
	return p
}

func TestDeviceReadback(t *testing.T) {
	const size = 64 << 10
	for _, kind := range deviceKinds {
		t.Run(kind.name, func(t *testing.T) {
			dev := kind.open(t, size)
			defer dev.Close()
			if got := dev.Size(); got != size {
				t.Fatalf("Size() = %d, want %d", got, size)
			}
			want := make([]byte, size)
			writes := []struct {
				off int64
				n   int
			}{
				{0, 4096},
				{4096, 4096},
				{size - 4096, 4096},
				{1000, 3},      // unaligned, inside block 0
				{8191, 2},      // straddles a block boundary
				{size - 1, 1},  // last byte
				{12345, 0},     // empty
				{20480, 16384}, // several blocks
				{20480, 4096},  // overwrite
				{size, 0},      // empty, at the end
			}
			for i, w := range writes {
				p := pattern(byte(i), w.n)
				n, err := dev.WriteAt(p, w.off)
				if err != nil || n != w.n {
					t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", w.n, w.off, n, err)
				}
				copy(want[w.off:], p)
			}
			if err := dev.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			got := make([]byte, size)
			if n, err := dev.ReadAt(got, 0); err != nil || n != size {
				t.Fatalf("ReadAt(all) = %d, %v", n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("device contents differ from what was written")
			}
			small := make([]byte, 3)
			if _, err := dev.ReadAt(small, 1000); err != nil || !bytes.Equal(small, want[1000:1003]) {
				t.Fatalf("ReadAt(3, 1000) = %x, %v; want %x", small, err, want[1000:1003])
			}
		})
	}
}

func TestDeviceOutOfRange(t *testing.T) {
	const size = 8192
	cases := []struct {
		name string
		off  int64
		n    int
		ok   bool
	}{
		{"whole device", 0, size, true},
		{"empty at end", size, 0, true},
		{"last byte", size - 1, 1, true},
		{"negative offset", -1, 1, false},
		{"negative offset empty", -1, 0, false},
		{"offset past end", size + 1, 0, false},
		{"offset at end", size, 1, false},
		{"runs past end", size - 1, 2, false},
		{"longer than device", 0, size + 1, false},
		{"huge offset", math.MaxInt64, 1, false},
		{"min offset", math.MinInt64, 1, false},
		{"overflowing end", math.MaxInt64 - 10, 100, false},
	}
	for _, kind := range deviceKinds {
		t.Run(kind.name, func(t *testing.T) {
			dev := kind.open(t, size)
			defer dev.Close()
			for _, tc := range cases {
				// The buffer for "huge" offsets stays small: only the
				// range check should look at it.
				n := tc.n
				if n > 2*size {
					n = 2 * size
				}
				p := pattern(7, n)
				wn, werr := dev.WriteAt(p, tc.off)
				rn, rerr := dev.ReadAt(make([]byte, n), tc.off)
				if tc.ok {
					if werr != nil || rerr != nil || wn != n || rn != n {
						t.Errorf("%s: WriteAt = %d, %v; ReadAt = %d, %v; want success", tc.name, wn, werr, rn, rerr)
					}
					continue
				}
				if !errors.Is(werr, ErrOutOfRange) || wn != 0 {
					t.Errorf("%s: WriteAt = %d, %v; want 0, ErrOutOfRange", tc.name, wn, werr)
				}
				if !errors.Is(rerr, ErrOutOfRange) || rn != 0 {
					t.Errorf("%s: ReadAt = %d, %v; want 0, ErrOutOfRange", tc.name, rn, rerr)
				}
			}
			// The refused writes must not have touched the device: only
			// the successful ones wrote pattern(7) bytes.
			want := make([]byte, size)
			copy(want, pattern(7, size))
			copy(want[size-1:], pattern(7, 1))
			got := make([]byte, size)
			if _, err := dev.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Error("a refused write changed the device")
			}
		})
	}
}

// TestDeviceConcurrent runs writers on disjoint blocks alongside readers;
// run with -race.
func TestDeviceConcurrent(t *testing.T) {
	const (
		block   = 4096
		workers = 8
		rounds  = 50
	)
	for _, kind := range deviceKinds {
		t.Run(kind.name, func(t *testing.T) {
			dev := kind.open(t, 2*workers*block)
			defer dev.Close()
			var wg sync.WaitGroup
			errs := make(chan error, 2*workers)
			for w := range workers {
				wg.Go(func() {
					// Writer w owns block w and checks its own writes.
					off := int64(w * block)
					got := make([]byte, block)
					for r := range rounds {
						p := pattern(byte(w*rounds+r), block)
						if _, err := dev.WriteAt(p, off); err != nil {
							errs <- err
							return
						}
						if _, err := dev.ReadAt(got, off); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(got, p) {
							errs <- errors.New("read back a different block")
							return
						}
					}
				})
				wg.Go(func() {
					// Reader of a block nobody writes: always zero.
					off := int64((workers + w) * block)
					got := make([]byte, block)
					for range rounds {
						if _, err := dev.ReadAt(got, off); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(got, make([]byte, block)) {
							errs <- errors.New("untouched block is not zero")
							return
						}
					}
				})
			}
			wg.Go(func() {
				for range rounds {
					if err := dev.Flush(); err != nil {
						errs <- err
						return
					}
				}
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func TestDeviceClosed(t *testing.T) {
	for _, kind := range deviceKinds {
		t.Run(kind.name, func(t *testing.T) {
			dev := kind.open(t, 4096)
			if err := dev.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			buf := make([]byte, 512)
			if _, err := dev.ReadAt(buf, 0); !errors.Is(err, ErrClosed) {
				t.Errorf("ReadAt after Close: %v, want ErrClosed", err)
			}
			if _, err := dev.WriteAt(buf, 0); !errors.Is(err, ErrClosed) {
				t.Errorf("WriteAt after Close: %v, want ErrClosed", err)
			}
			if err := dev.Flush(); !errors.Is(err, ErrClosed) {
				t.Errorf("Flush after Close: %v, want ErrClosed", err)
			}
			if err := dev.Close(); !errors.Is(err, ErrClosed) {
				t.Errorf("second Close: %v, want ErrClosed", err)
			}
		})
	}
}

func TestMem(t *testing.T) {
	m := NewMem(1024)
	if _, err := m.WriteAt([]byte("abc"), 10); err != nil {
		t.Fatal(err)
	}
	b := m.Bytes()
	if len(b) != 1024 || string(b[10:13]) != "abc" {
		t.Fatalf("Bytes() = len %d, [10:13] %q", len(b), b[10:13])
	}
	b[10] = 'X' // Bytes is a copy
	got := make([]byte, 1)
	if _, err := m.ReadAt(got, 10); err != nil || got[0] != 'a' {
		t.Fatalf("ReadAt after changing Bytes() copy = %q, %v", got, err)
	}
	p := []byte("xyz")
	if _, err := m.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	p[0] = 'Q' // WriteAt keeps no reference
	if m.Bytes()[0] != 'x' {
		t.Fatal("WriteAt kept a reference to its buffer")
	}

	from := NewMemFrom([]byte("hello"))
	if from.Size() != 5 || string(from.Bytes()) != "hello" {
		t.Fatalf("NewMemFrom: size %d, %q", from.Size(), from.Bytes())
	}
	if NewMem(0).Size() != 0 {
		t.Fatal("NewMem(0) not empty")
	}
}
