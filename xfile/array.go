package xfile

import "fmt"

// MaxRecordSize is the largest record an Array accepts.
const MaxRecordSize = 1 << 20

// Array is a growable array of fixed-size records stored in a File (the
// "xfarray" of XFS online repair). Record i lives at byte offset
// i*RecordSize() of the file, so an Array of 100M 32-byte records is a
// 3.2 GB mapping and costs no Go heap. Like File, it is not safe for
// concurrent use.
//
// Invariant: every page under records [0, Len()) is reserved (see file.go),
// so Get, Set, and Sort access the mapping directly and cannot fault.
type Array struct {
	f  *File
	rs int64
	n  uint64
	// maxLen is the most records the File can hold.
	maxLen uint64
	// opts made f (SortBuffered makes its successor alike).
	opts Options
}

// NewArray creates an Array of recSize-byte records on a new File made with
// opts. The Array owns the File; Close closes it.
func NewArray(opts Options, recSize int) (*Array, error) {
	if opts.Name == "" {
		opts.Name = "xfarray"
	}
	if recSize <= 0 || recSize > MaxRecordSize {
		return nil, fmt.Errorf("%s: record size %d not in [1, %d]: %w",
			label(opts.Name), recSize, MaxRecordSize, ErrRecordSize)
	}
	f, err := New(opts)
	if err != nil {
		return nil, err
	}
	return &Array{
		f:      f,
		rs:     int64(recSize),
		maxLen: uint64(MaxSize / int64(recSize)),
		opts:   opts,
	}, nil
}

// Len returns the number of records.
func (a *Array) Len() uint64 { return a.n }

// RecordSize returns the size of each record in bytes.
func (a *Array) RecordSize() int { return int(a.rs) }

// Stat reports the memory used by the underlying File.
func (a *Array) Stat() (Stats, error) { return a.f.Stat() }

func (a *Array) checkRec(op string, rec []byte) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	if int64(len(rec)) != a.rs {
		return fmt.Errorf("%s: %s: record of %d bytes, want %d: %w",
			a.f.name, op, len(rec), a.rs, ErrRecordSize)
	}
	return nil
}

func (a *Array) indexErr(op string, i uint64) error {
	return fmt.Errorf("%s: %s: index %d, length %d: %w", a.f.name, op, i, a.n, ErrRange)
}

// Append adds rec (exactly RecordSize bytes) at the end and returns its
// index. The error wraps ErrNoSpace if the file cannot grow.
func (a *Array) Append(rec []byte) (uint64, error) {
	if err := a.checkRec("append", rec); err != nil {
		return 0, err
	}
	i := a.n
	if i >= a.maxLen {
		return 0, a.indexErr("append", i)
	}
	off := int64(i) * a.rs
	end := off + a.rs
	f := a.f
	if end > int64(len(f.mem)) {
		if err := f.Grow(end); err != nil {
			return 0, err
		}
	}
	if err := f.reserve(off, end); err != nil {
		return 0, err
	}
	copy(f.mem[off:end], rec)
	a.n++
	return i, nil
}

// Get copies record i into dst, which must be exactly RecordSize bytes.
func (a *Array) Get(i uint64, dst []byte) error {
	if err := a.checkRec("get", dst); err != nil {
		return err
	}
	if i >= a.n {
		return a.indexErr("get", i)
	}
	off := int64(i) * a.rs
	copy(dst, a.f.mem[off:off+a.rs])
	return nil
}

// Set overwrites record i with rec, which must be exactly RecordSize bytes.
func (a *Array) Set(i uint64, rec []byte) error {
	if err := a.checkRec("set", rec); err != nil {
		return err
	}
	if i >= a.n {
		return a.indexErr("set", i)
	}
	off := int64(i) * a.rs
	copy(a.f.mem[off:off+a.rs], rec)
	return nil
}

// Iterate calls fn for records 0, 1, ... in index order until fn returns
// false or the end is reached. rec is a copy in a buffer that Iterate
// reuses for every call: fn must not retain it, but may modify the Array (Set, Append,
// Truncate); records appended during the iteration are visited too, and a
// Truncate ends it early.
func (a *Array) Iterate(fn func(i uint64, rec []byte) bool) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	rec := make([]byte, a.rs)
	for i := uint64(0); i < a.n; i++ {
		off := int64(i) * a.rs
		copy(rec, a.f.mem[off:off+a.rs])
		if !fn(i, rec) {
			return nil
		}
		if a.f.osf == nil {
			return ErrClosed
		}
	}
	return nil
}

// Truncate shortens the array to n records and gives the storage of the
// removed ones back to the system (see File.Discard). n greater than Len is
// an error wrapping ErrRange.
func (a *Array) Truncate(n uint64) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	if n > a.n {
		return a.indexErr("truncate", n)
	}
	if n == a.n {
		return nil
	}
	off := int64(n) * a.rs
	if err := a.f.Discard(off, int64(a.n)*a.rs-off); err != nil {
		return err
	}
	a.n = n
	return nil
}

// Sort sorts the records in place, in the mapping, by less. It uses O(log n)
// stack and one record-sized buffer of heap, and takes O(n log n) time on
// every input (see sort.go). It is not stable.
//
// less receives slices aliasing records in the mapping: it must not modify
// or retain them, and must not call methods of the Array. If less is not a
// strict weak order the result is unsorted, but still a permutation.
func (a *Array) Sort(less func(a, b []byte) bool) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	sortRecords(a.f.mem, int(a.rs), int(a.n), less)
	return nil
}

// Close releases the Array's File and all its storage.
func (a *Array) Close() error { return a.f.Close() }
