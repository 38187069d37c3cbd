package engine

import (
	"fmt"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The exclusive section of an online tree rebuild (the XFS design).
//
// A rebuild builds the replacement tree in memory from a pinned generation
// and keeps it current from the hooks; then, in one short section with the
// writer excluded, it commits what is queued (so every change up to now is
// in its shadow), reserves blocks for the new tree, bulk-loads the shadow
// into them, swaps the root, queues the old tree's blocks to be freed, and
// commits. The reserved blocks' own allocation and rmap records, and the
// removal of the old blocks' records, go through the delayed-ref queue of
// that same commit, applied to the new tree. Either commit is atomic: a
// crash leaves the old tree or the new one.

// Exclusive is the writer's view during an exclusive section.
type Exclusive struct {
	e        *Engine
	reserved map[format.BlockNr]bool
}

// RunExclusive commits the running transaction, then runs fn with every
// other writer excluded, then commits what fn did. When fn starts, every
// change up to the first commit has been published to the hooks. If fn
// fails, its transaction is aborted (the engine turns read-only; the first
// commit stays).
func (e *Engine) RunExclusive(fn func(x *Exclusive) error) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if err := e.writable(); err != nil {
		return err
	}
	if err := e.commitLocked(); err != nil {
		return err
	}
	x := &Exclusive{e: e, reserved: map[format.BlockNr]bool{}}
	if err := fn(x); err != nil {
		e.abort(err)
		return err
	}
	return e.commitLocked()
}

// Gen returns the generation of the section's transaction.
func (x *Exclusive) Gen() format.Gen { return x.e.txn.gen }

// Tree returns the current tree id (read-only use).
func (x *Exclusive) Tree(id format.TreeID) (*eb.Tree, bool) {
	t, ok := x.e.trees[id]
	return t, ok
}

// ReserveBlocks allocates n metadata blocks for tree id and queues their
// allocation (owner id). They become the new tree's blocks through
// BuildStore.
func (x *Exclusive) ReserveBlocks(id format.TreeID, n int) ([]format.BlockNr, error) {
	e := x.e
	out := make([]format.BlockNr, 0, n)
	for i := 0; i < n; i++ {
		b, err := e.alloc.allocate(1, e.txn.metaHint)
		if err != nil {
			return nil, fmt.Errorf("reserve %d blocks for tree %s: %w", n, id, err)
		}
		e.txn.metaHint = b + 1
		e.txn.newExtents[b] = &newExtent{n: 1}
		e.ref(b, 1, format.Owner{Tree: id}, format.ExtentMeta, +1)
		x.reserved[b] = true
		out = append(out, b)
	}
	return out, nil
}

// BuildStore returns a store whose Alloc hands out the given reserved
// blocks, in order, as nodes of tree id in this transaction, and that
// fails once they are used up. After the build the tree lives in the
// transaction like any other (use ReplaceTree).
func (x *Exclusive) BuildStore(id format.TreeID, blocks []format.BlockNr) eb.Store {
	return &reservedStore{x: x, id: id, blocks: blocks}
}

type reservedStore struct {
	x      *Exclusive
	id     format.TreeID
	blocks []format.BlockNr
}

func (s *reservedStore) Read(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	return txnStore{s.x.e}.Read(tree, p, level)
}

func (s *reservedStore) Writable(tree format.TreeID, p eb.Ptr, level int) (format.Node, eb.Ptr, error) {
	n, err := s.Read(tree, p, level)
	return n, p, err
}

func (s *reservedStore) Alloc(tree format.TreeID, level int) (format.Node, eb.Ptr, error) {
	if tree != s.id || len(s.blocks) == 0 {
		return nil, eb.Ptr{}, fmt.Errorf("bulk load of tree %s used more blocks than reserved: %w", tree, errInternal)
	}
	b := s.blocks[0]
	s.blocks = s.blocks[1:]
	e := s.x.e
	n := format.InitNode(make([]byte, format.BlockSize), e.fsid, b, e.txn.gen, tree, level)
	e.txn.dirty.Set(b, dirtyBlock{node: n, owner: tree})
	e.cache.drop(b)
	return n, eb.Ptr{Block: b, Gen: e.txn.gen}, nil
}

func (s *reservedStore) Free(format.TreeID, eb.Ptr, int) error {
	return fmt.Errorf("bulk load frees nothing: %w", errInternal)
}

// ReplaceTree makes t (built in this transaction) tree id, to be recorded
// in the root tree at commit.
func (x *Exclusive) ReplaceTree(id format.TreeID, t *eb.Tree) {
	x.e.trees[id] = eb.Open(txnStore{x.e}, id, t.Root, t.Level, t.Items)
}

// FreeBlocks queues the release of old metadata blocks of tree id (the
// reaping of a replaced tree).
func (x *Exclusive) FreeBlocks(id format.TreeID, blocks []format.BlockNr) {
	for _, b := range blocks {
		x.e.txn.dirty.Delete(b)
		x.e.ref(b, 1, format.Owner{Tree: id}, format.ExtentMeta, -1)
	}
}

// SetRmapSick marks the rmap tree as damaged (true: the engine stops
// updating it and only publishes rmap events) or healthy again.
func (e *Engine) SetRmapSick(sick bool) { e.rmapSick.Store(sick) }

// RmapSick reports whether the rmap tree is marked damaged.
func (e *Engine) RmapSick() bool { return e.rmapSick.Load() }
