package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/hooks"
	"github.com/scrubd/scrubd/xfile"
)

// Online rebuild of the data checksum tree.
//
// A csum record holds the crc32c of every block of one data extent, as
// the writer computed it from the bytes it wrote, under the extent's
// start. It is the one proof that the data read back is the data written,
// so the rebuild keeps every record it can read and invents none: a
// record the damage took is computed again from the data as it is on
// disk now — which proves nothing about that data — and its extent is
// listed (RebuildResult.Unverified, with the files the rmap says map it)
// so the report can name what is no longer protected. The rebuild, on the
// kit (shadow.go, newbt.go, reap.go, pace.go):
//
//  1. subscribes, through one feed, to three hook chains — the
//     filesystem's Csum events (the checksums of each new data extent,
//     published whether the damaged tree took them or not: the engine
//     runs the tree degraded, engine/degraded.go), the Alloc events of
//     data extents (an extent appears or is freed: its record comes and
//     goes with it), and the Rmap events of the csum tree's own blocks
//     (writers keep changing the old tree's healthy part) — and pins a
//     committed generation G;
//  2. scans G: the records of the old tree that can be read (a walk that
//     reports what it cannot read and goes on) go to a scratch tree; the
//     rmap's data records, in order, give every data extent of G with its
//     owners, and each gets its old record when there is one of the right
//     length, else checksums computed from its blocks (listed as
//     unverified). A record of no data extent is not carried over. The
//     old tree's blocks are the rmap's records of owner csum, so a
//     subtree whose pointer was lost is reaped too;
//  3. follows the feed: a Csum event's checksums wait until the alloc
//     event of their extent, in the same generation, puts them in the
//     tree (its first reference; or a reference update, when the new
//     extent took over the start of one of the same length freed in the
//     same transaction, which the engine applies as one extent changing
//     owners) — the filesystem stores them before the engine applies the
//     extent's references, and an extent allocated and dropped in one
//     transaction never reaches the alloc tree, so checksums still
//     waiting when an event of a later generation comes are dropped; a
//     freed data extent deletes its record. At every commit the data
//     extents and the records agree (that is what the check compares),
//     so G's set plus every change after G is the set at the swap;
//  4. loads, catches up, swaps and reaps like every rebuild, with two
//     differences: records are 4 bytes per block (4 to 896), so the load
//     is planned by bytes over the frozen shadow (eb.PlanBulk), the
//     reservation made alongside the scan (for an estimate) topped up to
//     it; and a catch-up round reserves as it goes, since one insert of a
//     large record can split a leaf. The swap's exclusive section marks
//     csum healthy, and its commit clears the degraded marker.
//
// Inputs are verified as the other rebuilds verify theirs: an rmap the
// engine runs without, or one whose walk meets any damage, refuses the
// rebuild. Crash safety is the kit's: the reservation and the old tree's
// blocks are covered by logged operations, so a crash leaves the old tree
// or the new one and leaks nothing.

// RebuildCsum rebuilds the data checksum tree of e online.
func RebuildCsum(ctx context.Context, e *engine.Engine, opts RebuildOptions) (_ *RebuildResult, err error) {
	if e.RmapSick() {
		return nil, fmt.Errorf("cannot rebuild the csum tree from an rmap the engine runs without: %w", format.ErrCorrupt)
	}
	opts = opts.withDefaults()
	r := &csumRebuild{e: e, tempDir: opts.TempDir, pending: map[format.BlockNr]*waitingCsums{}, unverified: map[format.BlockNr]UnverifiedRange{}}
	r.follow()
	defer r.unfollow()

	res, err := rebuild(ctx, e, opts, rebuildSpec[csumEvent]{
		Name: "csum", Tree: format.TreeCsum, Structure: engine.StructCsum, ItemSize: csumItemGuess, VarSize: true,
		Codec: csumEvents, Gen: func(ev csumEvent) format.Gen { return ev.Gen },
		Chain:  func(*engine.Engine) *hooks.Chain[csumEvent] { return &r.feed },
		Apply:  r.apply,
		Expect: treeItems(format.TreeCsum),
		Scan:   r.scan,
		Old:    func(o *oldTree) { r.old = o },
		Swap:   swapSteps{Stopped: func(*engine.Exclusive) { r.unfollow() }},
	})
	if err != nil {
		return nil, err
	}
	res.Unverified = r.unverifiedList()
	res.Salvaged = r.salvaged
	return res, nil
}

// UnverifiedRange is a data extent whose checksums a csum rebuild found
// no readable record of and computed from the data as it is on disk: its
// blocks now read without error whatever they hold, never verified
// against what was written.
type UnverifiedRange struct {
	Start  format.BlockNr `json:"start"`
	Blocks uint64         `json:"blocks"`
	// Owners are the files mapping part of it, as the rmap of the
	// scanned generation says (none for an extent the rebuild met only in
	// the live updates).
	Owners []UnverifiedOwner `json:"owners,omitempty"`
}

// UnverifiedOwner is a file mapping part of an unverified extent.
type UnverifiedOwner struct {
	Ino    uint64 `json:"ino"`
	Offset uint64 `json:"offset"` // bytes into the file
	Length uint64 `json:"length"` // bytes of the extent it maps (0: the rmap does not say, format 1.1)
}

// csumItemGuess is the record value size the reservation made alongside
// the scan plans for (a 4-block extent's); the load reserves what the
// exact plan needs beyond it, and the reaping frees what it leaves.
const csumItemGuess = 16

// csumRebuild is the csum tree's own state in a rebuild. apply runs
// serialized by the shadow; mu guards the unverified list against the
// report's read.
type csumRebuild struct {
	e       *engine.Engine
	tempDir string

	feed    hooks.Chain[csumEvent]
	handles []func() // unregister the feed's sources

	old     *oldTree                         // set after the scan, before any apply
	pending map[format.BlockNr]*waitingCsums // a Csum event's checksums, until their extent's alloc event
	lastGen format.Gen                       // of the last event applied

	mu         sync.Mutex
	unverified map[format.BlockNr]UnverifiedRange

	buf  []byte // a record read
	data []byte // an extent's blocks read

	salvaged Salvaged // what the scan kept from below damaged nodes
}

// waitingCsums are the checksums of a new extent as its Csum events
// brought them.
type waitingCsums struct {
	gen  format.Gen
	sums []byte
	have uint64 // checksums filled in
}

// Kinds of csumEvent.
const (
	csumPut     = iota + 1 // checksums First..First+N of the new extent Start+Len
	dataAlloc              // data extent Start+Len allocated
	dataRef                // data extent Start+Len gained or lost a reference
	dataFree               // data extent Start+Len freed
	csumBlock              // the csum tree gained block Start
	csumUnblock            // the csum tree lost block Start
)

// csumChunk is how many checksums one csumPut event carries.
const csumChunk = 24

// csumEvent is one event of the feed, a fixed 128-byte record.
type csumEvent struct {
	Gen   format.Gen
	Kind  uint8
	N     uint8
	First uint16
	Start format.BlockNr
	Len   uint64
	Sums  [4 * csumChunk]byte
}

var csumEvents = eventCodec[csumEvent]{
	size: 32 + 4*csumChunk,
	put: func(b []byte, ev csumEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		b[8], b[9] = ev.Kind, ev.N
		le.PutUint16(b[10:], ev.First)
		le.PutUint64(b[16:], uint64(ev.Start))
		le.PutUint64(b[24:], ev.Len)
		copy(b[32:], ev.Sums[:])
	},
	get: func(b []byte) csumEvent {
		le := binary.LittleEndian
		ev := csumEvent{Gen: format.Gen(le.Uint64(b[0:])), Kind: b[8], N: b[9], First: le.Uint16(b[10:]),
			Start: format.BlockNr(le.Uint64(b[16:])), Len: le.Uint64(b[24:])}
		copy(ev.Sums[:], b[32:])
		return ev
	},
}

// follow registers the feed's sources: each turns the events the
// rebuild needs into feed events, synchronously (every source is called
// from the writer that makes the change, so the feed keeps their order).
func (r *csumRebuild) follow() {
	h := r.e.Hooks()
	cs := h.Csum.Register(func(ev engine.CsumEvent) {
		n := uint64(len(ev.Csums) / 4)
		for i := uint64(0); i < n; i += csumChunk {
			fe := csumEvent{Gen: ev.Gen, Kind: csumPut, Start: ev.Start, Len: n, First: uint16(i), N: uint8(min(csumChunk, n-i))}
			copy(fe.Sums[:], ev.Csums[4*i:4*(i+uint64(fe.N))])
			r.feed.Call(fe)
		}
	})
	al := h.Alloc.Register(func(ev engine.AllocEvent) {
		if ev.Flags != format.ExtentData {
			return
		}
		fe := csumEvent{Gen: ev.Gen, Start: ev.Start, Len: ev.Len}
		switch ev.Op {
		case engine.OpInsert:
			fe.Kind = dataAlloc
		case engine.OpUpdate:
			fe.Kind = dataRef
		case engine.OpDelete:
			fe.Kind = dataFree
		default:
			return
		}
		r.feed.Call(fe)
	})
	rm := h.Rmap.Register(func(ev engine.RmapEvent) {
		if ev.Owner.IsData() || ev.Owner.Tree != format.TreeCsum {
			return
		}
		switch ev.Op {
		case engine.OpInsert:
			r.feed.Call(csumEvent{Gen: ev.Gen, Kind: csumBlock, Start: ev.Start})
		case engine.OpDelete:
			r.feed.Call(csumEvent{Gen: ev.Gen, Kind: csumUnblock, Start: ev.Start})
		}
	})
	r.handles = []func(){
		func() { h.Csum.Unregister(cs) }, func() { h.Alloc.Unregister(al) }, func() { h.Rmap.Unregister(rm) },
	}
}

// unfollow unregisters the feed's sources (in the exclusive section,
// after the shadow stopped; or when the rebuild ends).
func (r *csumRebuild) unfollow() {
	for _, f := range r.handles {
		f()
	}
	r.handles = nil
}

// scan puts into shadow the records generation s implies — one per data
// extent, its old record kept where readable — and returns the old csum
// tree's blocks.
func (r *csumRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	store, err := xfile.NewBTreeStore(xfile.Options{Dir: r.tempDir, Name: "csum old records"})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	kept, err := store.CreateTree(format.TreeCsum)
	if err != nil {
		return nil, err
	}
	keep := func(k format.Key, v []byte) (bool, error) {
		if k.Type != format.TypeCsum {
			return false, nil
		}
		if _, err := format.DecodeCsums(v); err != nil {
			return false, nil
		}
		return true, kept.Put(k, v)
	}
	walk := newWalkTrace()
	if ct, ok := s.ScanTree(format.TreeCsum); ok {
		// What cannot be read is computed again below: the walk's
		// problems are the check's to report.
		var perr error
		err := ct.Check(walk.visitor(eb.CheckVisitor{Item: func(k format.Key, v []byte) {
			th.tick()
			if perr == nil {
				_, perr = keep(k, v)
			}
		}}))
		if err == nil {
			err = perr
		}
		if err != nil {
			return nil, fmt.Errorf("read the old csum tree: %w", err)
		}
	}
	if walk.damaged {
		// The intact leaves below a damaged node keep their records,
		// verified (salvage.go): the tree's blocks, as the rmap lists
		// them, first.
		owned, err := rmapTreeBlocks(ctx, s, format.TreeCsum)
		if err != nil {
			return nil, err
		}
		sv, err := salvage(ctx, s, format.TreeCsum, owned, walk, keep)
		if err != nil {
			return nil, fmt.Errorf("salvage the old csum tree: %w", err)
		}
		r.salvaged = sv
	}

	var old []format.BlockNr
	var cur UnverifiedRange // the data extent being collected, its owners
	var n int
	flush := func() error {
		if cur.Blocks == 0 {
			return nil
		}
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		th.tick()
		progress.Add(1)
		k := format.CsumKey(cur.Start)
		v, ok, err := kept.Get(k, r.buf[:0])
		if err != nil {
			return err
		}
		r.buf = v
		if !ok || uint64(len(v)) != 4*cur.Blocks {
			if v, err = r.compute(cur.Start, cur.Blocks); err != nil {
				return err
			}
			r.unverify(cur)
		}
		return shadow.Insert(k, v)
	}
	err = walkRmap(ctx, s, "the csum tree", func(start format.BlockNr, o format.Owner, it format.RmapItem) error {
		if !o.IsData() {
			if o.Tree == format.TreeCsum {
				old = append(old, start)
			}
			return nil
		}
		owner := UnverifiedOwner{Ino: o.Inode, Offset: o.Offset * format.BlockSize, Length: it.Count * format.BlockSize}
		if cur.Blocks > 0 && start == cur.Start {
			if it.Len != cur.Blocks {
				return fmt.Errorf("owners of the data extent at %d disagree on its length (%d and %d): %w", start, cur.Blocks, it.Len, format.ErrCorrupt)
			}
			cur.Owners = append(cur.Owners, owner)
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		if it.Len == 0 || it.Len > format.MaxExtentBlocks {
			return fmt.Errorf("rmap record of %s at %d: a data extent of %d blocks: %w", o, start, it.Len, format.ErrCorrupt)
		}
		cur = UnverifiedRange{Start: start, Blocks: it.Len, Owners: []UnverifiedOwner{owner}}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	return old, nil
}

// compute returns the checksums of the n blocks at start as they are on
// disk now.
func (r *csumRebuild) compute(start format.BlockNr, n uint64) ([]byte, error) {
	if need := int(n) * format.BlockSize; cap(r.data) < need {
		r.data = make([]byte, need)
	}
	data := r.data[:int(n)*format.BlockSize]
	if _, err := r.e.Device().ReadAt(data, int64(start)*format.BlockSize); err != nil {
		return nil, fmt.Errorf("read data extent %d+%d to checksum it: %w", start, n, err)
	}
	sums := make([]byte, 4*n)
	for i := uint64(0); i < n; i++ {
		format.PutCsum(sums, i, format.Checksum(data[i*format.BlockSize:(i+1)*format.BlockSize]))
	}
	return sums, nil
}

// unverify lists u as re-checksummed without verification.
func (r *csumRebuild) unverify(u UnverifiedRange) {
	r.mu.Lock()
	r.unverified[u.Start] = u
	r.mu.Unlock()
}

// verified drops the extent at start from the list (it was freed, or a
// new one with checksums of its own took its place).
func (r *csumRebuild) verified(start format.BlockNr) {
	r.mu.Lock()
	delete(r.unverified, start)
	r.mu.Unlock()
}

// unverifiedList returns the extents re-checksummed without verification
// that the new tree holds, in disk order.
func (r *csumRebuild) unverifiedList() []UnverifiedRange {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]UnverifiedRange, 0, len(r.unverified))
	for _, u := range r.unverified {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b UnverifiedRange) int { return int(int64(a.Start) - int64(b.Start)) })
	return out
}

// apply applies a feed event to t (the shadow, the staged tree or the
// swapped-in one) and keeps the old tree's blocks current. The shadow
// serializes the calls, all of them of generations after the scanned one,
// in the order they were published.
func (r *csumRebuild) apply(t *eb.Tree, ev csumEvent) error {
	if ev.Gen > r.lastGen {
		// Every extent of an earlier generation had its references
		// applied by its commit: checksums still waiting belong to
		// extents allocated and dropped in one transaction.
		for s, w := range r.pending {
			if w.gen < ev.Gen {
				delete(r.pending, s)
			}
		}
		r.lastGen = ev.Gen
	}
	k := format.CsumKey(ev.Start)
	var err error
	switch ev.Kind {
	case csumPut:
		w := r.pending[ev.Start]
		if ev.First == 0 || w == nil || w.gen != ev.Gen || uint64(len(w.sums)) != 4*ev.Len {
			if ev.Len == 0 || ev.Len > format.MaxExtentBlocks {
				return fmt.Errorf("checksums of a %d-block extent at %d (internal error)", ev.Len, ev.Start)
			}
			w = &waitingCsums{gen: ev.Gen, sums: make([]byte, 4*ev.Len)}
			r.pending[ev.Start] = w
		}
		copy(w.sums[4*int(ev.First):], ev.Sums[:4*int(ev.N)])
		w.have += uint64(ev.N)
	case dataAlloc, dataRef:
		// The first reference of a new extent; or a new extent of the
		// same length that took over the start of one freed in the same
		// transaction, which the engine applies as one extent changing
		// owners. Either way, its checksums wait.
		w := r.pending[ev.Start]
		switch {
		case w != nil && uint64(len(w.sums)) == 4*ev.Len && w.have == ev.Len:
			delete(r.pending, ev.Start)
			r.verified(ev.Start)
			err = t.Put(k, w.sums)
		case ev.Kind == dataAlloc:
			// No checksums were published for it (written by none of
			// this build's paths): computed from its blocks now.
			var sums []byte
			if sums, err = r.compute(ev.Start, ev.Len); err == nil {
				r.unverify(UnverifiedRange{Start: ev.Start, Blocks: ev.Len})
				err = t.Put(k, sums)
			}
		}
	case dataFree:
		r.verified(ev.Start)
		_, err = t.Delete(k)
	case csumBlock:
		r.old.add(ev.Start)
	case csumUnblock:
		r.old.remove(ev.Start)
	}
	if err != nil {
		return fmt.Errorf("csum record of the data extent at %d: %w", ev.Start, err)
	}
	return nil
}

// unverifiedChanges describes the unverified extents of a csum rebuild
// for the report, one line per file range, naming the file by its path
// when the directory tree of the current generation reaches it (else by
// its inode number).
func unverifiedChanges(e *engine.Engine, us []UnverifiedRange) []string {
	if len(us) == 0 {
		return nil
	}
	want := map[uint64]bool{}
	for _, u := range us {
		for _, o := range u.Owners {
			want[o.Ino] = true
		}
	}
	paths := inodePaths(e, want)
	var out []string
	for _, u := range us {
		if len(u.Owners) == 0 {
			out = append(out, fmt.Sprintf("checksums of data blocks %d+%d computed from the data without verification (written during the rebuild)", u.Start, u.Blocks))
			continue
		}
		for _, o := range u.Owners {
			name, ok := paths[o.Ino]
			if !ok {
				name = fmt.Sprintf("inode %d", o.Ino)
			}
			out = append(out, fmt.Sprintf("%s: bytes %d+%d re-checksummed without verification (data blocks %d+%d): their checksums were lost with the damage",
				name, o.Offset, o.Length, u.Start, u.Blocks))
		}
	}
	return out
}

// inodePaths returns a path for each inode of want the directory tree of
// the committed generation reaches: one scan of the directory entries
// keeps each wanted inode's and each directory's parent and name, then
// walks up to the root (bounded by the number of directories, so a loop
// in a damaged tree ends). Best effort: what cannot be read is left out.
func inodePaths(e *engine.Engine, want map[uint64]bool) map[uint64]string {
	pin := e.Pin()
	defer pin.Release()
	type up struct {
		parent uint64
		name   string
	}
	parent := map[uint64]up{}
	_ = scanTree(pin, format.TreeDir, func(k format.Key, v []byte) error {
		if k.Type != format.TypeDirEntry {
			return nil
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return nil
		}
		if want[de.Ino] || uint32(de.Type)<<12 == modeDir {
			parent[de.Ino] = up{k.Obj, de.Name}
		}
		return nil
	})
	out := map[uint64]string{}
	for ino := range want {
		var parts []string
		cur := ino
		for n := 0; cur != fs.RootIno && n <= len(parent); n++ {
			u, ok := parent[cur]
			if !ok {
				break
			}
			parts = append(parts, u.name)
			cur = u.parent
		}
		if cur != fs.RootIno {
			continue
		}
		slices.Reverse(parts)
		out[ino] = "/" + strings.Join(parts, "/")
	}
	return out
}
