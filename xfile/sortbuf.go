package xfile

import (
	"bytes"
	"fmt"
	"io"
)

// SortBuffered sorts the records as Sort does, by less, without touching
// the mapping: it reads runs of records into buf (pread), sorts each there
// with Sort's introsort and writes it back (pwrite) unless it was in order
// already, then, if there was more than one run, merges the runs into a
// new File (made with the Array's Options) that replaces the Array's.
// Nothing of the array enters the process's resident set: what the sort
// keeps resident is buf (at least two records; a few MiB is plenty) and
// the kernel's page cache holds the rest, as it holds any file's. Like
// Sort it is not stable within a run; the merge keeps runs' order for
// records less finds equal. A sorted array costs one pass of reads. (With
// more runs than buf holds records, the runs are merged by Sort, in the
// mapping.)
//
// less receives slices aliasing buf; the rules of Sort apply. The Array
// must not be used by other goroutines meanwhile. On error the records
// may be permuted but none is lost.
func (a *Array) SortBuffered(less func(a, b []byte) bool, buf []byte) error {
	rs := int(a.rs)
	return a.sortBuffered(less, buf, len(buf)/rs, func(b []byte, cnt int) {
		sortRecords(b, rs, cnt, less)
	})
}

// SortBufferedKey is SortBuffered for records that compare by their first
// keyLen bytes as unsigned bytes (bytes.Compare), then, on equal keys, by
// tie (nil: records with equal keys come in any order). Its runs are
// sorted by a radix sort on the key bytes (radix.go), without
// comparisons, in one half of buf with the other half as scratch, so buf
// must hold at least four records. Keys whose leading bytes are shared,
// as big-endian inode and block numbers' are, sort several times faster
// than by SortBuffered.
func (a *Array) SortBufferedKey(keyLen int, tie func(a, b []byte) int, buf []byte) error {
	rs := int(a.rs)
	if keyLen < 1 || keyLen > rs {
		return fmt.Errorf("%s: sort: a key of %d bytes in %d-byte records: %w", a.f.name, keyLen, rs, ErrRecordSize)
	}
	less := func(x, y []byte) bool {
		if c := bytes.Compare(x[:keyLen], y[:keyLen]); c != 0 || tie == nil {
			return c < 0
		}
		return tie(x, y) < 0
	}
	half := len(buf) / 2 / rs * rs
	return a.sortBuffered(less, buf, half/rs, func(b []byte, cnt int) {
		radixSortRecords(b, buf[half:], rs, cnt, keyLen, tie)
	})
}

// sortBuffered sorts runs of per records in buf with sortRun, then merges
// them by less.
func (a *Array) sortBuffered(less func(a, b []byte) bool, buf []byte, per int, sortRun func(b []byte, cnt int)) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	rs := int(a.rs)
	if per < 2 {
		return fmt.Errorf("%s: sort: a buffer of %d bytes for %d-byte records: %w", a.f.name, len(buf), rs, ErrRecordSize)
	}
	n := a.n
	if n < 2 {
		return nil
	}
	// Pass 1: sort the runs in place.
	var nruns uint64
	inOrder := true
	last := make([]byte, rs) // the previous run's last record
	for lo := uint64(0); lo < n; lo += uint64(per) {
		cnt := int(min(uint64(per), n-lo))
		b := buf[:cnt*rs]
		if err := a.readAt(b, lo); err != nil {
			return err
		}
		sorted := true
		for i := 1; i < cnt && sorted; i++ {
			sorted = !less(b[i*rs:(i+1)*rs], b[(i-1)*rs:i*rs])
		}
		if lo > 0 && (!sorted || less(b[:rs], last)) {
			inOrder = false
		}
		if !sorted {
			sortRun(b, cnt)
			if err := a.writeAt(b, lo); err != nil {
				return err
			}
		}
		copy(last, b[(cnt-1)*rs:])
		nruns++
	}
	if inOrder || nruns == 1 {
		return nil
	}
	// Pass 2: merge the runs into a new file. buf is cut into a read
	// window per run and an output window.
	win := len(buf) / int(nruns+1) / rs // records per window
	if win < 1 {
		// More runs than buf has records: sort in the mapping.
		return a.Sort(less)
	}
	nf, err := New(a.opts)
	if err != nil {
		return err
	}
	size := int64(n) * a.rs
	if err := nf.Grow(size); err == nil {
		err = nf.reserve(0, size)
	}
	if err != nil {
		nf.Close()
		return err
	}
	ms := make([]mergeRun, nruns)
	for i := range ms {
		r := &ms[i]
		r.next = uint64(i) * uint64(per)
		r.end = min(r.next+uint64(per), n)
		r.buf = buf[i*win*rs : (i+1)*win*rs]
		if err := a.fill(r); err != nil {
			nf.Close()
			return err
		}
	}
	// A binary heap of run numbers by head record (ties: lower run).
	h := make([]int, 0, nruns)
	head := func(i int) []byte { return ms[i].buf[ms[i].i*rs : (ms[i].i+1)*rs] }
	before := func(x, y int) bool {
		hx, hy := head(x), head(y)
		if less(hx, hy) {
			return true
		}
		return x < y && !less(hy, hx)
	}
	down := func(j int) {
		for {
			c := 2*j + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && before(h[c+1], h[c]) {
				c++
			}
			if !before(h[c], h[j]) {
				return
			}
			h[j], h[c] = h[c], h[j]
			j = c
		}
	}
	for i := range ms {
		h = append(h, i)
	}
	for j := len(h)/2 - 1; j >= 0; j-- {
		down(j)
	}
	out := buf[int(nruns)*win*rs : int(nruns+1)*win*rs]
	o, written := 0, int64(0)
	for len(h) > 0 {
		top := h[0]
		copy(out[o*rs:], head(top))
		if o++; o == win {
			if _, err := nf.osf.WriteAt(out, written); err != nil {
				nf.Close()
				return nf.wrapErr("write", err)
			}
			written += int64(len(out))
			o = 0
		}
		r := &ms[top]
		if r.i++; r.i == r.n {
			if r.next == r.end {
				h[0] = h[len(h)-1]
				h = h[:len(h)-1]
			} else if err := a.fill(r); err != nil {
				nf.Close()
				return err
			}
		}
		down(0)
	}
	if o > 0 {
		if _, err := nf.osf.WriteAt(out[:o*rs], written); err != nil {
			nf.Close()
			return nf.wrapErr("write", err)
		}
	}
	a.f.Close()
	a.f = nf
	return nil
}

// mergeRun is a run being merged: records [i, n) of buf, then [next, end)
// of the array.
type mergeRun struct {
	buf       []byte
	i, n      int
	next, end uint64
}

// fill reads the run's next records into its window.
func (a *Array) fill(r *mergeRun) error {
	cnt := min(uint64(len(r.buf))/uint64(a.rs), r.end-r.next)
	if err := a.readAt(r.buf[:cnt*uint64(a.rs)], r.next); err != nil {
		return err
	}
	r.i, r.n = 0, int(cnt)
	r.next += cnt
	return nil
}

// readAt reads records from record i on into b (whole records) with
// pread: the records are reserved, so no hole can short it.
func (a *Array) readAt(b []byte, i uint64) error {
	if _, err := a.f.osf.ReadAt(b, int64(i)*a.rs); err != nil && err != io.EOF {
		return a.f.wrapErr("read", err)
	} else if err == io.EOF {
		return a.f.wrapErr("read", io.ErrUnexpectedEOF)
	}
	return nil
}

// writeAt writes whole records from record i on with pwrite.
func (a *Array) writeAt(b []byte, i uint64) error {
	if _, err := a.f.osf.WriteAt(b, int64(i)*a.rs); err != nil {
		return a.f.wrapErr("write", err)
	}
	return nil
}

// AppendRecords adds the records of recs (a whole number of them) at the
// end with one write (pwrite), not through the mapping: nothing enters
// the process's resident set. It returns the index of the first. The
// error wraps ErrNoSpace if the file cannot grow.
func (a *Array) AppendRecords(recs []byte) (uint64, error) {
	if a.f.osf == nil {
		return 0, ErrClosed
	}
	if int64(len(recs))%a.rs != 0 {
		return 0, fmt.Errorf("%s: append: %d bytes are no whole number of %d-byte records: %w", a.f.name, len(recs), a.rs, ErrRecordSize)
	}
	k := uint64(int64(len(recs)) / a.rs)
	i := a.n
	if k == 0 {
		return i, nil
	}
	if k > a.maxLen-i {
		return 0, a.indexErr("append", i+k)
	}
	off := int64(i) * a.rs
	end := off + int64(len(recs))
	f := a.f
	if end > int64(len(f.mem)) {
		if err := f.Grow(end); err != nil {
			return 0, err
		}
	}
	if err := f.reserve(off, end); err != nil {
		return 0, err
	}
	if err := a.writeAt(recs, i); err != nil {
		return 0, err
	}
	a.n += k
	return i, nil
}

// ReadRecords copies records i, i+1, ... into dst (as many whole records
// as it holds, up to the end) with one read (pread), not through the
// mapping, and returns how many it copied.
func (a *Array) ReadRecords(i uint64, dst []byte) (int, error) {
	if a.f.osf == nil {
		return 0, ErrClosed
	}
	if i > a.n {
		return 0, a.indexErr("read", i)
	}
	k := min(uint64(int64(len(dst))/a.rs), a.n-i)
	if k == 0 {
		return 0, nil
	}
	if err := a.readAt(dst[:int64(k)*a.rs], i); err != nil {
		return 0, err
	}
	return int(k), nil
}
