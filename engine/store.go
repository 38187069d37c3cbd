package engine

import (
	"fmt"
	"sync"

	"github.com/tidwall/btree"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The image store hosts B-tree nodes on the device, copy-on-write.
//
// Committed blocks never change: a writer that modifies one gets a copy in a
// newly allocated block (Writable), and the old block is released through the
// delayed-ref queue, to be reused only once the generation that stopped
// referencing it is durable and no reader pins an older one. So a reader of a
// pinned generation can read committed blocks without locks, and a cache keyed
// by block number is safe: a number is only reused after every reader that
// could follow a pointer to its old content is gone.
//
// Blocks allocated in the running transaction live in the dirty index
// (tidwall/btree, ordered by block number so commit writes them in disk
// order); the writer modifies them in place until commit seals and writes
// them.

// blockCache holds verified clean blocks by number.
type blockCache struct {
	mu    sync.RWMutex
	m     map[format.BlockNr]format.Node
	limit int
}

func newBlockCache(limit int) *blockCache {
	return &blockCache{m: make(map[format.BlockNr]format.Node), limit: limit}
}

func (c *blockCache) get(b format.BlockNr) (format.Node, bool) {
	c.mu.RLock()
	n, ok := c.m[b]
	c.mu.RUnlock()
	return n, ok
}

func (c *blockCache) put(b format.BlockNr, n format.Node) {
	c.mu.Lock()
	if len(c.m) >= c.limit {
		// Evict an eighth, leaves first (map order is random): interior
		// nodes are few and on every path, so they stay.
		drop := c.limit / 8
		for pass := 0; pass < 2 && drop > 0; pass++ {
			for k, n := range c.m {
				if pass == 0 && !n.IsLeaf() {
					continue
				}
				delete(c.m, k)
				if drop--; drop <= 0 {
					break
				}
			}
		}
	}
	c.m[b] = n
	c.mu.Unlock()
}

func (c *blockCache) drop(b format.BlockNr) {
	c.mu.Lock()
	delete(c.m, b)
	c.mu.Unlock()
}

// readBlock returns the verified committed node at p, from the cache or the
// device. It is safe for concurrent use.
func (e *Engine) readBlock(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	return e.readBlockCached(tree, p, level, true, nil)
}

// readBlockCached reads a block; with fill false a miss is not added to the
// cache (whole-tree scans would otherwise push out the hot set and grow the
// heap by the cache's size).
func (e *Engine) readBlockCached(tree format.TreeID, p eb.Ptr, level int, fill bool, ring *scanRing) (format.Node, error) {
	x := format.Expect{FSID: e.fsid, Block: p.Block, Tree: tree, Gen: p.Gen, Level: level}
	if n, ok := e.cache.get(p.Block); ok {
		// The cached copy was fully verified when it was read or written;
		// matching the header catches a pointer that disagrees with it.
		if err := format.MatchHeader(n, x); err != nil {
			return nil, err
		}
		return n, nil
	}
	if uint64(p.Block) >= e.totalBlocks || p.Block == 0 {
		return nil, &format.CorruptError{Kind: format.KindShortRead, Tree: tree, Block: p.Block,
			Detail: fmt.Sprintf("pointer beyond the %d-block device", e.totalBlocks)}
	}
	var buf []byte
	if ring != nil {
		buf = ring.next(level)
	} else {
		buf = make([]byte, format.BlockSize)
	}
	if _, err := e.dev.ReadAt(buf, int64(p.Block)*format.BlockSize); err != nil {
		e.countIOError(ioRead)
		return nil, fmt.Errorf("read tree %s block %d: %w", tree, p.Block, err)
	}
	if err := format.VerifyNode(buf, x); err != nil {
		if ce, ok := format.AsCorrupt(err); ok && ce.Kind == format.KindBadChecksum {
			e.countIOError(ioCsum)
		}
		return nil, err
	}
	if fill {
		e.cache.put(p.Block, buf)
	}
	return buf, nil
}

// viewStore is the read-only store of a pinned generation.
type viewStore struct {
	e    *Engine
	ring *scanRing // scans: read through the cache without filling it
}

func (s viewStore) Read(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	return s.e.readBlockCached(tree, p, level, s.ring == nil, s.ring)
}

// scanRing recycles the buffers of a one-pass scan: one buffer per tree
// level. A walk (Check, Ascend, Descend, Lookup) holds at most one node per
// level and is done with a level's node when it reads the next one at that
// level, so that node's buffer can take the new one. (Round-robin reuse is
// wrong: a parent with many children would see its own buffer reused while
// it is still being walked.)
type scanRing struct {
	bufs [format.MaxLevel + 1][]byte
}

func (r *scanRing) next(level int) []byte {
	if level < 0 || level >= len(r.bufs) {
		return make([]byte, format.BlockSize)
	}
	if r.bufs[level] == nil {
		r.bufs[level] = make([]byte, format.BlockSize)
	}
	return r.bufs[level]
}

func (s viewStore) Writable(format.TreeID, eb.Ptr, int) (format.Node, eb.Ptr, error) {
	return nil, eb.Ptr{}, ErrReadOnly
}

func (s viewStore) Alloc(format.TreeID, int) (format.Node, eb.Ptr, error) {
	return nil, eb.Ptr{}, ErrReadOnly
}

func (s viewStore) Free(format.TreeID, eb.Ptr, int) error { return ErrReadOnly }

// txnStore is the store of the running transaction. Only the writer (holding
// e.wmu) uses it.
type txnStore struct{ e *Engine }

// BeforeChange calls the filesystem's guard (SetGuard), if one is set,
// before a change to tree at k.
func (s txnStore) BeforeChange(tree format.TreeID, k format.Key) error {
	if g := s.e.guard.Load(); g != nil {
		return (*g)(&Tx{e: s.e, touched: true}, tree, k)
	}
	return nil
}

type dirtyBlock struct {
	node  format.Node
	owner format.TreeID
}

// lookup finds the block p names in dirty, the dirty index of generation
// gen: only pointers of that generation can name one (every block a
// transaction allocates carries its generation), so other pointers skip
// the search, unless invariants are checked.
func lookup(dirty *dirtyIndex, gen format.Gen, tree format.TreeID, p eb.Ptr, level int) (format.Node, bool, error) {
	if p.Gen != gen && !invariants {
		return nil, false, nil
	}
	d, ok := dirty.Get(p.Block)
	if !ok {
		return nil, false, nil
	}
	n := d.node
	if d.owner != tree || n.Gen() != p.Gen || n.Level() != level {
		return nil, false, fmt.Errorf("engine: block %d of generation %d in memory is %s/gen %d/level %d, pointer expects %s/gen %d/level %d: %w",
			p.Block, gen, d.owner, n.Gen(), n.Level(), tree, p.Gen, level, errInternal)
	}
	return n, true, nil
}

func (s txnStore) Read(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	n, _, err := s.read(tree, p, level)
	return n, err
}

// read also reports whether the block is dirty in the running transaction.
func (s txnStore) read(tree format.TreeID, p eb.Ptr, level int) (format.Node, bool, error) {
	t := s.e.txn
	if n, ok, err := lookup(t.dirty, t.gen, tree, p, level); ok || err != nil {
		return n, ok, err
	}
	if c := s.e.inflight.Load(); c != nil {
		// Written out by a commit right now: sealed, never changed again
		// (Writable copies it like any committed block).
		if n, ok, err := lookup(c.dirty, c.gen, tree, p, level); ok || err != nil {
			return n, false, err
		}
	}
	n, err := s.e.readBlock(tree, p, level)
	return n, false, err
}

func (s txnStore) Writable(tree format.TreeID, p eb.Ptr, level int) (format.Node, eb.Ptr, error) {
	n, dirty, err := s.read(tree, p, level)
	if err != nil {
		return nil, eb.Ptr{}, err
	}
	if dirty {
		return n, p, nil
	}
	c, cp, err := s.Alloc(tree, level)
	if err != nil {
		return nil, eb.Ptr{}, err
	}
	copy(c, n)
	c.SetBlock(cp.Block)
	c.SetGen(cp.Gen)
	if err := s.Free(tree, p, level); err != nil {
		return nil, eb.Ptr{}, err
	}
	return c, cp, nil
}

func (s txnStore) Alloc(tree format.TreeID, level int) (format.Node, eb.Ptr, error) {
	e, t := s.e, s.e.txn
	b, err := e.alloc.allocate(1, t.metaHint)
	if err != nil {
		return nil, eb.Ptr{}, fmt.Errorf("allocate block for tree %s: %w", tree, err)
	}
	t.metaHint = b + 1
	t.newExtents[b] = &newExtent{n: 1}
	n := format.InitNode(make([]byte, format.BlockSize), e.fsid, b, t.gen, tree, level)
	t.dirty.Set(b, dirtyBlock{node: n, owner: tree})
	e.ref(b, 1, format.Owner{Tree: tree}, format.ExtentMeta, +1)
	return n, eb.Ptr{Block: b, Gen: t.gen}, nil
}

func (s txnStore) Free(tree format.TreeID, p eb.Ptr, level int) error {
	e, t := s.e, s.e.txn
	t.dirty.Delete(p.Block)
	e.ref(p.Block, 1, format.Owner{Tree: tree}, format.ExtentMeta, -1)
	return nil
}

// dirtyIndex holds a transaction's dirty blocks: ordered by block number
// (tidwall/btree) for the commit's sweep, with a hash index in front for
// the lookups every node read makes (a hash probe costs less than a walk
// down the ordered index, and reads far outnumber changes).
type dirtyIndex struct {
	ordered *btree.Map[format.BlockNr, dirtyBlock]
	byNr    map[format.BlockNr]dirtyBlock
}

func newDirtyIndex() *dirtyIndex {
	return &dirtyIndex{ordered: btree.NewMap[format.BlockNr, dirtyBlock](32), byNr: map[format.BlockNr]dirtyBlock{}}
}

func (x *dirtyIndex) Get(b format.BlockNr) (dirtyBlock, bool) {
	d, ok := x.byNr[b]
	return d, ok
}

func (x *dirtyIndex) Set(b format.BlockNr, d dirtyBlock) {
	x.byNr[b] = d
	x.ordered.Set(b, d)
}

func (x *dirtyIndex) Delete(b format.BlockNr) {
	if _, ok := x.byNr[b]; ok {
		delete(x.byNr, b)
		x.ordered.Delete(b)
	}
}

func (x *dirtyIndex) Len() int { return len(x.byNr) }

// Scan calls fn for every block in block order until fn returns false.
func (x *dirtyIndex) Scan(fn func(b format.BlockNr, d dirtyBlock) bool) { x.ordered.Scan(fn) }
