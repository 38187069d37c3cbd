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

// The checker and the repair of the snapshot tree (format/snapshot.go):
// the fills of snapshots under way and their whiteouts. Every item must be
// a fill item (id, TypeSnapFill, 0, 0) whose value decodes within its
// bounds, or an empty whiteout (id, TypeSnapWhiteout, local, 0)
// (item_bad otherwise). Then, against the subvolume items:
//
//   - a fill item names a live subvolume whose parent UUID is the UUID of
//     its source, a live subvolume too, and which is marked being filled
//     with the same limit; a subvolume marked being filled has a fill
//     item (snapshot_fill);
//   - a whiteout belongs to a subvolume with a fill item
//     (snapshot_whiteout).
//
// A snapshot being filled is, like a subvolume being deleted, outside the
// namespace checks and repairs (halfFreed, settledInodes): its directories
// name inodes it has not copied yet, which it reads from its source. While
// the snapshot tree cannot be read whole, every snapshot (a subvolume with
// a parent UUID) is treated so.

var snapshotCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeSnapshot: checkSnapshotItem,
	},
	cross: checkSnapshots,
}

// snapState is what the walk of the snapshot tree collects.
type snapState struct {
	fills     map[uint64]*format.SnapFillItem
	whiteouts []format.Key
	bad       bool // an item was not a snapshot item: the set is incomplete
}

// snapItemProblem says what is wrong with an item of the snapshot tree,
// or returns the decoded fill item (nil for a good whiteout).
func snapItemProblem(k format.Key, v []byte) (*format.SnapFillItem, string) {
	if k.Obj == 0 || k.Obj > format.MaxSubvolID || k.Aux != 0 {
		return nil, "not a snapshot item"
	}
	switch k.Type {
	case format.TypeSnapFill:
		if k.Off != 0 {
			return nil, "not a snapshot item"
		}
		it, err := format.DecodeSnapFillItem(v)
		if err != nil {
			return nil, err.Error()
		}
		return it, ""
	case format.TypeSnapWhiteout:
		if k.Off >= 1<<format.SubvolShift || len(v) != 0 {
			return nil, "a whiteout out of range or with a value"
		}
		return nil, ""
	}
	return nil, "not a snapshot item"
}

func checkSnapshotItem(st *checkState, root format.BlockNr, k format.Key, v []byte) {
	sn := &st.snap
	it, why := snapItemProblem(k, v)
	if why != "" {
		sn.bad = true
		st.Reportf(engine.ErrItemBad, format.TreeSnapshot, root, "snapshot item %s: %s", k, why)
		return
	}
	if it == nil {
		sn.whiteouts = append(sn.whiteouts, k)
		return
	}
	if sn.fills == nil {
		sn.fills = map[uint64]*format.SnapFillItem{}
	}
	sn.fills[k.Obj] = it
}

// snapFillProblem says why a fill item does not belong to subvolume id
// among items (the subvolume items), or "".
func snapFillProblem(id uint64, fi *format.SnapFillItem, items map[uint64]*format.SubvolItem) string {
	it := items[id]
	src := items[fi.Source]
	switch {
	case it == nil:
		return "the subvolume has no item"
	case it.Flags&format.SubvolDeleting != 0:
		return "the subvolume is being deleted"
	case src == nil || src.Flags&format.SubvolDeleting != 0:
		return fmt.Sprintf("its source, subvolume %d, is not a live subvolume", fi.Source)
	case it.ParentUUID != src.UUID:
		return fmt.Sprintf("its parent UUID %s is not the UUID of its source, subvolume %d", it.ParentUUID, fi.Source)
	}
	return ""
}

// snapFlagProblem says why subvolume item it and its fill item fi (nil:
// none) disagree on the fill, or "": the repair makes them agree (a fill
// item again from the flag, the flag again from the fill item).
func snapFlagProblem(it *format.SubvolItem, fi *format.SnapFillItem) string {
	filling := it.Flags&format.SubvolFilling != 0 && it.Flags&format.SubvolDeleting == 0
	switch {
	case filling && fi == nil:
		return "it is marked being filled but has no fill item"
	case !filling && fi != nil:
		return "it has a fill item but is not marked being filled"
	case fi != nil && fi.Limit != it.FillLimit:
		return fmt.Sprintf("its fill item's limit %d is not its item's %d", fi.Limit, it.FillLimit)
	}
	return ""
}

func checkSnapshots(st *checkState) {
	sn := &st.snap
	if !st.subvolsKnown() || st.Broken(format.TreeSnapshot) || sn.bad {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(sn.fills)) {
		if why := snapFillProblem(id, sn.fills[id], st.subvol.items); why != "" {
			st.Reportf(engine.ErrSnapFill, format.TreeSnapshot, 0, "snapshot fill of subvolume %d: %s", id, why)
		} else if why := snapFlagProblem(st.subvol.items[id], sn.fills[id]); why != "" {
			st.Reportf(engine.ErrSnapFill, format.TreeSnapshot, 0, "snapshot fill of subvolume %d: %s", id, why)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(st.subvol.items)) {
		if it := st.subvol.items[id]; sn.fills[id] == nil {
			if why := snapFlagProblem(it, nil); why != "" {
				st.Reportf(engine.ErrSnapFill, format.TreeSnapshot, 0, "subvolume %d: %s", id, why)
			}
		}
	}
	last := uint64(0)
	for _, k := range sn.whiteouts {
		if sn.fills[k.Obj] == nil && k.Obj != last {
			last = k.Obj
			st.Reportf(engine.ErrSnapWhiteout, format.TreeSnapshot, 0, "whiteouts of subvolume %d, which has no fill under way", k.Obj)
		}
	}
}

// snapFilling says whether subvolume id may be a snapshot being filled:
// it has a fill item, or, while the snapshot tree cannot be read whole,
// it is a snapshot.
func (st *checkState) snapFilling(id uint64) bool {
	it := st.subvol.items[id]
	if st.Broken(format.TreeSnapshot) || st.snap.bad {
		return it != nil && !it.ParentUUID.IsZero()
	}
	return st.snap.fills[id] != nil || it != nil && it.Flags&format.SubvolFilling != 0
}

// fillingSnapshots reads the snapshot tree of s for settledInodes: the
// subvolumes being filled, or with whole false, a tree that could not be
// read whole.
func fillingSnapshots(s *engine.Snapshot) (ids map[uint64]bool, whole bool) {
	ids = map[uint64]bool{}
	t, ok := s.Tree(format.TreeSnapshot)
	if !ok {
		return ids, true
	}
	bad := false
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		it, why := snapItemProblem(k, v)
		if why != "" {
			bad = true
			return false
		}
		if it != nil {
			ids[k.Obj] = true
		}
		return true
	})
	return ids, err == nil && !bad
}

// snapshotsFilling returns the subvolumes of s that may be snapshots
// being filled (a fill item, or the mark in their item; every snapshot
// while the snapshot tree cannot be read whole): their directories name
// inodes they do not hold yet, which no repair may make up.
func snapshotsFilling(s *engine.Snapshot) map[uint64]bool {
	ids, whole := fillingSnapshots(s)
	if t, ok := s.Tree(format.TreeSubvol); ok {
		_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if it, _ := subvolItemProblem(k, v); it != nil {
				if it.Flags&format.SubvolFilling != 0 || !whole && !it.ParentUUID.IsZero() {
					ids[k.Obj] = true
				}
			}
			return true
		})
	}
	return ids
}

// repairSnapshot rebuilds the snapshot tree from its readable items that
// belong (the checks above): a fill item of a live snapshot of a live
// source, whiteouts of a fill kept. A subvolume marked being filled whose
// fill item is gone gets one again from its item (its source by parent
// UUID, its limit; position 0: the fill copies only what the snapshot
// does not hold), and a fill item kept whose subvolume is not marked gets
// the mark (and the limit) back in the subvolume item. What a damaged
// block held beyond that is lost: the fill's position (a fill started
// again may copy back inodes the snapshot had deleted, unnamed: the
// link-count repair adopts them into lost+found) and whiteouts (the
// same).
func repairSnapshot(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	if err := e.Sync(); err != nil {
		return nil, err
	}
	pin := e.Pin()
	gen := pin.Gen()
	cands, note, err := ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool { return owner == format.TreeSnapshot })
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rb := &RebuildReport{Structure: "snapshot", Gen: uint64(gen)}
	var held time.Duration
	var kept, dropped int
	var remade, marked []uint64
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		old, ok := x.ReadTree(format.TreeSnapshot)
		if !ok {
			return nil
		}
		items, err := readSubvols(x.Tx)
		if err != nil {
			return fmt.Errorf("the subvolume tree cannot be read whole (%w): the snapshot tree is not rebuilt against it", err)
		}
		type kv struct {
			k format.Key
			v []byte
		}
		var keep []kv
		fills := map[uint64]*format.SnapFillItem{}
		var whiteouts []format.Key
		// The readable items, walking past what cannot be read.
		if _, err := readableTreeItems(old, func(k format.Key, v []byte) {
			it, why := snapItemProblem(k, v)
			switch {
			case why != "":
				dropped++
			case it == nil:
				whiteouts = append(whiteouts, k)
			case snapFillProblem(k.Obj, it, items) != "":
				dropped++
			default:
				fills[k.Obj] = it
				keep = append(keep, kv{k, slices.Clone(v)})
			}
		}); err != nil {
			return err
		}
		// The fills the subvolume items say are under way.
		for _, id := range slices.Sorted(maps.Keys(items)) {
			it := items[id]
			if fills[id] != nil || it.Flags&format.SubvolFilling == 0 || it.Flags&format.SubvolDeleting != 0 {
				continue
			}
			for _, sid := range slices.Sorted(maps.Keys(items)) {
				if s := items[sid]; s.UUID == it.ParentUUID && s.Flags&format.SubvolDeleting == 0 {
					fi := &format.SnapFillItem{Source: sid, Limit: it.FillLimit}
					fills[id] = fi
					keep = append(keep, kv{format.SnapFillKey(id), fi.Encode()})
					remade = append(remade, id)
					break
				}
			}
		}
		// Whiteouts of the fills kept or made again (a fill that starts
		// over needs them most).
		for _, k := range whiteouts {
			if fills[k.Obj] != nil {
				keep = append(keep, kv{k, nil})
			} else {
				dropped++
			}
		}
		slices.SortFunc(keep, func(a, b kv) int { return a.k.Compare(b.k) })
		oldBlocks(x, format.TreeSnapshot, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeSnapshot, cands)
		if err != nil {
			return fmt.Errorf("replace the snapshot tree: %w", err)
		}
		for _, it := range keep {
			if err := t.Put(it.k, it.v); err != nil {
				return fmt.Errorf("snapshot item %s: %w", it.k, err)
			}
		}
		// The subvolume items the fills kept say are being filled.
		for _, id := range slices.Sorted(maps.Keys(fills)) {
			it := items[id]
			if snapFlagProblem(it, fills[id]) == "" {
				continue
			}
			it.Flags |= format.SubvolFilling
			it.FillLimit = fills[id].Limit
			str, err := x.Tree(format.TreeSubvol)
			if err != nil {
				return err
			}
			if err := str.Put(format.SubvolKey(id), it.Encode()); err != nil {
				return fmt.Errorf("subvolume %d's item: %w", id, err)
			}
			marked = append(marked, id)
		}
		// A subvolume marked being filled whose source is gone: its fill
		// cannot go on; unmarked, it is what it holds.
		for _, id := range slices.Sorted(maps.Keys(items)) {
			it := items[id]
			if fills[id] != nil || it.Flags&format.SubvolFilling == 0 {
				continue
			}
			it.Flags &^= format.SubvolFilling
			str, err := x.Tree(format.TreeSubvol)
			if err != nil {
				return err
			}
			if err := str.Put(format.SubvolKey(id), it.Encode()); err != nil {
				return fmt.Errorf("subvolume %d's item: %w", id, err)
			}
			rb.Changes = append(rb.Changes, fmt.Sprintf("subvolume %d was marked being filled, but its source is gone: unmarked (what it had not copied is lost)", id))
		}
		kept = len(keep) - len(remade)
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructSnapshot, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.Records = uint64(kept + len(remade))
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	if kept+len(remade) == 0 {
		rb.Changes = append(rb.Changes, fmt.Sprintf("wrote a new empty snapshot tree (no fill under way; dropped %d items that belong to none)", dropped))
	} else {
		rb.Changes = append(rb.Changes, fmt.Sprintf("wrote a new snapshot tree from its readable items: kept %d, dropped %d that belong to no fill under way", kept, dropped))
	}
	for _, id := range remade {
		rb.Changes = append(rb.Changes, fmt.Sprintf("subvolume %d is marked being filled and had lost its fill item: made again from its item, its fill starts over (inodes it had deleted may come back unnamed, for the link-count repair)", id))
	}
	for _, id := range marked {
		rb.Changes = append(rb.Changes, fmt.Sprintf("subvolume %d's item marked being filled again, from its fill item", id))
	}
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

// readableTreeItems calls fn with every item of t it can read, walking
// past the blocks it cannot; skipped reports that it met some.
func readableTreeItems(t *eb.Tree, fn func(k format.Key, v []byte)) (skipped bool, err error) {
	var walk func(p eb.Ptr, level int) error
	walk = func(p eb.Ptr, level int) error {
		nd, err := t.Store.Read(t.ID, p, level)
		if err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				skipped = true
				return nil
			}
			return err
		}
		if nd.IsLeaf() {
			for i := 0; i < nd.NrItems(); i++ {
				fn(nd.Key(i), nd.Value(i))
			}
			return nil
		}
		for i := 0; i < nd.NrItems(); i++ {
			c, g := nd.Child(i)
			if err := walk(eb.Ptr{Block: c, Gen: g}, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	return skipped, walk(t.Root, t.Level)
}
