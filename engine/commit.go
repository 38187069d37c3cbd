package engine

import (
	"fmt"
	"slices"

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

// maxCommitPasses bounds step 1; it converges in two or three passes.
const maxCommitPasses = 64

// maxWriteRun bounds one coalesced write.
const maxWriteRun = 256

func (e *Engine) commitLocked() error {
	t := e.txn
	if e.takeErrorCounts() {
		t.superDirty = true
	}
	if t.dirty.Len() == 0 && e.refs.len() == 0 && !t.superDirty {
		return nil
	}
	fail := func(step string, err error) error {
		err = fmt.Errorf("commit generation %d: %s: %w", t.gen, step, err)
		e.abort(err)
		return err
	}
	for pass := 0; ; pass++ {
		if pass == maxCommitPasses {
			return fail("settle", fmt.Errorf("delayed refs did not converge: %w", errInternal))
		}
		if err := e.runDelayedRefs(); err != nil {
			return fail("delayed refs", err)
		}
		if err := e.recordRoots(); err != nil {
			return fail("record roots", err)
		}
		if e.refs.len() == 0 {
			break
		}
	}
	if err := e.writeDirty(); err != nil {
		e.countIOError(ioWrite)
		return fail("write blocks", err)
	}
	if err := e.dev.Flush(); err != nil {
		e.countIOError(ioWrite)
		return fail("flush blocks", err)
	}
	root := e.trees[format.TreeRoot]
	sb := e.super
	sb.Gen = t.gen
	sb.Root = format.RootPtr{Block: root.Root.Block, Gen: root.Root.Gen, Level: uint8(root.Level)}
	sb.FreeBlocks = e.freeCount
	sb.Errors = slices.Clone(e.super.Errors)
	sb.Devices = slices.Clone(e.super.Devices)
	if len(sb.Devices) > 0 {
		sb.Devices[0].ReadErrors += e.ioErrs[ioRead].Swap(0)
		sb.Devices[0].WriteErrors += e.ioErrs[ioWrite].Swap(0)
		sb.Devices[0].CsumErrors += e.ioErrs[ioCsum].Swap(0)
	}
	if err := e.writeSupers(&sb); err != nil {
		e.countIOError(ioWrite)
		return fail("superblock", err)
	}
	// Durable. Publish the generation to readers.
	sb.Block = 0
	e.super = sb
	roots := make(map[format.TreeID]format.RootItem, len(e.trees))
	for id, tr := range e.trees {
		roots[id] = format.RootItem{Root: format.RootPtr{Block: tr.Root.Block, Gen: tr.Root.Gen, Level: uint8(tr.Level)}, Items: tr.Items, Flags: e.recorded[id].Flags}
	}
	t.dirty.Scan(func(b format.BlockNr, d dirtyBlock) bool {
		e.cache.put(b, d.node)
		return true
	})
	e.mu.Lock()
	e.committed = &view{super: sb, roots: roots}
	e.mu.Unlock()
	e.alloc.deferFree(t.gen, t.pendingFree)
	next := newTxn(t.gen + 1)
	next.metaHint = t.metaHint
	e.txn = next
	e.commits.Add(1)
	e.resetLog()
	e.releaseFreed()
	if invariants && !e.replaying {
		e.checkAllocator()
	}
	e.log.Debug("committed", "gen", t.gen, "free", sb.FreeBlocks)
	return nil
}

// recordRoots writes a root item for every tree whose root, level or item
// count changed since it was last recorded.
func (e *Engine) recordRoots() error {
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
			return err
		}
		e.recorded[id] = ri
	}
	return nil
}

// writeDirty seals every dirty block and writes them in block order,
// coalescing adjacent blocks into one write.
func (e *Engine) writeDirty() error {
	w := e.newRunWriter(e.txn.dirty.Len(), nil)
	var err error
	e.txn.dirty.Scan(func(b format.BlockNr, d dirtyBlock) bool {
		err = w.add(d.node)
		return err == nil
	})
	if err != nil {
		return err
	}
	return w.flush()
}

// runWriter seals nodes and writes those of adjacent blocks (in the order
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
	n.Seal()
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
func (e *Engine) writeSupers(sb *format.Super) error {
	c := *sb
	buf := make([]byte, format.BlockSize)
	for _, at := range format.SuperBlocks(e.totalBlocks) {
		c.Block = at
		c.Encode(buf)
		if _, err := e.dev.WriteAt(buf, int64(at)*format.BlockSize); err != nil {
			return fmt.Errorf("write superblock copy %d: %w", at, err)
		}
	}
	return e.dev.Flush()
}
