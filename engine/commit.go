package engine

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// Commit (the only way a generation becomes durable).
//
//  1. Apply the delayed-ref queue and record every changed tree root in the
//     root tree, repeating until neither queues anything more.
//  2. Write every dirty block, in block order, to the place the allocator
//     gave it: blocks that no committed generation references.
//  3. Flush.
//  4. Write the superblock copies (new generation, root tree root, counters).
//  5. Flush.
//
// A crash before step 5 completes leaves at least the previous generation's
// superblock copies valid (each copy is either the old or the new one; a torn
// copy fails its checksum), and everything the previous generation
// references intact: step 2 never overwrites a block it references, because
// blocks it freed are not reused until this commit is durable. Mount takes
// the newest valid copy, so it sees the old generation or the new one, never
// a mix.
//
// Only step 1 holds writers out (as btrfs unblocks a new transaction once
// the committing one's roots are switched), and most of its work is done
// before: settleAhead applies the delayed-ref queue in slices, taking wmu
// for each, so writers run between them. prepareCommit runs step 1 under wmu,
// seals the dirty blocks and opens the next transaction; writeOut runs steps
// 2-5 and publishes the generation with wmu released, holding cmu, which
// serializes commits; fsyncs append to the log meanwhile (log.go). The next transaction reads the
// committing one's blocks from its dirty index (inflight) until they are
// published to the cache, and copies them before changing them, as it would
// committed blocks.

// maxCommitPasses bounds step 1; it converges in two or three passes.
const maxCommitPasses = 64

// maxWriteRun bounds one coalesced write.
const maxWriteRun = 256

// pendingCommit is a generation whose delayed refs are settled and whose
// blocks are sealed, waiting to be written and published.
type pendingCommit struct {
	gen   format.Gen
	dirty *dirtyIndex
	super format.Super
	roots map[format.TreeID]format.RootItem
	// logFree are the blocks of the fsync log chain the generation makes
	// obsolete, released once it is durable.
	logFree []extent
	// newExtents are the extents the generation allocated (read only from
	// here on): an fsync during the write-out logs their checksums.
	newExtents map[format.BlockNr]*newExtent
}

// commitLocked commits the running transaction and returns when it is
// durable, holding wmu throughout (mkfs, mount, close).
func (e *Engine) commitLocked() error {
	c, err := e.prepareCommit()
	if err != nil || c == nil {
		return err
	}
	return e.writeOut(c)
}

// commit commits the running transaction and returns when it is durable;
// writers are held out only while it is prepared (after the delayed refs
// were applied ahead, in slices).
func (e *Engine) commit() error {
	if e.opts.FlushAhead != nil {
		if err := e.opts.FlushAhead(); err != nil {
			return err
		}
	}
	if err := e.settleAhead(); err != nil {
		return err
	}
	e.cmu.Lock()
	defer e.cmu.Unlock()
	e.wmu.Lock()
	if err := e.writable(); err != nil {
		e.wmu.Unlock()
		if e.opts.ReadOnly {
			return nil
		}
		return err
	}
	c, err := e.prepareCommit()
	e.wmu.Unlock()
	if err != nil || c == nil {
		return err
	}
	return e.writeOut(c)
}

// prepareCommit runs step 1, seals the dirty blocks, hands the allocator
// the blocks the generation frees (released once it is durable and no
// reader pins an older one), and opens the next transaction. It returns
// nil if there is nothing to commit. Called with wmu held and no commit
// in flight (cmu held, or no concurrency yet).
func (e *Engine) prepareCommit() (*pendingCommit, error) {
	t := e.txn
	began := time.Now()
	defer func() { e.holds.record(time.Since(began)) }()
	if e.opts.BeforeCommit != nil {
		tx := &Tx{e: e}
		if err := e.opts.BeforeCommit(tx); err != nil {
			err = fmt.Errorf("commit generation %d: write out delayed allocations: %w", t.gen, err)
			e.abort(err)
			return nil, err
		}
	}
	if e.takeErrorCounts() {
		t.superDirty = true
	}
	if e.degradedDirty.Swap(false) {
		t.superDirty = true
	}
	if t.dirty.Len() == 0 && e.refs.len() == 0 && !t.superDirty {
		return nil, nil
	}
	fail := func(step string, err error) error {
		err = fmt.Errorf("commit generation %d: %s: %w", t.gen, step, err)
		e.abort(err)
		return err
	}
	for pass := 0; ; pass++ {
		if pass == maxCommitPasses {
			return nil, fail("settle", fmt.Errorf("delayed refs did not converge: %w", errInternal))
		}
		if err := e.runDelayedRefs(); err != nil {
			return nil, fail("delayed refs", err)
		}
		if err := e.recordRoots(); err != nil {
			return nil, fail("record roots", err)
		}
		if e.refs.len() == 0 {
			break
		}
	}
	t.dirty.Scan(func(_ format.BlockNr, d dirtyBlock) bool {
		d.node.Seal()
		return true
	})
	root := e.trees[format.TreeRoot]
	sb := e.super
	sb.Gen = t.gen
	sb.Root = format.RootPtr{Block: root.Root.Block, Gen: root.Root.Gen, Level: uint8(root.Level)}
	sb.FreeBlocks = e.freeCount
	sb.RecoveryPasses = e.degradedBits(sb.RecoveryPasses)
	sb.Errors = slices.Clone(e.super.Errors)
	sb.Devices = slices.Clone(e.super.Devices)
	if len(sb.Devices) > 0 {
		sb.Devices[0].ReadErrors += e.ioErrs[ioRead].Swap(0)
		sb.Devices[0].WriteErrors += e.ioErrs[ioWrite].Swap(0)
		sb.Devices[0].CsumErrors += e.ioErrs[ioCsum].Swap(0)
	}
	sb.Block = 0
	// The fsync log goes on after the block the next append will use;
	// what came before it is obsolete once this generation is durable.
	logFree := e.advanceLog(&sb)
	roots := make(map[format.TreeID]format.RootItem, len(e.trees))
	for id, tr := range e.trees {
		roots[id] = format.RootItem{Root: format.RootPtr{Block: tr.Root.Block, Gen: tr.Root.Gen, Level: uint8(tr.Level)}, Items: tr.Items, Flags: e.recorded[id].Flags}
	}
	backupRoots(&sb, roots)
	e.super = sb
	// Blocks this generation freed return to the allocator once it is
	// durable and no reader pins an older one; the fsync log's obsolete
	// blocks once it is durable.
	e.alloc.deferFree(t.gen, t.pendingFree)
	held := func() []extent {
		h := slices.Clone(logFree)
		for _, b := range e.flog.transient {
			h = append(h, extent{b, 1})
		}
		return h
	}
	if e.reconcileAlloc {
		e.reconcileAlloc = false
		gained, lost, err := e.reconcileAllocator(held())
		if err != nil {
			return nil, fail("reconcile the allocator with the free-space tree", err)
		}
		if gained+lost > 0 {
			e.log.Warn("allocator reconciled with the rebuilt free-space tree", "gained_blocks", gained, "lost_blocks", lost)
		}
	}
	if invariants && !e.replaying {
		e.checkAllocator(held())
	}
	c := &pendingCommit{gen: t.gen, dirty: t.dirty, super: sb, roots: roots, logFree: logFree, newExtents: t.newExtents}
	e.inflight.Store(c)
	next := newTxn(t.gen + 1)
	next.metaHint = e.alloc.metaHint(t.metaHint)
	e.txn = next
	return c, nil
}

// writeOut runs steps 2-5 for c and publishes it to readers. A failure
// leaves the previous generation on disk and fails the engine: the next
// writer turns it read-only.
func (e *Engine) writeOut(c *pendingCommit) error {
	fail := func(step string, err error) error {
		err = fmt.Errorf("commit generation %d: %s: %w", c.gen, step, err)
		e.inflight.Store(nil)
		e.failWrites(err)
		return err
	}
	began := time.Now()
	defer func() { e.writeOuts.record(time.Since(began)) }()
	e.writingOut.Add(1)
	defer e.writingOut.Add(-1)
	w := e.newRunWriter(c.dirty.Len(), nil)
	var err error
	c.dirty.Scan(func(_ format.BlockNr, d dirtyBlock) bool {
		err = w.add(d.node)
		return err == nil
	})
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		return fail("write blocks", err)
	}
	e.writeOutHook(0)
	if err := e.dev.Flush(); err != nil {
		return fail("flush blocks", err)
	}
	e.writeOutHook(1)
	if err := e.writeSupers(&c.super); err != nil {
		return fail("superblock", err)
	}
	// Durable. Publish the generation to readers: the cache first, so
	// that the next transaction finds the blocks once inflight is gone.
	c.dirty.Scan(func(b format.BlockNr, d dirtyBlock) bool {
		e.cache.put(b, d.node)
		return true
	})
	e.mu.Lock()
	e.committed = &view{super: c.super, roots: c.roots}
	e.health.gen.Store(uint64(c.super.Gen))
	e.mu.Unlock()
	e.inflight.Store(nil)
	e.releaseLogged(c.gen, c.logFree)
	e.commits.Add(1)
	e.releaseFreed()
	e.log.Debug("committed", "gen", c.gen, "free", c.super.FreeBlocks)
	return nil
}

// recordRoots writes a root item for every tree whose root, level or item
// count changed since it was last recorded.
func (e *Engine) recordRoots() error { return e.recordRootsOnce(false) }

// recordRootsOnce is recordRoots, replaced saying whether the root tree
// was replaced in this call already.
func (e *Engine) recordRootsOnce(replaced bool) error {
	root := e.trees[format.TreeRoot]
	ids := make([]format.TreeID, 0, len(e.trees))
	for id := range e.trees {
		if id != format.TreeRoot {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		tr := e.trees[id]
		ri := format.RootItem{Root: format.RootPtr{Block: tr.Root.Block, Gen: tr.Root.Gen, Level: uint8(tr.Level)}, Items: tr.Items, Flags: e.recorded[id].Flags}
		if old, ok := e.recorded[id]; ok && old == ri {
			continue
		}
		if err := root.Put(format.RootKey(id), ri.Encode()); err != nil {
			// The root tree went bad on disk since the mount: the
			// engine holds every item it had, so a new one replaces it
			// (roottree.go). A new tree's blocks are in memory; damage
			// met again is not the tree's.
			if !errors.Is(err, format.ErrCorrupt) || replaced {
				return err
			}
			e.NoteDamage(err)
			if _, rerr := e.replaceRootTree(); rerr != nil {
				return fmt.Errorf("%w; replacing the root tree: %w", err, rerr)
			}
			e.noteSelfRepair(err, "a commit wrote a new root tree from the roots in memory")
			return e.recordRootsOnce(true)
		}
		e.recorded[id] = ri
	}
	return nil
}

// runWriter writes sealed nodes, those of adjacent blocks (in the order
// added) in one write of at most maxWriteRun blocks; after, if set, runs
// after each write.
type runWriter struct {
	e     *Engine
	run   []byte
	start format.BlockNr
	after func(off, n int64) error
}

func (e *Engine) newRunWriter(nodes int, after func(off, n int64) error) *runWriter {
	return &runWriter{e: e, run: make([]byte, 0, min(maxWriteRun, nodes)*format.BlockSize), after: after}
}

func (w *runWriter) add(n format.Node) error {
	b := n.Block()
	k := format.BlockNr(len(w.run) / format.BlockSize)
	if k > 0 && (b != w.start+k || k == maxWriteRun) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if len(w.run) == 0 {
		w.start = b
	}
	w.run = append(w.run, n...)
	return nil
}

func (w *runWriter) flush() error {
	if len(w.run) == 0 {
		return nil
	}
	off, n := int64(w.start)*format.BlockSize, int64(len(w.run))
	_, err := w.e.dev.WriteAt(w.run, off)
	if err == nil && w.after != nil {
		err = w.after(off, n)
	}
	w.run = w.run[:0]
	if err != nil {
		return fmt.Errorf("write blocks %d-%d: %w", w.start, w.start+format.BlockNr(n/format.BlockSize)-1, err)
	}
	return nil
}

// writeSupers writes every superblock copy of sb and flushes.
//
// The primary copy is written and flushed before the others: a crash
// can tear the copies being written (a device writes 4 KiB atomically
// only where it says so), and every commit changes several sectors of
// the block (the root backups' slot beside the first sector's fields),
// so copies written in one go could all be torn. Written in two, either
// the primary is the new copy, whole, or the others are the old ones,
// whole.
func (e *Engine) writeSupers(sb *format.Super) error {
	c := *sb
	buf := make([]byte, format.BlockSize)
	for i, at := range format.SuperBlocks(e.totalBlocks) {
		c.Block = at
		c.Encode(buf)
		if _, err := e.dev.WriteAt(buf, int64(at)*format.BlockSize); err != nil {
			return fmt.Errorf("write superblock copy %d: %w", at, err)
		}
		if i == 0 {
			if err := e.dev.Flush(); err != nil {
				return err
			}
		}
	}
	return e.dev.Flush()
}

// durations keeps the last and the longest of a kind of duration.
// failWrites records a failed write or flush: the next writer turns the
// engine read-only (the first failure is the one reported).
func (e *Engine) failWrites(err error) {
	e.countIOError(ioWrite)
	e.mu.Lock()
	if e.writeErr == nil {
		e.writeErr = err
	}
	e.mu.Unlock()
	e.log.Error("write failed, engine turns read-only", "err", err)
}

type durations struct{ last, max atomic.Int64 }

func (d *durations) record(x time.Duration) {
	d.last.Store(int64(x))
	for {
		m := d.max.Load()
		if int64(x) <= m || d.max.CompareAndSwap(m, int64(x)) {
			return
		}
	}
}

func (d *durations) get() (last, max time.Duration) {
	return time.Duration(d.last.Load()), time.Duration(d.max.Load())
}

// SetWriteOutHook makes every commit call fn during its write-out: stage 0
// after its blocks are written, 1 after they are flushed, before the
// superblock. For tests that need work to overlap a write-out (fn may
// write and fsync, not commit); nil removes it.
func (e *Engine) SetWriteOutHook(fn func(stage int)) {
	if fn == nil {
		e.outHook.Store(nil)
		return
	}
	e.outHook.Store(&fn)
}

func (e *Engine) writeOutHook(stage int) {
	if fn := e.outHook.Load(); fn != nil {
		(*fn)(stage)
	}
}
