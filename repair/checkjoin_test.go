package repair

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestCheckJoinSeeker compares the merge joins' look-ups (a seeker over
// a sorted xfile stream: run length, last of the run, a match in the
// run, keys asked out of order) with a Go map built from the same
// records, and the in-place sort with slices.Sort, across the resident
// set drops (records spanning many times dropPages pages).
func TestCheckJoinSeeker(t *testing.T) {
	defer func(d int) { dropPages = d }(dropPages)
	dropPages = 4
	st := &checkState{tempDir: t.TempDir()}
	defer st.close()
	n := 30000
	if testing.Short() {
		n = 10000
	}
	r := rand.New(rand.NewPCG(1, 2))
	recs := newRecArr(st, "test", csumCodec)
	var want []csumRec
	for i := 0; i < n; i++ {
		c := csumRec{format.BlockNr(r.IntN(n / 3)), uint64(i)}
		recs.add(c)
		want = append(want, c)
	}
	recs.sortBy(8, nil)
	slices.SortStableFunc(want, func(a, b csumRec) int { return cmpBlock(a.start, b.start) })
	if got := recs.len(); got != uint64(n) {
		t.Fatalf("len %d, want %d", got, n)
	}
	runs := map[format.BlockNr][]uint64{}
	for i := range want {
		if g := recs.at(uint64(i)); g.start != want[i].start {
			t.Fatalf("record %d: start %d, want %d", i, g.start, want[i].start)
		}
		runs[want[i].start] = append(runs[want[i].start], want[i].n)
	}
	// Records of one start are not in a stable order: the last of a run
	// is one of the run.
	recs.all(func(c csumRec) {
		if !slices.Contains(runs[c.start], c.n) {
			t.Fatalf("record %d+%d was not added", c.start, c.n)
		}
	})
	s := newSeeker(recs, func(c csumRec) format.BlockNr { return c.start }, cmpBlock)
	check := func(k format.BlockNr) {
		t.Helper()
		if got := s.seek(k); got != uint64(len(runs[k])) {
			t.Fatalf("seek %d: %d records, want %d", k, got, len(runs[k]))
		}
		last, ok := s.last(k)
		if ok != (len(runs[k]) > 0) || ok && !slices.Contains(runs[k], last.n) {
			t.Fatalf("last %d: %v %v, want one of %v", k, last, ok, runs[k])
		}
		if len(runs[k]) > 0 {
			x := runs[k][len(runs[k])/2]
			if !s.any(k, func(c csumRec) bool { return c.n == x }) {
				t.Fatalf("any %d: %d not found", k, x)
			}
		}
		if s.any(k, func(c csumRec) bool { return c.n == uint64(n) }) {
			t.Fatalf("any %d: found a record never added", k)
		}
	}
	for k := format.BlockNr(0); k < format.BlockNr(n/3+2); k += format.BlockNr(1 + r.IntN(3)) {
		check(k)
		check(k) // the same key again
	}
	for range 200 { // keys out of order: a binary search back
		check(format.BlockNr(r.IntN(n/3 + 2)))
	}
	d := 0
	distinct(recs, func(c csumRec) format.BlockNr { return c.start }, cmpBlock, func(csumRec) { d++ })
	if d != len(runs) {
		t.Fatalf("distinct: %d keys, want %d", d, len(runs))
	}
	if st.err != nil {
		t.Fatal(st.err)
	}
}

// TestCheckJoinTwins: the pairing of entries with their index twins
// sorts by (directory, index, inode, hash) and then by the names
// themselves, so names of one hash are told apart.
func TestCheckJoinTwins(t *testing.T) {
	st := &checkState{tempDir: t.TempDir()}
	defer st.close()
	st.nameBuf = &nameFile{st: st}
	st.arrays = append(st.arrays, st.nameBuf)
	tw := newRecArr(st, "twins", twinCodec)
	add := func(name string, isIndex bool) {
		ref := st.nameBuf.add(name)
		ref.hash = 7 // one hash for all: only the names separate them
		tw.add(nsTwin{dir: 5, index: 1, ino: 9, name: ref, isIndex: isIndex})
	}
	add("b", false)
	add("a", true)
	add("b", true)
	add("a", false)
	add("c", false)
	tw.sortBy(32, func(a, b []byte) int {
		return slices.Compare(st.nameBuf.bytes(twinName(a)), st.nameBuf.bytes(twinName(b)))
	})
	var got []string
	tw.all(func(x nsTwin) { got = append(got, st.nameBuf.get(x.name)) })
	if want := []string{"a", "a", "b", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("sorted names %q, want %q", got, want)
	}
	if st.err != nil {
		t.Fatal(st.err)
	}
}
