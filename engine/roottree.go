package engine

import (
	"fmt"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The root tree holds one root item per tree, and the engine holds all of
// them in memory (e.trees, e.recorded) from the mount on: the root tree is
// written, never read, while the filesystem is mounted. So a damaged root
// tree loses nothing the engine does not have, and repairing it is
// writing a new one:
//
//   - at mount, the root items come from the superblock's backup of its
//     own generation (format 1.3, IncompatRootBackups: every commit
//     writes its root items into the superblock beside the pointer to its
//     root tree, so the two always agree) when the root tree cannot be
//     read; the root is marked sick, and a read-write mount replaces the
//     tree in its first transaction.
//   - a commit whose update of the root tree meets damage (the block on
//     disk went bad since the mount) replaces the tree in that commit.
//   - the root row of the repair ops table replaces it on demand
//     (RebuildRootTree), after a scrub found it damaged.
//
// Replacing builds a new tree from the items in memory, in this
// transaction's blocks, and frees the old tree's blocks, those its
// readable nodes name: the commit that writes the new tree is the one
// that frees the old, so a crash leaves one or the other.

// rootFromBackup returns the root items of the superblock's backup of its
// own generation, merged with the items read before damage stopped the
// read (trees a newer version made, which the backup does not hold).
func rootFromBackup(sb *format.Super, read map[format.TreeID]format.RootItem) (map[format.TreeID]format.RootItem, bool) {
	rb, ok := sb.Backup(sb.Gen)
	if !ok || rb.Roots[0].Root != sb.Root {
		return nil, false
	}
	roots := make(map[format.TreeID]format.RootItem, len(read)+len(rb.Roots))
	for id, ri := range read {
		roots[id] = ri
	}
	for j, id := range format.KnownTrees {
		roots[id] = rb.Roots[j]
	}
	return roots, true
}

// backupRoots records the generation's root items in its superblock's
// backup slot.
func backupRoots(sb *format.Super, roots map[format.TreeID]format.RootItem) {
	if sb.Incompat&format.IncompatRootBackups == 0 {
		return
	}
	rb := format.RootBackup{Gen: sb.Gen}
	for j, id := range format.KnownTrees {
		rb.Roots[j] = roots[id]
	}
	rb.Roots[0].Flags = 0
	sb.Backups[sb.Gen%format.NumRootBackups] = rb
}

// replaceRootTree gives the running transaction a new root tree holding
// every tree's root item, and frees the old tree's blocks that its
// readable nodes name (children of a damaged interior node cannot be
// named: they stay allocated, and the check reports them as leaks).
// It returns how many blocks it freed. Called with wmu held.
func (e *Engine) replaceRootTree() (int, error) {
	old := e.trees[format.TreeRoot]
	var blocks []format.BlockNr
	seen := map[format.BlockNr]bool{}
	err := old.Check(eb.CheckVisitor{Block: func(p eb.Ptr, _ int) {
		if p.Block != 0 && uint64(p.Block) < e.totalBlocks && !seen[p.Block] {
			seen[p.Block] = true
			blocks = append(blocks, p.Block)
		}
	}})
	if err != nil {
		return 0, fmt.Errorf("walk the old root tree: %w", err)
	}
	tr, err := eb.Create(txnStore{e}, format.TreeRoot)
	if err != nil {
		return 0, fmt.Errorf("create a root tree: %w", err)
	}
	e.trees[format.TreeRoot] = tr
	// Every item is written anew by recordRoots.
	for id, ri := range e.recorded {
		e.recorded[id] = format.RootItem{Flags: ri.Flags}
	}
	for _, b := range blocks {
		e.txn.dirty.Delete(b)
		e.ref(b, 1, format.Owner{Tree: format.TreeRoot}, format.ExtentMeta, -1)
	}
	e.txn.superDirty = true
	e.log.Warn("root tree replaced from the roots in memory", "old_blocks", len(blocks), "gen", e.txn.gen)
	return len(blocks), nil
}

// RebuildRootTree writes a new root tree from the root items the engine
// holds and frees the old one's blocks, in one commit: the root row's
// repairer. It returns how many items the new tree holds and how many old
// blocks it freed.
func (e *Engine) RebuildRootTree() (items, freed uint64, err error) {
	if e.opts.ReadOnly {
		return 0, 0, ErrReadOnly
	}
	err = e.Update(func(tx *Tx) error {
		tx.touched = true
		n, err := e.replaceRootTree()
		freed = uint64(n)
		return err
	})
	if err == nil {
		err = e.Sync()
	}
	if err != nil {
		return 0, 0, err
	}
	s := e.Pin()
	defer s.Release()
	if t, ok := s.ScanTree(format.TreeRoot); ok {
		items = t.Items
	}
	return items, freed, nil
}

// noteSelfRepair records damage the engine met and repaired on its own
// (err, a corruption error) for the next scrub's report
// (TakeOpenRepairs): found, and repaired, with how.
func (e *Engine) noteSelfRepair(err error, how string) {
	f := finding(ErrNodeBadLayout, format.TreeRoot, 0, "%v", err)
	if ce, ok := format.AsCorrupt(err); ok {
		f = finding(kindID(ce.Kind), ce.Tree, ce.Block, "%s", ce.Detail)
	}
	f.Detail += " (" + how + ")"
	e.noteSelfRepaired(f)
}

// noteSelfRepaired records a finding the engine repaired on its own.
func (e *Engine) noteSelfRepaired(f Finding) {
	e.openRepairsOnce.Lock()
	e.mount.Rewritten = append(e.mount.Rewritten, f)
	e.openRepairsOnce.Unlock()
}
