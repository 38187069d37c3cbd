package engine

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
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
// records a logged operation in the logged_ops tree in the same transaction.
// Two kinds: "free these blocks of this owner" (completed unconditionally,
// so it must be logged and dropped in the very commits that make the
// blocks unused and used), and "free those of these blocks that no tree
// reaches" (completed only for blocks still allocated as metadata and
// reached by no tree root, the superblock or the log head — so it can be
// logged before the swap, while the listed blocks are still in use, and
// dropped after the reaping, in ordinary transactions). Mount runs the
// logged_ops recovery pass, which completes whatever operation is left.
// Each commit is atomic, so after a crash the image holds the old tree or
// the new one, and never leaks or double-frees a block.

// Exclusive is the writer's view during an exclusive section: a Tx with
// every other writer excluded, plus the engine-internal operations a swap
// needs.
type Exclusive struct {
	*Tx
	since time.Time
}

// Held reports how long writers have been held out so far (from before the
// first commit was prepared).
func (x *Exclusive) Held() time.Duration { return time.Since(x.since) }

// RunExclusive commits the running transaction, then runs fn with every
// other writer excluded, then commits what fn did. When fn starts, every
// change up to the first commit has been published to the hooks. If fn
// fails after changing anything, its transaction is aborted (the engine
// turns read-only; the first commit stays).
//
// Writers are held out only while the first commit is prepared (its delayed
// refs were applied ahead, in slices) and while fn runs; the first commit is
// written out meanwhile. What fn did is then committed like any other
// change: writers that resume join its transaction, which is atomic all the
// same.
func (e *Engine) RunExclusive(fn func(x *Exclusive) error) error {
	if err := e.settleAhead(); err != nil {
		return err
	}
	if err := e.runExclusive(fn); err != nil {
		return err
	}
	return e.commit()
}

func (e *Engine) runExclusive(fn func(x *Exclusive) error) error {
	defer e.lockCommits()()
	if err := e.writable(); err != nil {
		return err
	}
	x := &Exclusive{Tx: &Tx{e: e}, since: time.Now()}
	first, err := e.prepareCommit()
	if err != nil {
		return err
	}
	written := make(chan error, 1)
	if first != nil {
		go func() { written <- e.writeOut(first) }()
	} else {
		written <- nil
	}
	ferr := fn(x)
	if ferr != nil && x.touched {
		e.abort(ferr)
	}
	// The first commit must be durable before the next one is prepared
	// (one commit in flight): wait for it with writers back in.
	e.wmu.Unlock()
	werr := <-written
	e.wmu.Lock()
	if werr != nil {
		return werr
	}
	return ferr
}

// ReserveMeta allocates n metadata blocks owned by tree id and queues their
// allocation; they are meant to be written outside the transaction system
// (a bulk-loaded tree) and linked in later. Record a logged operation that
// frees them in the same transaction.
func (tx *Tx) ReserveMeta(id format.TreeID, n int) ([]format.BlockNr, error) {
	e := tx.e
	if e.Sick(StructLoggedOps) {
		// The logged operation that must go with the reservation could
		// fail after it, aborting the transaction: refuse before.
		return nil, fmt.Errorf("reserve %d blocks for tree %s: the logged_ops tree is damaged (repair it first)", n, id)
	}
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
// reserved by ReserveMeta and writes them to the device, nodes of adjacent
// blocks (in the order given) in one write, each write written back before
// the next where the device can (so that at most one write's worth is in
// flight when a writer's fsync comes). It does not flush: the commit that
// first points at them flushes them before its superblock (or call
// FlushMeta).
func (e *Engine) WriteMeta(nodes []format.Node) error { return e.writeMeta(nodes, false) }

// WriteMetaBehind is WriteMeta for bulk writes, giving way to the
// foreground between its writes: after a write during which an fsync was
// pending it rests as long as the write took, leaving the device to the
// fsyncs half the time, and it starts no further write while a commit is
// being written out (waiting at most maxYieldToForeground).
func (e *Engine) WriteMetaBehind(nodes []format.Node) error { return e.writeMeta(nodes, true) }

func (e *Engine) writeMeta(nodes []format.Node, behind bool) error {
	var after func(off, n int64) error
	wb, canWait := e.dev.(disk.Writebacker)
	began := time.Now()
	if canWait || behind {
		after = func(off, n int64) error {
			var err error
			if canWait {
				err = wb.Writeback(off, n, true)
			}
			if behind {
				e.giveWay(time.Since(began))
				began = time.Now()
			}
			return err
		}
	}
	w := e.newRunWriter(len(nodes), after)
	err := func() error {
		for _, n := range nodes {
			e.cache.drop(n.Block())
			n.Seal()
			if err := w.add(n); err != nil {
				return err
			}
		}
		return w.flush()
	}()
	if err != nil {
		e.countIOError(ioWrite)
	}
	return err
}

// maxYieldToForeground bounds how long one bulk write waits for a commit's
// write-out, so that commits back to back cannot starve it.
const maxYieldToForeground = 100 * time.Millisecond

// giveWay is what a bulk write does after each write, which took took:
// rest as long if an fsync is pending, then wait while a commit is being
// written out (at most maxYieldToForeground).
func (e *Engine) giveWay(took time.Duration) {
	if e.fsyncing.Load() > 0 {
		time.Sleep(took)
	}
	for waited := time.Duration(0); e.writingOut.Load() > 0 && waited < maxYieldToForeground; waited += time.Millisecond {
		time.Sleep(time.Millisecond)
	}
}

// FlushMeta flushes what WriteMeta wrote, so that the writes are not left
// for the next commit's (or a writer's fsync's) flush to carry.
func (e *Engine) FlushMeta() error {
	if err := e.dev.Flush(); err != nil {
		e.countIOError(ioWrite)
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// SetRmapSick marks the rmap tree as damaged (true: the engine stops
// updating it and only publishes rmap events) or healthy again (a rebuild
// swapped a new tree in), in the structures' health.
func (e *Engine) SetRmapSick(sick bool) {
	gen := e.committedGen()
	if sick {
		e.MarkSick(StructRmap, gen, ErrRmapSick)
	} else {
		e.MarkRepaired(StructRmap, gen)
	}
}

// RmapSick reports whether the rmap tree is marked damaged.
func (e *Engine) RmapSick() bool { return e.Degraded(StructRmap) }

// --- logged operations ---

// TypeLoggedOp keys a logged operation: (op id, 90, part, 0) → payload.
const TypeLoggedOp uint8 = 90

// Logged operation kinds.
const (
	opFreeBlocks      = 1 // free every listed block
	opFreeUnreachable = 2 // free the listed blocks no tree reaches
)

// maxOpBlocks is how many block numbers one logged-op item holds.
const maxOpBlocks = (format.MaxValueSize - 16) / 8

// LoggedOpPart is how many blocks each part of a logged operation holds:
// part i of an operation logged with blocks lists
// blocks[i*LoggedOpPart : (i+1)*LoggedOpPart].
const LoggedOpPart = maxOpBlocks

// LogFreeBlocks records, in this transaction, the intent to free blocks of
// tree owner; the logged_ops recovery pass frees them unless the operation
// is dropped first. It returns the operation's id.
func (tx *Tx) LogFreeBlocks(owner format.TreeID, blocks []format.BlockNr) (uint64, error) {
	return tx.logOp(opFreeBlocks, owner, blocks)
}

// LogFreeUnreachable records, in this transaction, the intent to free
// those of blocks — metadata blocks of tree owner — that, when the
// operation is completed, are still allocated as metadata and reached by
// no tree: blocks set aside for a tree not linked in yet, or a replaced
// tree's blocks once the swap has committed. Blocks in use are left alone,
// so unlike LogFreeBlocks the operation can be logged long before the swap
// and dropped long after the reaping, in ordinary transactions. Completing
// one walks every tree's interior nodes at mount.
func (tx *Tx) LogFreeUnreachable(owner format.TreeID, blocks []format.BlockNr) (uint64, error) {
	return tx.logOp(opFreeUnreachable, owner, blocks)
}

func (tx *Tx) logOp(kind uint64, owner format.TreeID, blocks []format.BlockNr) (uint64, error) {
	// A new operation's id is the largest yet: its path is the tree's
	// rightmost one. Read it before changing anything, so that damage
	// fails only this step (marking logged_ops sick), not the transaction.
	rt, _ := tx.ReadTree(format.TreeLoggedOps)
	if _, _, err := rt.Get(format.Key{Obj: ^uint64(0), Type: ^uint8(0)}, nil); err != nil {
		tx.e.LoggedOpsDamaged(err)
		return 0, fmt.Errorf("log an operation: %w", err)
	}
	tr, err := tx.Tree(format.TreeLoggedOps)
	if err != nil {
		return 0, err
	}
	id := tx.NextObjectID()
	for part := 0; part*maxOpBlocks < len(blocks) || part == 0; part++ {
		chunk := blocks[part*maxOpBlocks : min(len(blocks), (part+1)*maxOpBlocks)]
		v := make([]byte, 16+8*len(chunk))
		binary.LittleEndian.PutUint64(v, kind)
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
	// Read before changing anything: damage fails only this step.
	rt, _ := tx.ReadTree(format.TreeLoggedOps)
	var keys []format.Key
	if err := rt.Ascend(format.Key{Obj: id, Type: TypeLoggedOp}, func(k format.Key, _ []byte) bool {
		if k.Obj != id || k.Type != TypeLoggedOp {
			return false
		}
		keys = append(keys, k)
		return true
	}); err != nil {
		tx.e.LoggedOpsDamaged(err)
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	tr, err := tx.Tree(format.TreeLoggedOps)
	if err != nil {
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
//
// Damage does not refuse the mount. The tree is read whole before
// anything changes: if a block of it, or an operation's record, is bad,
// the logged_ops structure is marked sick and nothing is completed (an
// operation half read could free too little; completing the readable ones
// would mean deleting from a damaged tree). The blocks the operations
// name stay allocated — leaked, never freed wrongly — until the
// repairer (repair/loggedops_repair.go) frees every metadata block no
// tree reaches and writes an empty tree. Damage met walking the other
// trees (to tell which candidates are unreachable) marks that structure
// sick and leaves every operation for a later mount.
func passLoggedOps(_ context.Context, e *Engine) error {
	type op struct {
		kind   uint64
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
		if k.Obj == scrubCursorID {
			// Not an operation to complete: the scrub's state (see
			// scrubcursor.go); a damaged one is only ignored.
			return true
		}
		if len(v) < 16 || (len(v)-16)%8 != 0 {
			derr = fmt.Errorf("logged operation %d: malformed (%d bytes): %w", k.Obj, len(v), format.ErrCorrupt)
			return false
		}
		kind := binary.LittleEndian.Uint64(v)
		if kind != opFreeBlocks && kind != opFreeUnreachable {
			derr = fmt.Errorf("logged operation %d: unknown kind %d: %w", k.Obj, kind, format.ErrCorrupt)
			return false
		}
		o := ops[k.Obj]
		if o == nil {
			o = &op{kind: kind, owner: format.TreeID(binary.LittleEndian.Uint64(v[8:]))}
			ops[k.Obj] = o
			order = append(order, k.Obj)
		}
		if o.kind != kind {
			derr = fmt.Errorf("logged operation %d: parts of kinds %d and %d: %w", k.Obj, o.kind, kind, format.ErrCorrupt)
			return false
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
		derr = err
	}
	if derr != nil {
		if e.LoggedOpsDamaged(derr) {
			e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the logged_ops tree is damaged (%v): interrupted operations left until it is rebuilt", derr))
			return nil
		}
		return derr
	}
	if len(order) == 0 {
		return nil
	}
	// Unconditional frees first; then the candidates of the conditional
	// operations that no tree reaches and that are still allocated as
	// metadata. Each block is freed once, however many operations name it.
	freed := map[format.BlockNr]bool{}
	cands := map[format.BlockNr]format.TreeID{}
	for _, id := range order {
		if o := ops[id]; o.kind == opFreeBlocks {
			for _, b := range o.blocks {
				freed[b] = true
			}
		}
	}
	for _, id := range order {
		if o := ops[id]; o.kind == opFreeUnreachable {
			for _, b := range o.blocks {
				if !freed[b] {
					cands[b] = o.owner
				}
			}
		}
	}
	var unreachable map[format.TreeID][]format.BlockNr
	if len(cands) > 0 {
		var err error
		if unreachable, err = e.unreachableMeta(cands); err != nil {
			if e.NoteDamage(err) {
				e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("%d interrupted logged operations left for a later mount: %v", len(order), err))
				return nil
			}
			return fmt.Errorf("logged operations: %w", err)
		}
	}
	nfree := 0
	if err := e.Update(func(tx *Tx) error {
		for _, id := range order {
			if o := ops[id]; o.kind == opFreeBlocks {
				tx.FreeMeta(o.owner, o.blocks)
				nfree += len(o.blocks)
			}
		}
		for owner, bs := range unreachable {
			tx.FreeMeta(owner, bs)
			nfree += len(bs)
		}
		for _, id := range order {
			if err := tx.DropLoggedOp(id); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("completed %d interrupted logged operations (%d blocks freed)", len(order), nfree))
	return e.Sync()
}

// unreachableMeta returns, by owner, the candidate blocks that no tree of
// the running transaction reaches, that are not a superblock copy or the
// log head, and that the alloc tree holds as one-block metadata extents.
func (e *Engine) unreachableMeta(cands map[format.BlockNr]format.TreeID) (map[format.TreeID][]format.BlockNr, error) {
	left := maps.Clone(cands)
	for _, b := range format.SuperBlocks(e.totalBlocks) {
		delete(left, b)
	}
	delete(left, e.super.Log.Block)
	for id, t := range e.trees {
		if err := t.Blocks(func(p eb.Ptr, _ int) bool {
			delete(left, p.Block)
			return len(left) > 0
		}); err != nil {
			return nil, fmt.Errorf("walk tree %s: %w", id, err)
		}
		if len(left) == 0 {
			return nil, nil
		}
	}
	out := map[format.TreeID][]format.BlockNr{}
	for _, b := range slices.Sorted(maps.Keys(left)) {
		n, it, ok, err := e.extentAt(b)
		if err != nil {
			return nil, fmt.Errorf("alloc record of block %d: %w", b, err)
		}
		if !ok {
			continue // freed already
		}
		if n != 1 || it.Flags != format.ExtentMeta {
			continue // reused for data
		}
		out[left[b]] = append(out[left[b]], b)
	}
	return out, nil
}

// FreeBlocks returns the engine's count of free blocks (what the next
// commit writes into the superblock).
func (x *Exclusive) FreeBlocks() uint64 { return x.e.freeCount }

// CorrectFreeBlocks adds delta to the count of free blocks: a rebuilt
// free-space tree knows the true count, which a count carried over from a
// damaged tree may have missed.
func (x *Exclusive) CorrectFreeBlocks(delta int64) {
	x.e.freeCount = uint64(int64(x.e.freeCount) + delta)
	x.e.txn.superDirty = true
}
