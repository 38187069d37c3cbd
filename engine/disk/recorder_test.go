package disk

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// sectors renders an image one character per sector: the sector's byte if
// the sector is uniform, '?' if it is mixed.
func sectors(img []byte) string {
	var b strings.Builder
	for off := 0; off < len(img); off += SectorSize {
		s := img[off:min(off+SectorSize, len(img))]
		if bytes.Count(s, s[:1]) == len(s) {
			b.WriteByte(s[0])
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

func fill(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n) }

// TestRecorderCrashImageExact spells out, sector by sector, what a crash
// at each flush leaves in the drop-all and keep-all modes.
func TestRecorderCrashImageExact(t *testing.T) {
	r := NewRecorder(fill('.', 4*SectorSize))
	type op struct {
		sector int
		n      int // sectors; 0 means flush
		c      byte
	}
	script := []op{
		{0, 1, 'a'},
		{0, 0, 0}, // flush 1
		{1, 2, 'b'},
		{0, 1, 'c'}, // overwrites a durable write
		{0, 0, 0},   // flush 2
		{3, 1, 'd'},
		{3, 1, 'e'}, // overlaps an in-flight write
	}
	for _, o := range script {
		if o.n == 0 {
			if err := r.Flush(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := r.WriteAt(fill(o.c, o.n*SectorSize), int64(o.sector*SectorSize)); err != nil {
			t.Fatal(err)
		}
	}
	if r.Flushes() != 2 || r.FlushPoints() != 2 || r.Ops() != len(script) {
		t.Fatalf("Flushes %d, FlushPoints %d, Ops %d; want 2, 2, %d", r.Flushes(), r.FlushPoints(), r.Ops(), len(script))
	}
	cases := []struct {
		k          int
		inFlight   int
		drop, keep string
	}{
		{0, 1, "....", "a..."},
		{1, 2, "a...", "cbb."},
		{2, 2, "cbb.", "cbbe"},
	}
	for _, tc := range cases {
		if got := r.InFlight(tc.k); got != tc.inFlight {
			t.Errorf("InFlight(%d) = %d, want %d", tc.k, got, tc.inFlight)
		}
		if got := sectors(r.CrashImage(tc.k, CrashDropAll, nil)); got != tc.drop {
			t.Errorf("CrashImage(%d, drop-all) = %q, want %q", tc.k, got, tc.drop)
		}
		if got := sectors(r.CrashImage(tc.k, CrashKeepAll, nil)); got != tc.keep {
			t.Errorf("CrashImage(%d, keep-all) = %q, want %q", tc.k, got, tc.keep)
		}
	}
	// Random at k=2: sectors 0-2 are durable; sector 3 is '.', 'd' or 'e'
	// (one-sector writes cannot tear), and every one of those occurs.
	seen := map[string]bool{}
	for seed := range uint64(100) {
		got := sectors(r.CrashImage(2, CrashRandom, rand.New(rand.NewPCG(seed, 0))))
		if got != "cbb." && got != "cbbd" && got != "cbbe" {
			t.Fatalf("CrashImage(2, random, seed %d) = %q", seed, got)
		}
		seen[got] = true
	}
	if len(seen) != 3 {
		t.Errorf("random crashes at flush 2 produced only %v", seen)
	}
	if got := sectors(r.Image()); got != "cbbe" {
		t.Errorf("Image() = %q, want %q", got, "cbbe")
	}
	if got := sectors(r.Initial()); got != "...." {
		t.Errorf("Initial() = %q, want %q", got, "....")
	}
}

// recWrite is one write of a generated scenario.
type recWrite struct {
	off  int64
	data []byte // one repeated byte, unique to the write
}

// scenario drives a Recorder through phases of writes separated by
// flushes, with no flush after the last phase. Writes within a phase never
// overlap, so each in-flight write can be judged on its own. It returns
// the writes of each phase and snaps[j], the image right after flush j
// (snaps[0] the initial image, snaps[len(phases)] the final image).
func scenario(t *testing.T, r *Recorder, phases, perPhase int, rng *rand.Rand) (writes [][]recWrite, snaps [][]byte) {
	t.Helper()
	const block = 4096
	blocks := int(r.Size() / block)
	snaps = append(snaps, r.Image())
	next := byte(1)
	for p := range phases {
		var phase []recWrite
		for i, b := range rng.Perm(blocks)[:perPhase] {
			w := recWrite{off: int64(b * block), data: fill(next, block)}
			if i == 0 {
				// One unaligned write per phase, inside its block:
				// sector boundaries 1024 and 1536 fall inside it.
				w = recWrite{off: int64(b*block + 700), data: fill(next, 1000)}
			}
			if i == 1 {
				// And one inside a single sector, which cannot tear.
				w = recWrite{off: int64(b*block + 10), data: fill(next, 100)}
			}
			next++
			if _, err := r.WriteAt(w.data, w.off); err != nil {
				t.Fatal(err)
			}
			phase = append(phase, w)
		}
		writes = append(writes, phase)
		if p < phases-1 {
			if err := r.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		snaps = append(snaps, r.Image())
	}
	return writes, snaps
}

func TestRecorderCrashImageModes(t *testing.T) {
	const phases, perPhase = 6, 8
	initial := fill(0xEE, 64*4096)
	r := NewRecorder(initial)
	_, snaps := scenario(t, r, phases, perPhase, rand.New(rand.NewPCG(1, 1)))
	if r.Flushes() != phases-1 || r.Ops() != phases*perPhase+phases-1 {
		t.Fatalf("Flushes %d, Ops %d", r.Flushes(), r.Ops())
	}
	for k := 0; k <= r.FlushPoints(); k++ {
		if got := r.InFlight(k); got != perPhase {
			t.Errorf("InFlight(%d) = %d, want %d", k, got, perPhase)
		}
		if !bytes.Equal(r.CrashImage(k, CrashDropAll, nil), snaps[k]) {
			t.Errorf("CrashImage(%d, drop-all) differs from the image at flush %d", k, k)
		}
		// keep-all at flush k is the image at flush k+1 (the final image
		// for the last k): everything up to the next flush, nothing after.
		if !bytes.Equal(r.CrashImage(k, CrashKeepAll, nil), snaps[k+1]) {
			t.Errorf("CrashImage(%d, keep-all) differs from the image at flush %d", k, k+1)
		}
	}
	if !bytes.Equal(snaps[0], initial) || !bytes.Equal(snaps[phases], r.Image()) {
		t.Fatal("scenario snapshots are off")
	}
}

// TestRecorderCrashRandom checks every byte of random crash images: outside
// the in-flight writes the image is what was durable at flush k; each
// in-flight write is absent, whole, or a prefix cut at a sector boundary
// strictly inside it with the old contents after the cut.
func TestRecorderCrashRandom(t *testing.T) {
	const phases, perPhase, seeds = 4, 8, 60
	r := NewRecorder(fill(0xEE, 64*4096))
	writes, snaps := scenario(t, r, phases, perPhase, rand.New(rand.NewPCG(2, 2)))

	// cuts[class] collects the landed lengths seen for writes of each
	// shape: unaligned (700+1000), one sector (10+100), whole block.
	cuts := map[string]map[int]bool{"unaligned": {}, "one-sector": {}, "block": {}}
	for k := 0; k <= r.FlushPoints(); k++ {
		for seed := range uint64(seeds) {
			img := r.CrashImage(k, CrashRandom, rand.New(rand.NewPCG(seed, uint64(k))))
			// Start from the durable image and lay over what each
			// in-flight write left; the result must be img exactly.
			want := bytes.Clone(snaps[k])
			for i, w := range writes[k] {
				got := img[w.off : w.off+int64(len(w.data))]
				c := 0
				for c < len(got) && got[c] == w.data[0] {
					c++
				}
				end := w.off + int64(c)
				if c != 0 && c != len(got) && end%SectorSize != 0 {
					t.Fatalf("k=%d seed=%d write %d at %d: torn after %d bytes, not on a sector boundary", k, seed, i, w.off, c)
				}
				copy(want[w.off:], w.data[:c])
				class := "block"
				switch len(w.data) {
				case 1000:
					class = "unaligned"
				case 100:
					class = "one-sector"
				}
				cuts[class][c] = true
			}
			if !bytes.Equal(img, want) {
				t.Fatalf("k=%d seed=%d: image has bytes that are neither durable nor a sector-aligned prefix of an in-flight write", k, seed)
			}
		}
	}
	wantCuts := map[string][]int{
		"unaligned":  {0, 1024 - 700, 1536 - 700, 1000},
		"one-sector": {0, 100},
		"block":      {0, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096},
	}
	for class, want := range wantCuts {
		if len(cuts[class]) != len(want) {
			t.Errorf("%s writes landed %v bytes, want exactly %v", class, cuts[class], want)
		}
		for _, c := range want {
			if !cuts[class][c] {
				t.Errorf("%s writes never landed %d bytes (saw %v)", class, c, cuts[class])
			}
		}
	}
}

func TestRecorderCrashRandomDeterministic(t *testing.T) {
	r := NewRecorder(fill(0, 64*4096))
	scenario(t, r, 3, 16, rand.New(rand.NewPCG(3, 3)))
	images := map[string]bool{}
	for seed := range uint64(20) {
		a := r.CrashImage(1, CrashRandom, rand.New(rand.NewPCG(seed, 9)))
		b := r.CrashImage(1, CrashRandom, rand.New(rand.NewPCG(seed, 9)))
		if !bytes.Equal(a, b) {
			t.Fatalf("seed %d gave two different images", seed)
		}
		images[string(a)] = true
	}
	if len(images) < 10 {
		t.Errorf("20 seeds gave only %d distinct images", len(images))
	}
	if !bytes.Equal(r.CrashImage(1, CrashRandom, nil), r.CrashImage(1, CrashRandom, nil)) {
		t.Error("nil rng is not deterministic")
	}
}

func TestRecorderIsolation(t *testing.T) {
	r := NewRecorder(fill('.', 2*SectorSize))
	p := fill('a', SectorSize)
	if _, err := r.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	p[0] = 'X' // the record keeps its own copy
	img := r.CrashImage(0, CrashKeepAll, nil)
	if sectors(img) != "a." {
		t.Fatalf("keep-all = %q, want %q", sectors(img), "a.")
	}
	img[0] = 'Y' // CrashImage returns a fresh image
	if sectors(r.CrashImage(0, CrashKeepAll, nil)) != "a." {
		t.Fatal("changing a crash image changed the recorder")
	}

	// Refused operations are not recorded.
	ops := r.Ops()
	if _, err := r.WriteAt(p, SectorSize+1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("WriteAt past end = %v", err)
	}
	r.Close()
	if _, err := r.WriteAt(p, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteAt after Close = %v", err)
	}
	if err := r.Flush(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close = %v", err)
	}
	if r.Ops() != ops || r.Flushes() != 0 {
		t.Fatalf("refused operations were recorded: Ops %d → %d, Flushes %d", ops, r.Ops(), r.Flushes())
	}
	// The log outlives Close.
	if sectors(r.CrashImage(0, CrashKeepAll, nil)) != "a." {
		t.Fatal("CrashImage after Close lost the log")
	}
}

func TestRecorderCrashImagePanics(t *testing.T) {
	r := NewRecorder(make([]byte, SectorSize))
	r.Flush()
	cases := []struct {
		k    int
		mode CrashMode
	}{
		{-1, CrashDropAll},
		{2, CrashKeepAll},
		{0, CrashMode(42)},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("k=%d,%v", tc.k, tc.mode), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("CrashImage did not panic")
				}
			}()
			r.CrashImage(tc.k, tc.mode, nil)
		})
	}
}

func TestTornLen(t *testing.T) {
	// Every possible landing of a write, by how it sits on sectors.
	cases := []struct {
		off  int64
		n    int
		want []int
	}{
		{0, 0, []int{0}},
		{0, 512, []int{0, 512}},
		{100, 200, []int{0, 200}},
		{500, 12, []int{0, 12}},
		{500, 24, []int{12}},
		{0, 1024, []int{512}},
		{0, 4096, []int{512, 1024, 1536, 2048, 2560, 3072, 3584}},
		{700, 1000, []int{324, 836}},
		{1 << 40, 1025, []int{512, 1024}},
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for _, tc := range cases {
		seen := map[int]bool{}
		for range 200 {
			seen[tornLen(tc.off, tc.n, rng)] = true
		}
		if len(seen) != len(tc.want) {
			t.Errorf("tornLen(%d, %d) gave %v, want %v", tc.off, tc.n, seen, tc.want)
			continue
		}
		for _, c := range tc.want {
			if !seen[c] {
				t.Errorf("tornLen(%d, %d) gave %v, want %v", tc.off, tc.n, seen, tc.want)
				break
			}
		}
	}
}
