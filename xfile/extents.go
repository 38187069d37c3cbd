package xfile

import "sort"

// extentSet is a set of disjoint, non-adjacent, half-open byte ranges
// [start, end), kept sorted by start. File uses it to remember which pages of
// the temporary file have blocks reserved (see reserve in file.go); every
// range it holds is page-aligned.
//
// The set stays tiny in practice: appends extend one range from offset 0, and
// only Discard splits ranges. All operations are O(log k + changed ranges).
type extentSet struct {
	r     []extent
	bytes int64 // total bytes covered
}

type extent struct{ start, end int64 }

// find returns the index of the first range whose end is > off, i.e. the
// only range that could contain off, or len(r).
func (s *extentSet) find(off int64) int {
	return sort.Search(len(s.r), func(i int) bool { return s.r[i].end > off })
}

// covering returns the range containing [start, end) entirely, if there is one.
func (s *extentSet) covering(start, end int64) (extent, bool) {
	i := s.find(start)
	if i < len(s.r) && s.r[i].start <= start && end <= s.r[i].end {
		return s.r[i], true
	}
	return extent{}, false
}

// walk calls fn for consecutive pieces of [start, end), each either wholly
// inside the set (in == true) or wholly outside it.
func (s *extentSet) walk(start, end int64, fn func(start, end int64, in bool) error) error {
	for i := s.find(start); start < end; i++ {
		if i >= len(s.r) || s.r[i].start >= end {
			return fn(start, end, false)
		}
		r := s.r[i]
		if start < r.start {
			if err := fn(start, r.start, false); err != nil {
				return err
			}
			start = r.start
		}
		stop := min(end, r.end)
		if err := fn(start, stop, true); err != nil {
			return err
		}
		start = stop
	}
	return nil
}

// add inserts [start, end), merging with overlapping or adjacent ranges.
func (s *extentSet) add(start, end int64) {
	if start >= end {
		return
	}
	// First range that overlaps or touches start.
	i := sort.Search(len(s.r), func(i int) bool { return s.r[i].end >= start })
	j := i
	for j < len(s.r) && s.r[j].start <= end {
		start = min(start, s.r[j].start)
		end = max(end, s.r[j].end)
		s.bytes -= s.r[j].end - s.r[j].start
		j++
	}
	s.bytes += end - start
	if i == j {
		s.r = append(s.r, extent{})
		copy(s.r[i+1:], s.r[i:])
		s.r[i] = extent{start, end}
		return
	}
	s.r[i] = extent{start, end}
	s.r = append(s.r[:i+1], s.r[j:]...)
}

// remove deletes [start, end) from the set, splitting ranges as needed.
func (s *extentSet) remove(start, end int64) {
	if start >= end {
		return
	}
	i := s.find(start)
	var keep []extent // at most two: the pieces left of start and right of end
	j := i
	for j < len(s.r) && s.r[j].start < end {
		r := s.r[j]
		s.bytes -= r.end - r.start
		if r.start < start {
			keep = append(keep, extent{r.start, start})
			s.bytes += start - r.start
		}
		if r.end > end {
			keep = append(keep, extent{end, r.end})
			s.bytes += r.end - end
		}
		j++
	}
	if i == j {
		return
	}
	tail := append(keep, s.r[j:]...)
	s.r = append(s.r[:i], tail...)
}
