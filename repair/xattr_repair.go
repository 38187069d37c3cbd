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

// The xattr tree's repair. Nothing else records an extended attribute, so
// the tree is rebuilt from itself: every item that can still be read and
// that the checker accepts alone (xattr.go: it decodes, sits under its
// name's hash, its name is the first of its inode's) is kept, if its
// inode exists; what the damage made unreadable is lost, and the report
// says how many items and which inodes.
//
//   - setup: an inode hook records every inode changed from now on (an
//     attribute set or removed changes its inode's ctime in the same
//     transaction; a free drops the inode); commit, then pin.
//   - collect: walk the pinned xattr tree, keeping the readable items;
//     when the walk met damage, the intact leaves below a damaged node
//     are read back (salvage.go) from the blocks the rmap lists as the
//     tree's. Then the inodes that exist, from the pinned inode tree.
//   - swap, in one exclusive section: for each inode the hook saw, its
//     items are read again from the running tree (where that read meets
//     the damage, the pinned copy stands) and its existence again; a new
//     tree gets every item kept, and the old tree's blocks that nothing
//     reaches any more are freed (engine.Exclusive.ResetTree). One
//     commit: a crash leaves the old tree or the new one.
//
// The items are written in the exclusive section: the tree holds small
// items (one per attribute, at most 1 KiB), so even a tree of a million
// attributes is a few seconds' pause, not a rebuild to run in phases.

// xattrKept is the items a rebuild keeps, by key.
type xattrKept map[format.Key][]byte

// keep adds the item if the checker accepts it alone; it says whether.
func (m xattrKept) keep(k format.Key, v []byte) bool {
	if id, _, _ := xattrItemProblem(k, v); id != 0 {
		return false
	}
	m[k] = slices.Clone(v)
	return true
}

// dedupe drops an attribute stored twice on an inode, keeping the first
// in key order; it returns how many it dropped.
func (m xattrKept) dedupe() int {
	type name struct {
		ino  uint64
		name string
	}
	seen := map[name]bool{}
	n := 0
	for _, k := range slices.SortedFunc(maps.Keys(m), format.Key.Compare) {
		if k.Type != format.TypeXattr {
			continue // a chunk: whole (complete) or not
		}
		x, _ := format.DecodeXattrItem(m[k])
		nm := name{k.Obj, x.Name}
		if seen[nm] {
			delete(m, k)
			n++
			continue
		}
		seen[nm] = true
	}
	return n
}

// complete drops every large value that is not whole — a head whose chunks
// are not all kept, each of its length, and a chunk of no kept head or
// out of its head's range — and returns how many attributes and chunks it
// dropped.
func (m xattrKept) complete() (heads, chunks int) {
	for k, v := range m {
		if k.Type != format.TypeXattr {
			continue
		}
		x, err := format.DecodeXattrItem(v)
		if err != nil || !x.Large() {
			continue
		}
		for i := 1; i <= format.XattrChunks(x.Name, x.Total); i++ {
			_, n := format.XattrChunkSpan(x.Name, x.Total, i)
			if c, ok := m[format.XattrChunkKey(k, i)]; !ok || len(c) != n {
				delete(m, k)
				heads++
				break
			}
		}
	}
	for k := range m {
		if k.Type != format.TypeXattrChunk {
			continue
		}
		hk, i := format.XattrChunkHead(k)
		x, err := format.DecodeXattrItem(m[hk])
		if err != nil || !x.Large() || i > format.XattrChunks(x.Name, x.Total) {
			delete(m, k)
			chunks++
		}
	}
	return heads, chunks
}

// repairXattr is the xattr row's repairer.
func repairXattr(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	touched, unwatch := watchInodes(e)
	defer unwatch()
	if err := e.Sync(); err != nil {
		return nil, err
	}

	pin := e.Pin()
	gen := pin.Gen()
	rb := &RebuildReport{Structure: "xattr", Gen: uint64(gen)}
	kept := xattrKept{}
	inodes := map[uint64]bool{}
	var claimed, collected uint64 // items the old tree counted, and read
	var cands map[format.BlockNr]format.TreeID
	var note string
	var sv Salvaged
	err := func() error {
		xt, ok := pin.ScanTree(format.TreeXattr)
		if !ok {
			return nil
		}
		claimed = xt.Items
		walk := newWalkTrace()
		if err := xt.Check(walk.visitor(eb.CheckVisitor{Item: func(k format.Key, v []byte) { kept.keep(k, v) }})); err != nil {
			return fmt.Errorf("read the old xattr tree: %w", err)
		}
		if walk.damaged {
			owned, err := rmapTreeBlocks(ctx, pin, format.TreeXattr)
			if err != nil {
				return err
			}
			if sv, err = salvage(ctx, pin, format.TreeXattr, owned, walk, func(k format.Key, v []byte) (bool, error) {
				return kept.keep(k, v), nil
			}); err != nil {
				return fmt.Errorf("salvage the old xattr tree: %w", err)
			}
		}
		collected = uint64(len(kept))
		if err := scanTree(pin, format.TreeInode, func(k format.Key, _ []byte) error {
			if k.Type == format.TypeInodeItem {
				inodes[k.Obj] = true
			}
			return nil
		}); err != nil {
			return fmt.Errorf("read the inode tree: %w", err)
		}
		var err error
		cands, note, err = ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool {
			return owner == format.TreeXattr
		})
		return err
	}()
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	var held time.Duration
	var orphans []uint64
	dup, partial, strays := 0, 0, 0
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		if _, ok := x.ReadTree(format.TreeXattr); !ok {
			return nil // no tree: nothing to rebuild
		}
		for _, ino := range touched.take() {
			in, err := inodeIn(x.Tx, ino)
			if err != nil {
				return fmt.Errorf("inode %d: %w", ino, err)
			}
			inodes[ino] = in != nil
			if err := xattrReread(x.Tx, ino, kept); err != nil {
				return err
			}
			rb.Events++
		}
		dup = kept.dedupe()
		partial, strays = kept.complete()
		for _, k := range slices.SortedFunc(maps.Keys(kept), format.Key.Compare) {
			if !inodes[k.Obj] {
				if len(orphans) == 0 || orphans[len(orphans)-1] != k.Obj {
					orphans = append(orphans, k.Obj)
				}
				delete(kept, k)
			}
		}
		oldBlocks(x, format.TreeXattr, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeXattr, cands)
		if err != nil {
			return fmt.Errorf("replace the xattr tree: %w", err)
		}
		for _, k := range slices.SortedFunc(maps.Keys(kept), format.Key.Compare) {
			if err := t.Put(k, kept[k]); err != nil {
				return fmt.Errorf("xattr item %s: %w", k, err)
			}
		}
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructXattr, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.Records = uint64(len(kept))
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	rb.Changes = append(rb.Changes, salvagedChanges(sv)...)
	if len(orphans) > 0 {
		rb.Changes = append(rb.Changes, fmt.Sprintf("dropped the extended attributes of %d inodes that do not exist: %v", len(orphans), orphans))
	}
	if dup > 0 {
		rb.Changes = append(rb.Changes, fmt.Sprintf("dropped %d attributes stored twice on their inode", dup))
	}
	if partial > 0 || strays > 0 {
		rb.Changes = append(rb.Changes, fmt.Sprintf("dropped %d large attribute values missing a chunk, and %d chunks of no whole value", partial, strays))
	}
	if claimed > collected {
		rb.Changes = append(rb.Changes, fmt.Sprintf("lost %d extended attributes the damage made unreadable or invalid (the tree counted %d, %d read)", claimed-collected, claimed, collected))
	}
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

// xattrReread replaces the items of inode ino in kept by those of the
// running transaction's tree. Where that read meets damage, the items
// read before it stand for their key range, and each pinned item past it
// is looked up by its key (changed, removed, or, where the lookup meets
// the damage too, the pinned copy stands); an attribute added since the
// pin behind the damage is what the damage lost.
func xattrReread(tx *engine.Tx, ino uint64, kept xattrKept) error {
	tr, ok := tx.ReadTree(format.TreeXattr)
	if !ok {
		return nil
	}
	live := xattrKept{}
	var last format.Key
	read := false
	err := tr.Ascend(format.XattrKey(ino, 0, 0), func(k format.Key, v []byte) bool {
		if k.Obj != ino || (k.Type != format.TypeXattr && k.Type != format.TypeXattrChunk) {
			return false
		}
		live.keep(k, v)
		last, read = k, true
		return true
	})
	if err != nil && !errors.Is(err, format.ErrCorrupt) {
		return err
	}
	damaged := err != nil
	for k := range kept {
		if k.Obj != ino {
			continue
		}
		if !damaged || read && !last.Less(k) {
			delete(kept, k)
			continue
		}
		v, found, gerr := tr.Get(k, nil)
		switch {
		case errors.Is(gerr, format.ErrCorrupt):
		case gerr != nil:
			return gerr
		case !found:
			delete(kept, k)
		default:
			delete(kept, k)
			kept.keep(k, v)
		}
	}
	maps.Copy(kept, live)
	return nil
}
