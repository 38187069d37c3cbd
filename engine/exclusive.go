package engine

import (
	"context"
	"encoding/binary"
	"fmt"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Tools for online tree rebuilds (the XFS design), and logged operations
// (the bcachefs design) that make their multi-transaction steps safe.
//
// A rebuild reserves blocks for the new tree in one ordinary transaction,
// writes the new tree into them outside any transaction (they are allocated
// and referenced by nothing, so no reader can see them), swaps the root in a
// short exclusive section, and frees the old tree's blocks afterwards in
// ordinary transactions. A crash between those steps would leave blocks
// allocated that nothing uses; so each step that leaves such blocks behind
// records a logged operation — "free these blocks of this owner" — in the
// logged_ops tree in the same transaction, and the step that makes them used
// (the swap) or frees them (the reap) removes or shrinks it. Mount runs the
// logged_ops recovery pass, which completes whatever operation is left. Each
// commit is atomic, so after a crash the image holds the old tree or the new
// one, and never leaks or double-frees a block.

// Exclusive is the writer's view during an exclusive section: a Tx with
// every other writer excluded, plus the engine-internal operations a swap
// needs.
type Exclusive struct {
	*Tx
}

// RunExclusive commits the running transaction, then runs fn with every
// other writer excluded, then commits what fn did. When fn starts, every
// change up to the first commit has been published to the hooks. If fn
// fails after changing anything, its transaction is aborted (the engine
// turns read-only; the first commit stays).
func (e *Engine) RunExclusive(fn func(x *Exclusive) error) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if err := e.writable(); err != nil {
		return err
	}
	if err := e.commitLocked(); err != nil {
		return err
	}
	x := &Exclusive{Tx: &Tx{e: e}}
	if err := fn(x); err != nil {
		if x.touched {
			e.abort(err)
		}
		return err
	}
	return e.commitLocked()
}

// ReserveMeta allocates n metadata blocks owned by tree id and queues their
// allocation; they are meant to be written outside the transaction system
// (a bulk-loaded tree) and linked in later. Record a logged operation that
// frees them in the same transaction.
func (tx *Tx) ReserveMeta(id format.TreeID, n int) ([]format.BlockNr, error) {
	e := tx.e
	if free := e.alloc.freeBlocks(); uint64(n) > free {
		return nil, fmt.Errorf("reserve %d blocks for tree %s, %d free: %w", n, id, free, ErrNoSpace)
	}
	tx.touched = true
	out := make([]format.BlockNr, 0, n)
	for i := 0; i < n; i++ {
		b, err := e.alloc.allocate(1, e.txn.metaHint)
		if err != nil {
			return nil, fmt.Errorf("reserve %d blocks for tree %s: %w", n, id, err)
		}
		e.txn.metaHint = b + 1
		e.txn.newExtents[b] = &newExtent{n: 1}
		e.ref(b, 1, format.Owner{Tree: id}, format.ExtentMeta, +1)
		e.cache.drop(b)
		out = append(out, b)
	}
	return out, nil
}

// FreeMeta queues the release of metadata blocks of tree id that no tree
// references any more (the reaping of a replaced tree, a logged operation).
func (tx *Tx) FreeMeta(id format.TreeID, blocks []format.BlockNr) {
	tx.touched = true
	for _, b := range blocks {
		tx.e.txn.dirty.Delete(b)
		tx.e.ref(b, 1, format.Owner{Tree: id}, format.ExtentMeta, -1)
	}
}

// ReplaceTree makes the tree rooted at root (level, items) tree id from
// this transaction on; it is recorded in the root tree at commit. The
// caller has made sure the tree's blocks are written and flushed or dirty in
// this transaction, and owned by id.
func (tx *Tx) ReplaceTree(id format.TreeID, root eb.Ptr, level int, items uint64) {
	tx.touched = true
	tx.e.trees[id] = eb.Open(txnStore{tx.e}, id, root, level, items)
}

// WriteMeta seals nodes built outside the transaction system in blocks
// reserved by ReserveMeta and writes them to the device. It does not flush:
// the commit that first points at them flushes them before its superblock.
func (e *Engine) WriteMeta(nodes []format.Node) error {
	for _, n := range nodes {
		n.Seal()
		if _, err := e.dev.WriteAt(n, int64(n.Block())*format.BlockSize); err != nil {
			e.countIOError(ioWrite)
			return fmt.Errorf("write block %d: %w", n.Block(), err)
		}
		e.cache.drop(n.Block())
	}
	return nil
}

// SetRmapSick marks the rmap tree as damaged (true: the engine stops
// updating it and only publishes rmap events) or healthy again.
func (e *Engine) SetRmapSick(sick bool) { e.rmapSick.Store(sick) }

// RmapSick reports whether the rmap tree is marked damaged.
func (e *Engine) RmapSick() bool { return e.rmapSick.Load() }

// --- logged operations ---

// TypeLoggedOp keys a logged operation: (op id, 90, part, 0) → payload.
const TypeLoggedOp uint8 = 90

// Logged operation kinds.
const opFreeBlocks = 1

// maxOpBlocks is how many block numbers one logged-op item holds.
const maxOpBlocks = (format.MaxValueSize - 16) / 8

// LogFreeBlocks records, in this transaction, the intent to free blocks of
// tree owner; it returns the operation's id for DropLoggedOp. If the
// operation is still recorded at mount, the logged_ops pass frees them.
func (tx *Tx) LogFreeBlocks(owner format.TreeID, blocks []format.BlockNr) (uint64, error) {
	tr, err := tx.Tree(format.TreeLoggedOps)
	if err != nil {
		return 0, err
	}
	id := tx.NextObjectID()
	for part := 0; part*maxOpBlocks < len(blocks) || part == 0; part++ {
		chunk := blocks[part*maxOpBlocks : min(len(blocks), (part+1)*maxOpBlocks)]
		v := make([]byte, 16+8*len(chunk))
		binary.LittleEndian.PutUint64(v, opFreeBlocks)
		binary.LittleEndian.PutUint64(v[8:], uint64(owner))
		for i, b := range chunk {
			binary.LittleEndian.PutUint64(v[16+8*i:], uint64(b))
		}
		if err := tr.Put(format.Key{Obj: id, Type: TypeLoggedOp, Off: uint64(part)}, v); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// DropLoggedOp removes a logged operation (it was completed or made moot).
func (tx *Tx) DropLoggedOp(id uint64) error {
	tr, err := tx.Tree(format.TreeLoggedOps)
	if err != nil {
		return err
	}
	var keys []format.Key
	if err := tr.Ascend(format.Key{Obj: id, Type: TypeLoggedOp}, func(k format.Key, _ []byte) bool {
		if k.Obj != id || k.Type != TypeLoggedOp {
			return false
		}
		keys = append(keys, k)
		return true
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := tr.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// passLoggedOps completes the logged operations a crash interrupted.
func passLoggedOps(_ context.Context, e *Engine) error {
	type op struct {
		owner  format.TreeID
		blocks []format.BlockNr
	}
	ops := map[uint64]*op{}
	var order []uint64
	tr := e.trees[format.TreeLoggedOps]
	var derr error
	if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != TypeLoggedOp {
			return true
		}
		if len(v) < 16 || (len(v)-16)%8 != 0 || binary.LittleEndian.Uint64(v) != opFreeBlocks {
			derr = fmt.Errorf("logged operation %d: unknown or malformed (%d bytes): %w", k.Obj, len(v), format.ErrCorrupt)
			return false
		}
		o := ops[k.Obj]
		if o == nil {
			o = &op{owner: format.TreeID(binary.LittleEndian.Uint64(v[8:]))}
			ops[k.Obj] = o
			order = append(order, k.Obj)
		}
		for i := 16; i < len(v); i += 8 {
			b := format.BlockNr(binary.LittleEndian.Uint64(v[i:]))
			if uint64(b) >= e.totalBlocks || b == 0 {
				derr = fmt.Errorf("logged operation %d names block %d: %w", k.Obj, b, format.ErrCorrupt)
				return false
			}
			o.blocks = append(o.blocks, b)
		}
		return true
	}); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	if len(order) == 0 {
		return nil
	}
	if err := e.Update(func(tx *Tx) error {
		for _, id := range order {
			tx.FreeMeta(ops[id].owner, ops[id].blocks)
			if err := tx.DropLoggedOp(id); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("completed %d interrupted logged operations", len(order)))
	return e.Sync()
}
