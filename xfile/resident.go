package xfile

import "golang.org/x/sys/unix"

type mmapView = []byte

// DropResident takes the whole pages of [off, off+n) out of the
// process's resident set (madvise MADV_DONTNEED on the shared mapping):
// their data stays in the file and is read back, from memory or from its
// directory's filesystem, on the next access. It is for a caller that
// streams through a large file and will not touch a range again soon:
// what stays resident is its working set, and the kernel can write the
// rest back and reclaim it as it does any file's pages (a memfd's go to
// swap, if any). The range is clipped to the mapping; pages only partly
// inside it are kept, in every view of the file. Nothing changes for the callers of Load, Bytes or
// the Array methods.
func (f *File) DropResident(off, n int64) error {
	if f.osf == nil {
		return ErrClosed
	}
	if off < 0 || n <= 0 {
		return nil
	}
	start := roundUp(off, pageSize)
	// The previous, smaller views (kept until Close) map the same pages:
	// pages touched through them are resident there too.
	views := make([]mmapView, 0, len(f.views)+1)
	for _, m := range f.views {
		views = append(views, m)
	}
	for _, m := range append(views, f.mem) {
		end := min(off+n, int64(len(m))) / pageSize * pageSize
		if start >= end {
			continue
		}
		if err := unix.Madvise(m[start:end], unix.MADV_DONTNEED); err != nil {
			return err
		}
	}
	return nil
}

// DropResident takes the pages of records [lo, hi) out of the process's
// resident set (see File.DropResident).
func (a *Array) DropResident(lo, hi uint64) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	hi = min(hi, a.n)
	if lo >= hi {
		return nil
	}
	return a.f.DropResident(int64(lo)*a.rs, int64(hi-lo)*a.rs)
}

// SortResident is Sort (the same in-place introsort, the same order)
// keeping the array's resident set small: every `every` comparisons it
// takes the array's pages out of the resident set (DropResident), so
// that what stays resident is what the last comparisons touched, not the
// whole array: quicksort's partitions sweep their ranges in order, so
// the pages come back as it moves on. every < 1 means Sort.
func (a *Array) SortResident(less func(a, b []byte) bool, every int) error {
	if a.f.osf == nil {
		return ErrClosed
	}
	if every < 1 {
		return a.Sort(less)
	}
	var err error
	n := 0
	size := int64(a.n) * a.rs
	sortRecords(a.f.mem, int(a.rs), int(a.n), func(x, y []byte) bool {
		if n++; n >= every {
			n = 0
			if e := a.f.DropResident(0, size); e != nil && err == nil {
				err = e
			}
		}
		return less(x, y)
	})
	if err != nil {
		return err
	}
	return a.f.DropResident(0, size)
}
