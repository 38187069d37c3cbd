package engine

import (
	"fmt"
	"slices"
	"sync"

	"github.com/tidwall/btree"

	"github.com/scrubd/scrubd/engine/format"
)

// The allocator hands out free blocks from an in-memory index of free
// extents (tidwall/btree, start → length, neighbours always merged). It is
// loaded at mount from the free-space tree and is the only thing that decides
// which block a new node or data extent gets; the on-disk free-space, alloc
// and rmap trees follow at commit through the delayed-ref queue.
//
// Blocks freed by generation T are referenced by older generations. They
// join the index only once T is durable and no reader pins a generation older
// than T (pending). Blocks allocated and freed within the running transaction
// were never referenced by a committed generation and return at once.
//
// Tree blocks are kept apart from data (btrfs keeps them in block groups of
// their own; this is its metadata cluster, without the groups). The
// transaction's tree blocks follow one another from a hint (txn.metaHint,
// the block after the last one), and a write's data goes after the fsync
// log's block: with one frontier of free space, each took the block the
// other wanted next, and a tree grown by writes (the file extent tree,
// the checksum tree) ended up one block among every few dozen data blocks
// over the whole image. Every one of its blocks then had its alloc and
// rmap records in a leaf of its own: freeing the old extent tree of a 1M-
// extent image after its rebuild copied every leaf of both trees (~10,000
// per batch of 8,192 blocks; docs/benchmarks.md) and took eight times as
// long as freeing an rmap tree of as many blocks, whose blocks the commits
// allocate in runs. So tree blocks come from a metadata cluster: a run of
// up to metaClusterBlocks free blocks that the searches for space keep
// off. An allocation hinted at the cluster's next block gets it and moves
// it on; when the cluster is used up (or its next block was taken by a
// claim), the allocation hinted at it first carves a new one; each commit
// points the next transaction's hint at the cluster (metaHint). Nothing
// about the cluster is on disk: it is free space, in the index and in the
// free-space tree, which the searches avoid while it lasts, and which any
// allocation gets when nothing else is left. A data extent whose hint
// happens to be the cluster's next block gets it too: a block out of
// place, nothing worse.

// extent is a run of blocks.
type extent struct {
	start format.BlockNr
	n     uint64
}

type pendingFree struct {
	gen     format.Gen
	extents []extent
}

type allocator struct {
	mu      sync.Mutex
	free    *btree.Map[format.BlockNr, uint64]
	nfree   uint64
	pending []pendingFree
	// npending counts the blocks in pending: writers ask before every
	// write, and a scan pinning a generation keeps every block freed
	// meanwhile pending (summing them each time took 13% of the CPU of a
	// 10M-extent rebuild and tripled a write's time during its scan).
	npending uint64
	total    uint64
	cursor   format.BlockNr // where the last allocation without a hint ended
	meta     metaCluster
}

// metaCluster is the run of free blocks metadata is allocated from:
// [next, end) are still free (unless claimed meanwhile), and allocations
// that search for space keep off them. end == 0: none.
type metaCluster struct{ next, end format.BlockNr }

const (
	// metaClusterBlocks is how many blocks a metadata cluster takes
	// at most (8 MiB).
	metaClusterBlocks = 2048
	// metaClusterMin is the shortest free extent a cluster is made of.
	metaClusterMin = 64
	// metaClusterScan bounds how many free extents a search for a
	// cluster visits: on a fragmented image it gives up instead.
	metaClusterScan = 4096
)

func newAllocator(total uint64) *allocator {
	return &allocator{free: btree.NewMap[format.BlockNr, uint64](32), total: total}
}

// ErrNoSpace reports that no free extent is large enough.
var ErrNoSpace = fmt.Errorf("no space left on image")

// allocate returns the start of n contiguous free blocks: at hint when
// they are free there (a hint inside the metadata cluster included);
// otherwise the first that are, searching upwards from hint (or, without
// a hint, from where the last allocation without one ended), then from the
// start of the image, keeping off the metadata cluster; in the cluster
// too only when nothing else is left. A hint at the cluster's next block
// once it is used up, or taken, moves the cluster on first (metaCluster).
func (a *allocator) allocate(n uint64, hint format.BlockNr) (format.BlockNr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n == 0 {
		return 0, fmt.Errorf("allocate 0 blocks: %w", errInternal)
	}
	explicit := hint != 0
	if !explicit {
		hint = a.cursor
	}
	if m := a.meta; explicit && n == 1 && m.end != 0 && hint == m.next && (m.next == m.end || !a.isFree(hint)) {
		if a.carveMeta(m.end) {
			hint = a.meta.next
		}
	}
	got, ok := a.find(n, hint, explicit, true)
	if !ok && a.meta.end != 0 {
		// Only the cluster is left: it goes.
		a.meta = metaCluster{}
		got, ok = a.find(n, hint, explicit, false)
	}
	if !ok {
		return 0, fmt.Errorf("allocate %d blocks (%d free in total): %w", n, a.nfree, ErrNoSpace)
	}
	a.take(got, n)
	return got, nil
}

// find returns where allocate puts n blocks (see there); avoid: keep off
// the metadata cluster where it searches.
func (a *allocator) find(n uint64, hint format.BlockNr, explicit, avoid bool) (format.BlockNr, bool) {
	var got format.BlockNr
	found := false
	// An extent that begins at or below hint but covers it is usable
	// from hint.
	a.free.Descend(hint, func(s format.BlockNr, l uint64) bool {
		if uint64(s)+l <= uint64(hint) {
			return false
		}
		if explicit && uint64(s)+l-uint64(hint) >= n {
			got, found = hint, true
			return false
		}
		got, found = a.fit(s, l, hint, n, avoid)
		return false
	})
	try := func(s format.BlockNr, l uint64) bool {
		got, found = a.fit(s, l, s, n, avoid)
		return !found
	}
	if !found {
		a.free.Ascend(hint, try)
	}
	if !found {
		a.free.Scan(try)
	}
	return got, found
}

// fit returns the first start at or after from of n blocks within the free
// extent [s, s+l), off the metadata cluster if avoid.
func (a *allocator) fit(s format.BlockNr, l uint64, from format.BlockNr, n uint64, avoid bool) (format.BlockNr, bool) {
	from = max(from, s)
	end := s + format.BlockNr(l)
	if !avoid || a.meta.next >= a.meta.end || a.meta.end <= from || a.meta.next >= end {
		return from, uint64(end-from) >= n
	}
	if from < a.meta.next && uint64(a.meta.next-from) >= n {
		return from, true
	}
	if a.meta.end < end && uint64(end-a.meta.end) >= n {
		return a.meta.end, true
	}
	return 0, false
}

// take takes [got, got+n) out of the free extent that holds it, and moves
// the cursor past it or, if it is the cluster's next block, the cluster's
// next block past it.
func (a *allocator) take(got format.BlockNr, n uint64) {
	var s format.BlockNr
	var l uint64
	a.free.Descend(got, func(fs format.BlockNr, fl uint64) bool {
		s, l = fs, fl
		return false
	})
	a.free.Delete(s)
	if got > s {
		a.free.Set(s, uint64(got-s))
	}
	if rest := uint64(s) + l - uint64(got) - n; rest > 0 {
		a.free.Set(got+format.BlockNr(n), rest)
	}
	a.nfree -= n
	end := got + format.BlockNr(n)
	switch m := &a.meta; {
	case end <= m.next || got >= m.end:
		a.cursor = end
	case got <= m.next:
		m.next = min(end, m.end)
	default:
		m.end = got // a hint into the middle of the cluster cuts it short
	}
}

// metaHint returns the block the next transaction's metadata should go to,
// given last, where the last transaction's would have gone next: the
// metadata cluster's next block, or last, where the first allocation
// hinted at it makes a new cluster. (A cluster made here could begin right
// after a block of the fsync log, and the first write's data, which goes
// after the log's block, would take its first block from the metadata.)
func (a *allocator) metaHint(last format.BlockNr) format.BlockNr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.meta; m.next < m.end && a.isFree(m.next) {
		return m.next
	}
	a.meta = metaCluster{}
	if last != 0 {
		a.meta = metaCluster{next: last, end: last} // used up: moved on when hinted at
	}
	return last
}

// carveMeta makes a new metadata cluster: the first metaClusterBlocks
// blocks (or all) of the first free extent of at least metaClusterMin at
// or after from (the last cluster's end), then from the start of the
// image; else none, until the next commit asks again (metaHint). Clusters
// follow one another upwards, as the blocks of one do, so the blocks a
// commit's delayed refs copy on write come after those it is applying and
// do not break up the free-space updates it gathers. It visits at most
// metaClusterScan extents.
func (a *allocator) carveMeta(from format.BlockNr) bool {
	a.meta = metaCluster{}
	visited := 0
	look := func(s format.BlockNr, l uint64) bool {
		if l >= metaClusterMin {
			a.meta = metaCluster{next: s, end: s + format.BlockNr(min(l, metaClusterBlocks))}
			return false
		}
		visited++
		return visited < metaClusterScan
	}
	a.free.Ascend(from, look)
	if a.meta.end == 0 && visited < metaClusterScan {
		a.free.Scan(look)
	}
	return a.meta.end != 0
}

// isFree reports whether block b is in the free index.
func (a *allocator) isFree(b format.BlockNr) bool {
	free := false
	a.free.Descend(b, func(s format.BlockNr, l uint64) bool {
		free = uint64(s)+l > uint64(b)
		return false
	})
	return free
}

// release returns an extent to the index, merging it with its neighbours.
func (a *allocator) release(start format.BlockNr, n uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseLocked(start, n)
}

func (a *allocator) releaseLocked(start format.BlockNr, n uint64) {
	a.nfree += n
	a.free.Descend(start, func(s format.BlockNr, l uint64) bool {
		if uint64(s)+l == uint64(start) {
			a.free.Delete(s)
			start, n = s, n+l
		}
		return false
	})
	end := start + format.BlockNr(n)
	if l, ok := a.free.Get(end); ok {
		a.free.Delete(end)
		n += l
	}
	a.free.Set(start, n)
}

// deferFree records extents freed by generation gen, to be released by
// releaseUpTo once no reader can still see them.
func (a *allocator) deferFree(gen format.Gen, exts []extent) {
	if len(exts) == 0 {
		return
	}
	// Exactly sized: the list may be kept as long as a scan pins a
	// generation, and appending left up to half of it unused.
	exts = slices.Clone(exts)
	a.mu.Lock()
	a.pending = append(a.pending, pendingFree{gen: gen, extents: exts})
	for _, x := range exts {
		a.npending += x.n
	}
	a.mu.Unlock()
}

// releaseUpTo releases extents freed by generations <= gen and returns them.
func (a *allocator) releaseUpTo(gen format.Gen) []extent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []extent
	keep := a.pending[:0]
	for _, p := range a.pending {
		if p.gen <= gen {
			for _, x := range p.extents {
				a.releaseLocked(x.start, x.n)
				a.npending -= x.n
			}
			out = append(out, p.extents...)
		} else {
			keep = append(keep, p)
		}
	}
	a.pending = keep
	return out
}

// freeBlocks returns the number of blocks the allocator can hand out now.
func (a *allocator) freeBlocks() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nfree
}

// pendingBlocks returns the number of blocks waiting to be released.
func (a *allocator) pendingBlocks() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.npending
}

// claim takes exactly [start, start+n) out of the index; it must be free.
func (a *allocator) claim(start format.BlockNr, n uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var s format.BlockNr
	var l uint64
	found := false
	a.free.Descend(start, func(fs format.BlockNr, fl uint64) bool {
		s, l, found = fs, fl, true
		return false
	})
	if !found || uint64(s)+l < uint64(start)+n {
		return fmt.Errorf("claim of blocks %d+%d that are not free: %w", start, n, format.ErrCorrupt)
	}
	a.free.Delete(s)
	if start > s {
		a.free.Set(s, uint64(start-s))
	}
	if end := uint64(start) + n; end < uint64(s)+l {
		a.free.Set(format.BlockNr(end), uint64(s)+l-end)
	}
	a.nfree -= n
	return nil
}
