package repair

import (
	"cmp"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// The data scrub, in disk order.
//
// A data scrub must verify every block of file data against its crc32c
// and name the file and offset of each bad one. Reading each file through
// the filesystem does that, but pays per 4 KiB block for the engine lock,
// three B-tree lookups and one small pread, on one core: far below what
// the device and crc32c can do. So the scrub reads the data the way the
// device likes it and the blocks' owners only when one is bad:
//
//  1. Plan, on one pinned generation: the file extent items of the
//     regular files the directory tree reaches (the same items, clipped to
//     the same sizes, a read through the filesystem would use: that is
//     what keeps the findings those of a read), cut to the scope (--since,
//     --errors) and to the resumed cursor, sorted by disk block. A block
//     mapped by several files (hard links are one inode; a shared extent
//     several) is one mapping per owner.
//  2. Group the sorted mappings into runs of about dataRunBlocks (4 MiB)
//     of disk blocks, reading across unmapped gaps of up to dataGapBlocks
//     (256 KiB: metadata blocks a commit put between two files' data;
//     reading them costs less than a second request) and skipping longer
//     ones. A run never splits the mappings that start at one block (so a
//     run's start is a cursor position): that may stretch it by one
//     extent (MaxExtentBlocks), never more.
//  3. Per run, in order, the coordinator looks up the checksum items of
//     the run's extents (one ascending walk of the csum tree from the
//     run's first extent: the csum tree is keyed by disk block too), paces
//     (the rate limit) and hands the run to a pool of workers, at least
//     dataReadDepth of them however few cores there are: that many reads
//     in flight, the queue depth a device (a virtual disk the more so)
//     needs to stream at full speed.
//  4. A worker reads the run with one read into its own reused buffer,
//     past the page cache where the device allows it
//     (engine.DataReader: O_DIRECT on an image file or block device; no
//     copy out of the page cache, no readahead deciding the request size,
//     the mount's cached pages left alone), and verifies every mapped
//     block. Only if that read fails does it read the mapped blocks one
//     by one, to name the unreadable ones (an unreadable gap block is
//     nobody's finding, as before).
//  5. The coordinator takes the results back in run order, so progress,
//     pauses and the cursor advance in disk order: after run i, every
//     mapping starting below run i+1's first block is verified, and that
//     block is the cursor (engine.ScrubCursor.NextDisk).
//
// Why reads through the device are safe online: the pin keeps every block
// of its generation from reuse until released (engine.Snapshot), so a
// writer overwriting, truncating or deleting a file meanwhile writes
// elsewhere (copy on write) and what the scrub reads is what the pinned
// checksums describe; no false positives under load.
//
// A bad block is named by the first path a depth-first walk of the
// directory tree (entries in creation order) meets its inode at — what
// the file-by-file scrub reported — computed once, the first time one is
// bad. Blocks whose extent has no checksum item, or a damaged one, and
// blocks the device cannot read are findings as before (disk block 0);
// blocks whose checksum damage to the csum tree hides are not verified,
// and not counted as verified.

// dataRunBlocks is the size of one read, in blocks: 4 MiB (a variable:
// tests make it small, to have many runs on a small image).
var dataRunBlocks uint64 = 1024

const (
	// dataGapBlocks is the longest unmapped gap a run reads across
	// (256 KiB): reading it costs less than a second request.
	dataGapBlocks = 64
	// dataLimitedRunBlocks is the size of one read of a rate-limited
	// scrub: 1 MiB.
	dataLimitedRunBlocks = 256
	// dataReadDepth is the least number of workers, hence of reads in
	// flight: a device (and a virtual disk the more so) streams fastest
	// with several large requests queued, even where one core verifies.
	dataReadDepth = 4
)

// dataMap is one file's mapping of contiguous disk blocks, in one extent:
// 32 bytes (the counts inside an extent fit 16 bits).
type dataMap struct {
	disk format.BlockNr // first disk block
	ino  uint64
	fb   uint64 // first file block
	n    uint16 // blocks
	coff uint16 // disk - the extent's start (its csum item's key)
	clen uint16 // the extent's length
	last uint16 // bytes of the last block inside the file (1..BlockSize)
}

// cstart is the start of m's extent: its csum item's key.
func (m *dataMap) cstart() format.BlockNr { return m.disk - format.BlockNr(m.coff) }

// An extent's length, a mapping's count and offset and a block's size fit
// dataMap's 16-bit fields.
const _ = uint16(format.MaxExtentBlocks) + uint16(format.BlockSize)

// dataPlan is what a data scrub reads.
type dataPlan struct {
	maps    []dataMap // sorted by disk block, inode, file block
	skipped uint64    // mapped blocks the resumed cursor skips
	names   *nameTree
}

// nameTree is the directory tree's entries, for paths and reachability.
type nameTree struct {
	ents  []nameEnt
	dirs  map[uint64][2]int // directory → its entries [from, to) in ents
	paths map[uint64]string // regular file → its first path (lazily)
}

type nameEnt struct {
	ino  uint64
	mode uint32
	name string
}

// readNames reads the directory tree's index items (per directory, in
// creation order: the order ReadDir lists).
func readNames(s *engine.Snapshot) *nameTree {
	nt := &nameTree{dirs: map[uint64][2]int{}}
	t, ok := s.ScanTreeAhead(format.TreeDir)
	if !ok {
		return nt
	}
	// Half the directory tree's items are index items (the others are the
	// entries by name hash): sized once, the slice is not copied as it
	// grows, nor its fresh pages touched twice.
	nt.ents = make([]nameEnt, 0, presize(t.Items/2))
	cur, from := uint64(0), 0
	// Damage stops the walk: the check reports it; the files it hides are
	// not read, as a walk through the filesystem could not reach them.
	_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeDirIndex || k.Off < 2 {
			return true
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return true
		}
		if k.Obj != cur {
			if cur != 0 {
				nt.dirs[cur] = [2]int{from, len(nt.ents)}
			}
			cur, from = k.Obj, len(nt.ents)
		}
		nt.ents = append(nt.ents, nameEnt{ino: de.Ino, mode: uint32(de.Type) << 12, name: de.Name})
		return true
	})
	if cur != 0 {
		nt.dirs[cur] = [2]int{from, len(nt.ents)}
	}
	return nt
}

// walk visits the regular files in depth-first order from the root, each
// time it meets one (a hard-linked file once per name), with a function
// returning its path (built only when asked: reachability needs none).
func (nt *nameTree) walk(fn func(ino uint64, path func() string)) {
	seen := map[uint64]bool{}
	var names []string // the path's components, down to the entry visited
	path := func() string { return "/" + strings.Join(names, "/") }
	var visit func(dir uint64)
	visit = func(dir uint64) {
		if seen[dir] { // a loop only damage makes
			return
		}
		seen[dir] = true
		r, ok := nt.dirs[dir]
		if !ok {
			return
		}
		for _, de := range nt.ents[r[0]:r[1]] {
			names = append(names, de.name)
			switch de.mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				visit(de.ino)
			case syscall.S_IFREG:
				fn(de.ino, path)
			}
			names = names[:len(names)-1]
		}
	}
	visit(fs.RootIno)
}

// reachable returns the regular files the walk from the root meets.
func (nt *nameTree) reachable() map[uint64]bool {
	m := make(map[uint64]bool, len(nt.ents))
	nt.walk(func(ino uint64, _ func() string) { m[ino] = true })
	return m
}

// path returns the first path of ino ("" if none).
func (nt *nameTree) path(ino uint64) string {
	if nt.paths == nil {
		nt.paths = map[uint64]string{}
		nt.walk(func(ino uint64, p func() string) {
			if _, ok := nt.paths[ino]; !ok {
				nt.paths[ino] = p()
			}
		})
	}
	return nt.paths[ino]
}

// plannedData is a data scrub planned ahead, on the generation it pins:
// a scrub with progress counts the blocks its data scrub will read before
// the pass starts, and the data scrub then reads what was counted instead
// of walking the trees a second time.
type plannedData struct {
	s    *engine.Snapshot
	plan *dataPlan
}

// planAhead pins e's last commit and plans its data scrub (c: the run's
// control; res: a resumed cursor). The caller releases it.
func planAhead(ctx context.Context, e *engine.Engine, c *ScrubControl, res *engine.ScrubCursor) (*plannedData, error) {
	s := e.Pin()
	c.allowReadAhead(s)
	plan, err := planData(ctx, s, nil, res)
	if err != nil {
		s.Release()
		return nil, err
	}
	return &plannedData{s: s, plan: plan}, nil
}

// units is the progress units of the planned data scrub: every block it
// reads, and those the resumed cursor skips (counted as done at once).
func (pd *plannedData) units() uint64 {
	n := pd.plan.skipped
	for i := range pd.plan.maps {
		n += uint64(pd.plan.maps[i].n)
	}
	return n
}

// release unpins the planned generation (pd may be nil; release may be
// called more than once).
func (pd *plannedData) release() {
	if pd != nil && pd.s != nil {
		pd.s.Release()
		pd.s = nil
	}
}

// presize is the capacity to give a slice of about n records, n an item
// count a root item records: bounded, since a damaged count can be any
// number (the slice then grows as it would have).
func presize(n uint64) int {
	return int(min(n, 1<<22))
}

// planData collects what a data scrub of generation s reads (see above).
//
// The three trees it reads are walked at once, each in a goroutine of its
// own: from a cold cache a walk mostly waits for the device, and three
// walks keep three requests in flight. The directory tree's walk (names,
// reachability) runs beside the other two; the extent tree's walk joins
// each file's extent items with its size as it goes, from the inode
// tree's walk running ahead (both trees are keyed by inode number); the
// mappings of files the directory tree does not reach are dropped at the
// end.
func planData(ctx context.Context, s *engine.Snapshot, scope *dataScope, res *engine.ScrubCursor) (*dataPlan, error) {
	p := &dataPlan{}
	var reach map[uint64]bool
	named := make(chan struct{})
	go func() {
		defer close(named)
		p.names = readNames(s)
		reach = p.names.reachable()
	}()
	defer func() { <-named }() // never return with the walk running
	sizes := make(chan []fileSize, 4)
	quit, sized := make(chan struct{}), make(chan struct{})
	defer func() { close(quit); <-sized }()
	go func() {
		defer close(sized)
		readSizes(s, sizes, quit)
	}()
	var pending []fileSize // a batch from sizes, its files below the walk's dropped
	sizeOf := func(ino uint64) (uint64, bool) {
		for {
			for len(pending) > 0 && pending[0].ino < ino {
				pending = pending[1:]
			}
			if len(pending) > 0 {
				return pending[0].size, pending[0].ino == ino
			}
			b, ok := <-sizes
			if !ok {
				return 0, false
			}
			pending = b
		}
	}
	t, ok := s.ScanTreeAhead(format.TreeExtent)
	if !ok {
		return p, nil // p.names is set once the deferred wait returns
	}
	if scope == nil {
		p.maps = make([]dataMap, 0, presize(t.Items)) // about one mapping per file extent item
	}
	total := s.TotalBlocks()
	stopped := uint64(0) // a file whose extent items stop at damage (+1; 0: none)
	var n int
	add := func(ino, fb, cnt uint64, fe format.FileExtent, at, size uint64) {
		d := fe.Disk(at, fb)
		last := uint64(format.BlockSize)
		if end := (fb + cnt) * format.BlockSize; end > size {
			last = size - (fb+cnt-1)*format.BlockSize
		}
		p.maps = append(p.maps, dataMap{disk: d, ino: ino, fb: fb, n: uint16(cnt), coff: uint16(d - fe.Start), clen: uint16(fe.Len), last: uint16(last)})
	}
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if n++; n%4096 == 0 && ctx.Err() != nil {
			return false
		}
		if k.Type != format.TypeFileExtent || stopped == k.Obj+1 {
			return true
		}
		size, ok := sizeOf(k.Obj)
		if !ok {
			return true
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil || uint64(fe.Start)+fe.Len > total {
			// A read of the file stops here: so does the scrub.
			stopped = k.Obj + 1
			return true
		}
		sizeBlocks := (size + format.BlockSize - 1) / format.BlockSize
		if k.Off >= sizeBlocks {
			return true
		}
		cnt := min(fe.Count, sizeBlocks-k.Off)
		if scope == nil {
			add(k.Obj, k.Off, cnt, fe, k.Off, size)
			return true
		}
		for _, r := range scope.files[k.Obj] {
			a, b := max(r.first, k.Off), min(r.first+r.n, k.Off+cnt)
			if a < b {
				add(k.Obj, a, b-a, fe, k.Off, size)
			}
		}
		return true
	})
	<-named
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_ = err // damage: the check reports it; what was collected is read
	// Only the files the directory tree reaches, less what the resumed
	// cursor skips.
	k := 0
	for _, m := range p.maps {
		if !reach[m.ino] {
			continue
		}
		if res != nil && (m.ino < res.NextIno || (res.DiskOrder && m.disk < res.NextDisk)) {
			p.skipped += uint64(m.n)
			continue
		}
		p.maps[k] = m
		k++
	}
	p.maps = p.maps[:k]
	slices.SortFunc(p.maps, func(a, b dataMap) int {
		return cmp.Or(cmp.Compare(a.disk, b.disk), cmp.Compare(a.ino, b.ino), cmp.Compare(a.fb, b.fb))
	})
	return p, nil
}

// fileSize is a regular file's size.
type fileSize struct{ ino, size uint64 }

// readSizes walks the inode tree of s and sends the sizes of its regular
// files to out, in batches in inode order, until the walk ends (damage
// ends it: the files after it are not read, as before) or quit closes;
// then it closes out.
func readSizes(s *engine.Snapshot, out chan<- []fileSize, quit <-chan struct{}) {
	defer close(out)
	t, ok := s.ScanTreeAhead(format.TreeInode)
	if !ok {
		return
	}
	const batch = 4096
	b := make([]fileSize, 0, batch)
	stop := false
	send := func() {
		select {
		case out <- b:
			b = make([]fileSize, 0, batch)
		case <-quit:
			stop = true
		}
	}
	_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeInodeItem {
			return true
		}
		if in, err := format.DecodeInodeItem(v); err == nil && in.Mode&syscall.S_IFMT == syscall.S_IFREG {
			if b = append(b, fileSize{k.Obj, in.Size}); len(b) == batch {
				send()
			}
		}
		return !stop
	})
	if len(b) > 0 && !stop {
		send()
	}
}

// dataRun is a run of contiguous disk blocks read at once.
type dataRun struct {
	start format.BlockNr
	n     uint64    // blocks
	maps  []dataMap // the mappings in it
	cs    []csumRef // per mapping, its checksums
	out   chan runResult
}

// csumRef is the checksum item of a mapping's extent, or why there is
// none to use.
type csumRef struct {
	v     []byte
	state csumState
}

type csumState uint8

const (
	csumOK         csumState = iota
	csumMissing              // no item: every block is a finding
	csumBad                  // an item of the wrong size: every block is a finding
	csumUnverified           // damage to the csum tree hides it: not verified
)

// badData is a block found bad.
type badData struct {
	ino, off uint64
	disk     format.BlockNr
	detail   string // for checksum-less and unreadable blocks
}

type runResult struct {
	bad      []badData
	verified uint64 // bytes
	blocks   uint64 // mapped blocks (units)
}

// runs groups the plan's mappings into runs of about size blocks, read
// across gaps of up to gap blocks (see above).
func (p *dataPlan) runs(size, gap uint64) []*dataRun {
	var out []*dataRun
	var cur *dataRun
	for i := range p.maps {
		m := &p.maps[i]
		end := m.disk + format.BlockNr(m.n)
		if cur != nil {
			cend := cur.start + format.BlockNr(cur.n)
			if m.disk == p.maps[i-1].disk ||
				(m.disk <= cend+format.BlockNr(gap) && uint64(max(end, cend)-cur.start) <= size) {
				cur.maps = cur.maps[:len(cur.maps)+1]
				cur.n = max(cur.n, uint64(end-cur.start))
				continue
			}
		}
		cur = &dataRun{start: m.disk, n: uint64(m.n), maps: p.maps[i : i+1]}
		out = append(out, cur)
	}
	return out
}

// csums looks up the checksum items of run r's extents in t (a scan of the
// csum tree: one goroutine).
func lookupCsums(e *engine.Engine, s *engine.Snapshot, r *dataRun) {
	r.cs = make([]csumRef, len(r.maps))
	first, last := r.maps[0].cstart(), r.maps[0].cstart()
	for i := range r.maps {
		c := r.maps[i].cstart()
		first, last = min(first, c), max(last, c)
	}
	found := map[format.BlockNr][]byte{}
	t, ok := s.ScanTree(format.TreeCsum)
	var err error
	if ok {
		err = t.Ascend(format.CsumKey(first), func(k format.Key, v []byte) bool {
			if k.Obj > uint64(last) {
				return false
			}
			if k.Type == format.TypeCsum {
				found[format.BlockNr(k.Obj)] = append([]byte(nil), v...)
			}
			return true
		})
	}
	sick := e.Sick(engine.StructCsum)
	for i := range r.maps {
		m := &r.maps[i]
		v, ok := found[m.cstart()]
		if err != nil && !ok {
			// The walk met damage: each extent's own lookup, as a read does.
			var gerr error
			v, ok, gerr = t.Get(format.CsumKey(m.cstart()), nil)
			if gerr != nil {
				if e.CsumDamaged(gerr) {
					r.cs[i] = csumRef{state: csumUnverified}
					continue
				}
				r.cs[i] = csumRef{state: csumBad}
				continue
			}
			sick = e.Sick(engine.StructCsum)
		}
		switch {
		case !ok && (sick || !hasTree(s, format.TreeCsum)):
			r.cs[i] = csumRef{state: csumUnverified}
		case !ok:
			r.cs[i] = csumRef{state: csumMissing}
		case len(v)%4 != 0 || len(v) == 0 || uint64(len(v)/4) != uint64(m.clen):
			r.cs[i] = csumRef{state: csumBad}
		default:
			r.cs[i] = csumRef{v: v}
		}
	}
}

func hasTree(s *engine.Snapshot, id format.TreeID) bool {
	_, ok := s.Root(id)
	return ok
}

// verifyRun reads run r into buf (with rd) and verifies its mappings.
func verifyRun(rd *engine.DataReader, r *dataRun, buf []byte) runResult {
	const bs = format.BlockSize
	var out runResult
	if uint64(len(buf)) < r.n*bs { // runs() keeps runs shorter: never
		buf = rd.Buffer(int(r.n))
	}
	buf = buf[:r.n*bs]
	var unreadable map[format.BlockNr]error
	if err := rd.Read(r.start, buf); err != nil {
		// Block by block, the mapped blocks only, to name the unreadable
		// ones (a gap the run read across is nobody's).
		unreadable = map[format.BlockNr]error{}
		for j := range r.maps {
			m := &r.maps[j]
			for i := uint64(0); i < uint64(m.n); i++ {
				d := m.disk + format.BlockNr(i)
				o := uint64(d-r.start) * bs
				if _, ok := unreadable[d]; ok {
					continue
				}
				if err := rd.Read(d, buf[o:o+bs]); err != nil {
					unreadable[d] = err
				}
			}
		}
	}
	for j := range r.maps {
		m := &r.maps[j]
		cs := r.cs[j]
		for i := uint64(0); i < uint64(m.n); i++ {
			out.blocks++
			d := m.disk + format.BlockNr(i)
			fb := m.fb + i
			off := fb * bs
			n := uint64(bs)
			if i == uint64(m.n)-1 {
				n = uint64(m.last)
			}
			if err := unreadable[d]; err != nil {
				out.bad = append(out.bad, badData{ino: m.ino, off: off, detail: fmt.Sprintf("offset %d: inode %d: %v", off, m.ino, err)})
				continue
			}
			switch cs.state {
			case csumUnverified:
				continue
			case csumMissing:
				out.bad = append(out.bad, badData{ino: m.ino, off: off, detail: fmt.Sprintf("offset %d: inode %d block %d: extent %d has no checksums: %v", off, m.ino, fb, m.cstart(), syscall.EIO)})
				continue
			case csumBad:
				out.bad = append(out.bad, badData{ino: m.ino, off: off, detail: fmt.Sprintf("offset %d: inode %d block %d: checksum item of extent %d is damaged: %v", off, m.ino, fb, m.cstart(), syscall.EIO)})
				continue
			}
			b := buf[uint64(d-r.start)*bs:][:bs]
			if format.Checksum(b) != format.CsumAt(cs.v, uint64(d-m.cstart())) {
				out.bad = append(out.bad, badData{ino: m.ino, off: off, disk: d, detail: "data checksum mismatch"})
				continue
			}
			out.verified += n
		}
	}
	return out
}

// dataStats is what the data scrub measured.
type dataStats struct {
	verified uint64        // bytes verified (with those of a resumed cursor)
	read     uint64        // bytes verified by this run
	elapsed  time.Duration // of this run's data scrub
}

// rate is the bytes this run verified a second (0 if it read none).
func (d dataStats) rate() float64 {
	if d.read == 0 || d.elapsed <= 0 {
		return 0
	}
	return float64(d.read) / d.elapsed.Seconds()
}

// scrubDataDisk is the data scrub of the committed generation of e (see
// the essay above): its findings, the bytes verified, and how long it
// took. res and checkpoint are the resumed cursor and the cursor's
// receiver, as for scrubData.
//
// With pre set (the plan made ahead for the same res and no scope), it
// reads that plan's generation; pre stays the caller's to release.
func scrubDataDisk(ctx context.Context, fsys *fs.FS, c *ScrubControl, first bool, res *engine.ScrubCursor, checkpoint func(engine.ScrubCursor), scope *dataScope, pre *plannedData) ([]engine.Finding, dataStats, error) {
	part := "data"
	if !first {
		part = "recheck data"
	}
	c.partStart(part)
	defer c.partEnd(part)
	started := time.Now()
	e := fsys.Engine()
	var s *engine.Snapshot
	var plan *dataPlan
	if pre != nil && pre.s != nil {
		s, plan = pre.s, pre.plan
	} else {
		s = e.Pin()
		defer s.Release()
		c.allowReadAhead(s)
		var err error
		if plan, err = planData(ctx, s, scope, res); err != nil {
			return nil, dataStats{}, err
		}
	}
	var out []engine.Finding
	var st dataStats
	cur := engine.ScrubCursor{DiskOrder: true}
	if res != nil {
		cur.NextIno = res.NextIno
	}
	bad := func(b badData) {
		path := plan.names.path(b.ino)
		detail := b.detail
		if b.disk == 0 {
			detail = path + " " + detail
		}
		out = append(out, engine.Finding{ID: engine.ErrDataChecksum, Name: engine.ErrDataChecksum.Name(),
			Tree: format.OwnerData, Block: b.disk, Detail: detail,
			File: &engine.FileRef{Path: path, Inode: b.ino, Offset: b.off, DiskBlock: b.disk}})
		cur.Bad = append(cur.Bad, engine.BadBlock{Ino: b.ino, Offset: b.off, Disk: b.disk})
	}
	if res != nil {
		for _, b := range res.Bad {
			// Reported as the file-by-file scrub did (its detail, path
			// and all, is not kept in the cursor).
			p := plan.names.path(b.Ino)
			out = append(out, engine.Finding{ID: engine.ErrDataChecksum, Name: engine.ErrDataChecksum.Name(),
				Tree: format.OwnerData, Block: b.Disk, Detail: "data checksum mismatch (found before the interruption)",
				File: &engine.FileRef{Path: p, Inode: b.Ino, Offset: b.Offset, DiskBlock: b.Disk}})
			cur.Bad = append(cur.Bad, b)
		}
		st.verified = res.Verified
		for range plan.skipped {
			c.tick(0)
		}
	}
	// A rate-limited scrub spends its budget on file data only, and in
	// steps small enough for progress and its ETA to move evenly: 1 MiB
	// runs, no gap read across (decided at the start: --rate auto counts
	// as limited throughout).
	size, gap := dataRunBlocks, uint64(dataGapBlocks)
	if c.limited() {
		size, gap = min(size, dataLimitedRunBlocks), 0
	}
	runs := plan.runs(size, gap)
	rd := s.DataReader()
	workers := max(dataReadDepth, runtime.GOMAXPROCS(0))
	window := 2 * workers
	jobs := make(chan *dataRun, window)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for r := range jobs {
				if buf == nil { // only workers that get a run hold a buffer
					buf = rd.Buffer(int(dataRunBlocks) + format.MaxExtentBlocks)
				}
				r.out <- verifyRun(rd, r, buf)
			}
		}()
	}
	defer func() {
		close(jobs)
		wg.Wait()
		rd.Close()
	}()
	// The workers read at most window runs ahead of the run taken back.
	// The rate limit paces the runs as they are taken back, so progress
	// moves at the rate (its ETA right to the end); a limited run reads
	// one run ahead only (it is read while the run before it is paced:
	// the read's latency, a direct read's the more, stays off the pace).
	next := 0
	for i, r := range runs {
		if err := ctx.Err(); err != nil {
			st.elapsed = time.Since(started)
			return sortData(out), st, err // the deferred wait lets the workers finish what they hold
		}
		w := window
		if c.limited() {
			w = 2 // the next run is read while this one is paced
		}
		for next < len(runs) && next-i < w {
			r := runs[next]
			r.out = make(chan runResult, 1)
			lookupCsums(e, s, r)
			jobs <- r
			next++
		}
		rr := <-r.out
		for _, b := range rr.bad {
			bad(b)
		}
		st.verified += rr.verified
		st.read += rr.verified
		// Paced and counted 16 units at a time, so that progress (and its
		// ETA) moves smoothly at the rate.
		for done := uint64(0); done < rr.blocks; {
			k := min(16, rr.blocks-done)
			c.pace(r.n * format.BlockSize * k / rr.blocks)
			for range k {
				c.tick(0)
			}
			done += k
		}
		c.addBytes(r.n * format.BlockSize)
		if checkpoint != nil {
			cur.NextDisk = r.start + format.BlockNr(r.n)
			if i+1 < len(runs) {
				cur.NextDisk = runs[i+1].start
			}
			cur.Verified, cur.Found = st.verified, uint64(len(out))
			checkpoint(cur)
		}
	}
	st.elapsed = time.Since(started)
	return sortData(out), st, nil
}

// allowReadAhead lets the walks of s (the check's, the data scrub's plan)
// have the kernel read ahead when c is a run that is not rate-limited:
// an operator's scrub run to finish, not the mount's own gentle ones (an
// offline scrub's engine always allows it).
func (c *ScrubControl) allowReadAhead(s *engine.Snapshot) {
	if c != nil && !c.limited() {
		s.AllowReadAhead()
	}
}

// limited says whether the run's data scrub is rate-limited.
func (c *ScrubControl) limited() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rate.BytesPerSec > 0 || c.rate.Auto
}

// sortData orders data findings by inode and offset, as the file-by-file
// scrub made them.
func sortData(fs []engine.Finding) []engine.Finding {
	slices.SortStableFunc(fs, func(a, b engine.Finding) int {
		return cmp.Or(cmp.Compare(a.File.Inode, b.File.Inode), cmp.Compare(a.File.Offset, b.File.Offset))
	})
	return fs
}
