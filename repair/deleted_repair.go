package repair

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The deleted tree's repair. The deleted tree lists the inodes unlinked
// while still open: the last close frees such an inode, and if a crash
// comes first the deleted_inodes recovery pass frees every inode on the
// list at the next mount. An inode is on the list exactly when its link
// count is zero (the unlink that drops the last name adds the entry in
// the same transaction; the last close or a link back in removes it), so
// the list is derived from the inode tree, and the repair writes it again
// from there:
//
//   - setup: an inode hook records every inode changed from now on;
//     commit, then pin: what changed before the hook is in the pinned
//     generation, what changed after it is in the hook's record.
//   - collect: scan the pinned inode tree for the inodes with no links,
//     and the rmap for the blocks the old deleted tree owns (the damage
//     may hide some of them from a walk of the tree itself).
//   - swap, in one short exclusive section (writers held, every change up
//     to its first commit published to the hook): read again each inode
//     the hook saw, write a new tree with one entry per inode with no
//     links, and free the old tree's blocks that nothing reaches any
//     more (engine.Exclusive.ResetTree: blocks reused since by
//     another tree stay, reached by it). One commit: a crash leaves the
//     old list or the new one.
//
// An entry for an inode still open is right (its last close frees it);
// one for an inode no longer open and never freed (a crash, or an unlink
// whose entry the damage blocked) is what the next mount's pass frees.
// Nothing is freed by the repair itself: whether an inode is open is the
// mount's knowledge, not the image's.

// repairDeleted is the deleted row's repairer.
func repairDeleted(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	touched, unwatch := watchInodes(e)
	defer unwatch()
	if err := e.Sync(); err != nil {
		return nil, err
	}

	pin := e.Pin()
	gen := pin.Gen()
	unlinked := map[uint64]bool{}
	err := scanTree(pin, format.TreeInode, func(k format.Key, v []byte) error {
		if k.Type != format.TypeInodeItem {
			return nil
		}
		in, err := format.DecodeInodeItem(v)
		if err != nil {
			return err
		}
		if in.Nlink == 0 && !format.IsSubvolRoot(k.Obj) { // a root's last link goes with its subvolume's deletion
			unlinked[k.Obj] = true
		}
		return nil
	})
	var cands map[format.BlockNr]format.TreeID
	var note string
	if err == nil {
		cands, note, err = ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool {
			return owner == format.TreeDeleted
		})
	}
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	rb := &RebuildReport{Structure: "deleted", Gen: uint64(gen)}
	var held time.Duration
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		for _, ino := range touched.take() {
			in, err := inodeIn(x.Tx, ino)
			if err != nil {
				return fmt.Errorf("inode %d: %w", ino, err)
			}
			if in != nil && in.Nlink == 0 && !format.IsSubvolRoot(ino) {
				unlinked[ino] = true
			} else {
				delete(unlinked, ino)
			}
			rb.Events++
		}
		oldBlocks(x, format.TreeDeleted, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeDeleted, cands)
		if err != nil {
			return fmt.Errorf("replace the deleted tree: %w", err)
		}
		for _, ino := range slices.Sorted(maps.Keys(unlinked)) {
			if err := t.Put(format.DeletedKey(ino), nil); err != nil {
				return fmt.Errorf("list inode %d: %w", ino, err)
			}
		}
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructDeleted, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.Records = uint64(len(unlinked))
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

// ownedBlocks returns the one-block metadata extents of generation s
// whose rmap record's owner and block keep says are wanted, each with its
// owner. With the rmap untrusted it returns none, and a note saying the
// old blocks the walk cannot name are left to the rmap and alloc
// rebuilds.
func ownedBlocks(ctx context.Context, e *engine.Engine, s *engine.Snapshot, keep func(owner format.TreeID, b format.BlockNr) bool) (map[format.BlockNr]format.TreeID, string, error) {
	out := map[format.BlockNr]format.TreeID{}
	if e.Degraded(engine.StructRmap) {
		return out, "the rmap tree is untrusted: blocks of the old tree that its readable nodes do not name are left allocated, for the rmap and alloc repairs to free", nil
	}
	n := 0
	err := scanTree(s, format.TreeRmap, func(k format.Key, v []byte) error {
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if k.Type != format.TypeRmapTree {
			return nil
		}
		o, ok := format.RmapOwner(k)
		if !ok {
			return nil
		}
		it, err := format.DecodeRmapItem(v)
		if err != nil {
			return err
		}
		if b := format.BlockNr(k.Obj); it.Len == 1 && keep(o.Tree, b) {
			out[b] = o.Tree
		}
		return nil
	})
	if errors.Is(err, format.ErrCorrupt) {
		e.NoteDamage(err)
		return map[format.BlockNr]format.TreeID{}, fmt.Sprintf("the rmap tree cannot be read (%v): blocks of the old tree that its readable nodes do not name are left allocated, for the rmap and alloc repairs to free", err), nil
	}
	return out, "", err
}

// oldBlocks adds to cands the blocks of tree id in the running
// transaction that its readable nodes name and the scan of generation gen
// could not: those written since (a pointer of a later generation was
// written by the engine, so the block is id's), or, when the rmap was not
// read (all), every one named (a damaged pointer may name another tree's
// block: ResetTree frees only what nothing reaches, and the rmap,
// untrusted, is rebuilt from the trees anyway).
func oldBlocks(x *engine.Exclusive, id format.TreeID, cands map[format.BlockNr]format.TreeID, gen format.Gen, all bool) {
	t, ok := x.ReadTree(id)
	if !ok {
		return
	}
	// A walk stopped by the damage has named what it can.
	_ = t.Blocks(func(p eb.Ptr, _ int) bool {
		if _, ok := cands[p.Block]; !ok && p.Block != 0 && (all || p.Gen > gen) {
			cands[p.Block] = id
		}
		return true
	})
}

// treeBlocks counts the blocks of t.
func treeBlocks(t *eb.Tree) uint64 {
	var n uint64
	_ = t.Blocks(func(eb.Ptr, int) bool { n++; return true })
	return n
}
