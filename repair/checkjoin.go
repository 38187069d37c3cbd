package repair

import (
	"cmp"
	"encoding/binary"
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// The check's cross-reference state lives off the Go heap: what the walk
// collects of each tree goes into an xfile array of fixed-size records
// (pages the kernel can reclaim, nothing per record on the heap), in the
// walk's order, which is its tree's key order when the walk met no
// damage (and a comparison reads only trees walked without damage). The
// comparisons are merge joins of such streams: a stream sorted by the
// key another is looked up by (a few are sorted in place, by the key of
// the join) is advanced monotonically beside it, so each comparison is
// one sequential pass instead of a hash map built and probed per record.
// Key fields are stored big-endian, so that records sort as bytes.

var be = binary.BigEndian

// codec encodes a T as a record of size bytes.
type codec[T any] struct {
	size int
	put  func(b []byte, v T)
	get  func(b []byte) T
}

// recArr is a stream of T in an xfile array, created on the first add.
// An error (the temporary file cannot grow) is the check's, recorded in
// st: the array then ignores what it is given.
//
// The records never pass through the array's mapping: adds are gathered
// in a write buffer and appended with one pwrite per recWindow bytes,
// reads are served from a read window filled by pread (recWindow bytes
// while a pass moves on sequentially, a page's worth after a jump, as a
// seeker's binary search makes), and sortBy sorts in a heap buffer
// (xfile.SortBuffered). So no page of an array enters the resident set
// and none is faulted in or dropped: the kernel keeps them in the page
// cache of the temporary file, to be written back and reclaimed as it
// needs, and the check's resident memory is its buffers.
type recArr[T any] struct {
	st   *checkState
	name string
	c    codec[T]
	a    *xfile.Array
	// sorted says the array was sorted in place by its join key.
	sorted bool
	wbuf   []byte // records added, not yet appended to a
	rbuf   []byte // the read window: records [rlo, rlo+rn)
	rlo    uint64
	rn     int
}

// recWindow is the size of an array's write buffer and of its read
// window on a sequential pass; jumpWindow that of its window after a
// jump.
const (
	recWindow  = 64 << 10
	jumpWindow = 4 << 10
	recBack    = 16 // records
)

// dropPages: the entry names file leaves the resident set every
// dropPages pages it grows by.
var dropPages = 1024 // a variable for tests

func newRecArr[T any](st *checkState, name string, c codec[T]) *recArr[T] {
	r := &recArr[T]{st: st, name: name, c: c}
	st.arrays = append(st.arrays, r)
	return r
}

func (r *recArr[T]) add(v T) {
	if r.st.err != nil {
		return
	}
	if r.a == nil {
		a, err := xfile.NewArray(xfile.Options{Dir: r.st.tempDir, Name: "check " + r.name}, r.c.size)
		if err != nil && r.st.tempDir != "" {
			// No usable temporary directory: anonymous memory instead.
			a, err = xfile.NewArray(xfile.Options{Name: "check " + r.name}, r.c.size)
		}
		if err != nil {
			r.st.fail(err)
			return
		}
		r.a = a
	}
	if r.wbuf == nil {
		r.wbuf = make([]byte, 0, recWindow/r.c.size*r.c.size)
	}
	n := len(r.wbuf)
	r.wbuf = r.wbuf[:n+r.c.size]
	r.c.put(r.wbuf[n:], v)
	if len(r.wbuf)+r.c.size > cap(r.wbuf) {
		r.flush()
	}
}

// flush appends the write buffer's records to the array.
func (r *recArr[T]) flush() {
	if len(r.wbuf) == 0 || r.st.err != nil {
		return
	}
	if _, err := r.a.AppendRecords(r.wbuf); err != nil {
		r.st.fail(err)
	}
	r.wbuf = r.wbuf[:0]
}

// dropAll frees the read window and the write buffer (their records
// stay in the array).
func (r *recArr[T]) dropAll() {
	r.flush()
	r.rbuf, r.rn = nil, 0
	if len(r.wbuf) == 0 {
		r.wbuf = nil
	}
}

func (r *recArr[T]) len() uint64 {
	if r.a == nil || r.st.err != nil {
		return 0
	}
	return r.a.Len() + uint64(len(r.wbuf)/r.c.size)
}

// at returns record i (< len).
func (r *recArr[T]) at(i uint64) T {
	if i-r.rlo < uint64(r.rn) {
		o := int(i-r.rlo) * r.c.size
		return r.c.get(r.rbuf[o : o+r.c.size])
	}
	var zero T
	if r.st.err != nil {
		return zero
	}
	r.flush()
	size, from := jumpWindow, i
	if end := r.rlo + uint64(r.rn); r.rn > 0 && i >= end && i-end <= recBack {
		// A pass moving on: a large window, from a few records back (a
		// seeker reads the last of a run after passing it).
		size, from = recWindow, i-min(i, recBack)
	}
	size = max(size/r.c.size, 1) * r.c.size
	if cap(r.rbuf) < size {
		r.rbuf = make([]byte, max(size, recWindow/r.c.size*r.c.size))
	}
	r.rbuf = r.rbuf[:size]
	n, err := r.a.ReadRecords(from, r.rbuf)
	if err == nil && uint64(n) <= i-from {
		err = fmt.Errorf("check %s: record %d of %d", r.name, i, r.a.Len())
	}
	if err != nil {
		r.st.fail(err)
		r.rn = 0
		return zero
	}
	r.rlo, r.rn = from, n
	o := int(i-from) * r.c.size
	return r.c.get(r.rbuf[o : o+r.c.size])
}

// all yields the records in order.
func (r *recArr[T]) all(fn func(T)) {
	n := r.len()
	for i := uint64(0); i < n && r.st.err == nil; i++ {
		fn(r.at(i))
	}
}

// sortBy sorts the records in place by their first keyLen bytes, then by
// tie, if set (on records whose keys are equal), once.
func (r *recArr[T]) sortBy(keyLen int, tie func(a, b []byte) int) {
	if r.sorted || r.len() < 2 {
		r.sorted = true
		return
	}
	r.sorted = true
	// Sorted in the heap, run by run (a radix sort on the key bytes: the
	// keys are big-endian), and merged (xfile.SortBufferedKey): the
	// array's pages never enter the resident set, and a stream that comes
	// sorted already (the rmap records by start are, but for the few of
	// one start) costs one pass of reads.
	r.flush()
	r.rn = 0 // the window's records move
	if r.st.err != nil {
		return
	}
	if r.st.sortBuf == nil {
		r.st.sortBuf = make([]byte, sortBufSize)
	}
	if err := r.a.SortBufferedKey(keyLen, tie, r.st.sortBuf); err != nil {
		r.st.fail(err)
	}
}

// sortBufSize is the heap buffer of the check's sorts: runs of half its
// size are sorted in it (the other half is the radix sort's scratch),
// then merged.
var sortBufSize = 4 << 20 // a variable for tests

func (r *recArr[T]) close() {
	if r.a != nil {
		r.a.Close()
		r.a = nil
	}
}

// closer is any recArr, for checkState to close them all.
type closer interface {
	close()
	dropAll()
}

// seeker looks records up by a key in a stream sorted by it, for keys
// asked in ascending order (a smaller key than the last costs a binary
// search): the run of records with the key is [lo, hi).
type seeker[T any, K any] struct {
	r      *recArr[T]
	key    func(T) K
	cmp    func(a, b K) int
	i      uint64 // next record to read
	k      K
	lo, hi uint64
	valid  bool
}

func newSeeker[T any, K any](r *recArr[T], key func(T) K, cmp func(a, b K) int) *seeker[T, K] {
	return &seeker[T, K]{r: r, key: key, cmp: cmp}
}

// seek finds the run of k and returns its length.
func (s *seeker[T, K]) seek(k K) uint64 {
	if s.valid && s.cmp(k, s.k) == 0 {
		return s.hi - s.lo
	}
	n := s.r.len()
	if s.valid && s.cmp(k, s.k) < 0 {
		lo, hi := uint64(0), s.i
		for lo < hi { // first record not below k
			m := lo + (hi-lo)/2
			if s.cmp(s.key(s.r.at(m)), k) < 0 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		s.i = lo
	}
	s.valid, s.k = true, k
	for s.i < n && s.cmp(s.key(s.r.at(s.i)), k) < 0 {
		s.i++
	}
	s.lo = s.i
	for s.i < n && s.cmp(s.key(s.r.at(s.i)), k) == 0 {
		s.i++
	}
	s.hi = s.i
	return s.hi - s.lo
}

// last returns the last record of the run of k (the one a map built in
// stream order would keep), if there is one.
func (s *seeker[T, K]) last(k K) (T, bool) {
	if s.seek(k) == 0 {
		var zero T
		return zero, false
	}
	return s.r.at(s.hi - 1), true
}

// any says whether a record of the run of k satisfies f.
func (s *seeker[T, K]) any(k K, f func(T) bool) bool {
	s.seek(k)
	for i := s.lo; i < s.hi; i++ {
		if f(s.r.at(i)) {
			return true
		}
	}
	return false
}

// distinct calls fn with the last record of each run of equal keys.
func distinct[T any, K any](r *recArr[T], key func(T) K, cmp func(a, b K) int, fn func(T)) {
	n := r.len()
	for i := uint64(0); i < n && r.st.err == nil; i++ {
		v := r.at(i)
		if i+1 < n && cmp(key(r.at(i+1)), key(v)) == 0 {
			continue
		}
		fn(v)
	}
}

// The records.

var allocCodec = codec[allocRec]{size: 32,
	put: func(b []byte, v allocRec) {
		be.PutUint64(b, uint64(v.start))
		be.PutUint64(b[8:], v.n)
		be.PutUint64(b[16:], v.item.Refs)
		be.PutUint64(b[24:], v.item.Flags)
	},
	get: func(b []byte) allocRec {
		return allocRec{format.BlockNr(be.Uint64(b)), be.Uint64(b[8:]), format.ExtentItem{Refs: be.Uint64(b[16:]), Flags: be.Uint64(b[24:])}}
	}}

// rmapCodec: sorted by (start, inode, offset, tree).
var rmapCodec = codec[rmapRec]{size: 56,
	put: func(b []byte, v rmapRec) {
		be.PutUint64(b, uint64(v.start))
		be.PutUint64(b[8:], v.owner.Inode)
		be.PutUint64(b[16:], v.owner.Offset)
		be.PutUint64(b[24:], uint64(v.owner.Tree))
		be.PutUint64(b[32:], v.n)
		be.PutUint64(b[40:], v.m.Offset)
		be.PutUint64(b[48:], v.m.Count)
	},
	get: func(b []byte) rmapRec {
		n := be.Uint64(b[32:])
		return rmapRec{start: format.BlockNr(be.Uint64(b)), n: n,
			owner: format.Owner{Inode: be.Uint64(b[8:]), Offset: be.Uint64(b[16:]), Tree: format.TreeID(be.Uint64(b[24:]))},
			m:     format.RmapItem{Len: n, Offset: be.Uint64(b[40:]), Count: be.Uint64(b[48:])}}
	}}

var freeCodec = codec[freeRec]{size: 16,
	put: func(b []byte, v freeRec) { be.PutUint64(b, uint64(v.start)); be.PutUint64(b[8:], v.n) },
	get: func(b []byte) freeRec { return freeRec{format.BlockNr(be.Uint64(b)), be.Uint64(b[8:])} }}

// fextCodec: sorted by (start, inode, file block, walk order).
var fextCodec = codec[fileExt]{size: 56,
	put: func(b []byte, v fileExt) {
		be.PutUint64(b, uint64(v.fe.Start))
		be.PutUint64(b[8:], v.ino)
		be.PutUint64(b[16:], v.fb)
		be.PutUint64(b[24:], v.seq)
		be.PutUint64(b[32:], v.fe.Len)
		be.PutUint64(b[40:], v.fe.Offset)
		be.PutUint64(b[48:], v.fe.Count)
	},
	get: func(b []byte) fileExt {
		return fileExt{ino: be.Uint64(b[8:]), fb: be.Uint64(b[16:]), seq: be.Uint64(b[24:]),
			fe: format.FileExtent{Start: format.BlockNr(be.Uint64(b)), Len: be.Uint64(b[32:]), Offset: be.Uint64(b[40:]), Count: be.Uint64(b[48:])}}
	}}

// csumRec is a checksum item: its extent's start and its checksum count.
type csumRec struct {
	start format.BlockNr
	n     uint64
}

var csumCodec = codec[csumRec]{size: 16,
	put: func(b []byte, v csumRec) { be.PutUint64(b, uint64(v.start)); be.PutUint64(b[8:], v.n) },
	get: func(b []byte) csumRec { return csumRec{format.BlockNr(be.Uint64(b)), be.Uint64(b[8:])} }}

var inodeCodec = codec[nsInode]{size: 32,
	put: func(b []byte, v nsInode) {
		be.PutUint64(b, v.ino)
		be.PutUint32(b[8:], v.mode)
		be.PutUint32(b[12:], v.nlink)
		be.PutUint64(b[16:], v.size)
		be.PutUint64(b[24:], v.blocks)
	},
	get: func(b []byte) nsInode {
		return nsInode{ino: be.Uint64(b), mode: be.Uint32(b[8:]), nlink: be.Uint32(b[12:]), size: be.Uint64(b[16:]), blocks: be.Uint64(b[24:])}
	}}

// fileBlocks is what one file's extent items map: the sum of their
// counts, and whether every one of them could be read (bad: an item that
// did not decode or overlaps the one before, so the sum is no measure).
type fileBlocks struct {
	ino, n uint64
	bad    bool
}

// fileBlocksCodec: by inode (the walk's order).
var fileBlocksCodec = codec[fileBlocks]{size: 17,
	put: func(b []byte, v fileBlocks) {
		be.PutUint64(b, v.ino)
		be.PutUint64(b[8:], v.n)
		b[16] = 0
		if v.bad {
			b[16] = 1
		}
	},
	get: func(b []byte) fileBlocks {
		return fileBlocks{ino: be.Uint64(b), n: be.Uint64(b[8:]), bad: b[16] == 1}
	}}

var u64Codec = codec[uint64]{size: 8,
	put: func(b []byte, v uint64) { be.PutUint64(b, v) },
	get: func(b []byte) uint64 { return be.Uint64(b) }}

// nsName is a directory entry by name (not its index twin): sorted by
// (inode named, directory, name's place in the names file).
type nsName struct {
	ino, dir uint64
	name     nameRef
	typ      uint8
}

var nameCodec = codec[nsName]{size: 35,
	put: func(b []byte, v nsName) {
		be.PutUint64(b, v.ino)
		be.PutUint64(b[8:], v.dir)
		be.PutUint64(b[16:], v.name.off)
		be.PutUint64(b[24:], v.name.hash)
		be.PutUint16(b[32:], v.name.n)
		b[34] = v.typ
	},
	get: func(b []byte) nsName {
		return nsName{ino: be.Uint64(b), dir: be.Uint64(b[8:]), name: nameRef{off: be.Uint64(b[16:]), hash: be.Uint64(b[24:]), n: be.Uint16(b[32:])}, typ: b[34]}
	}}

// nsTwin is an entry or its index twin, for pairing them: sorted by
// (directory, index, inode, name hash), then name.
type nsTwin struct {
	dir, index, ino uint64
	name            nameRef
	isIndex         bool
}

var twinCodec = codec[nsTwin]{size: 43,
	put: func(b []byte, v nsTwin) {
		be.PutUint64(b, v.dir)
		be.PutUint64(b[8:], v.index)
		be.PutUint64(b[16:], v.ino)
		be.PutUint64(b[24:], v.name.hash)
		be.PutUint64(b[32:], v.name.off)
		be.PutUint16(b[40:], v.name.n)
		b[42] = 0
		if v.isIndex {
			b[42] = 1
		}
	},
	get: func(b []byte) nsTwin {
		return nsTwin{dir: be.Uint64(b), index: be.Uint64(b[8:]), ino: be.Uint64(b[16:]),
			name: nameRef{hash: be.Uint64(b[24:]), off: be.Uint64(b[32:]), n: be.Uint16(b[40:])}, isIndex: b[42] == 1}
	}}

// nameRef is an entry's name in the names file (an xfile of the names
// end to end), with its hash.
type nameRef struct {
	off, hash uint64
	n         uint16
}

// nameFile is the check's file of entry names.
type nameFile struct {
	st      *checkState
	f       *xfile.File
	end     uint64
	dropped uint64 // bytes appended before the last drop
}

func (ns *nameFile) add(name string) nameRef {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 1099511628211
	}
	if len(name) > 0xffff || ns.st.err != nil {
		return nameRef{hash: h}
	}
	if ns.f == nil {
		f, err := xfile.New(xfile.Options{Dir: ns.st.tempDir, Name: "check entry names"})
		if err != nil && ns.st.tempDir != "" {
			f, err = xfile.New(xfile.Options{Name: "check entry names"})
		}
		if err != nil {
			ns.st.fail(err)
			return nameRef{hash: h}
		}
		ns.f = f
	}
	ref := nameRef{off: ns.end, hash: h, n: uint16(len(name))}
	if err := ns.f.Store([]byte(name), int64(ns.end)); err != nil {
		ns.st.fail(err)
		return ref
	}
	ns.end += uint64(len(name))
	if ns.end-ns.dropped >= uint64(dropPages)*4096 {
		if err := ns.f.DropResident(int64(ns.dropped), int64(ns.end-ns.dropped)); err != nil {
			ns.st.fail(err)
		}
		ns.dropped = ns.end
	}
	return ref
}

// bytes returns the name r refers to, valid until the next call.
func (ns *nameFile) bytes(r nameRef) []byte {
	if ns.f == nil || r.n == 0 || ns.st.err != nil {
		return nil
	}
	b, err := ns.f.Bytes(int64(r.off), int64(r.n))
	if err != nil {
		ns.st.fail(err)
		return nil
	}
	return b
}

func (ns *nameFile) get(r nameRef) string { return string(ns.bytes(r)) }

// dropAll takes the names out of the resident set.
func (ns *nameFile) dropAll() {
	if ns.f != nil && ns.st.err == nil {
		if err := ns.f.DropResident(0, ns.f.Size()); err != nil {
			ns.st.fail(err)
		}
	}
}

func (ns *nameFile) close() {
	if ns.f != nil {
		ns.f.Close()
		ns.f = nil
	}
}

// fail records the check's first operational error.
func (st *checkState) fail(err error) {
	if st.err == nil {
		st.err = fmt.Errorf("check: scratch space: %w", err)
	}
}

func cmpUint(a, b uint64) int { return cmp.Compare(a, b) }

func cmpBlock(a, b format.BlockNr) int { return cmp.Compare(a, b) }

// key3 is a composite key: (extent start, inode, file block).
type key3 [3]uint64

func cmpKey3(a, b key3) int {
	if c := cmp.Compare(a[0], b[0]); c != 0 {
		return c
	}
	if c := cmp.Compare(a[1], b[1]); c != 0 {
		return c
	}
	return cmp.Compare(a[2], b[2])
}
