package repair

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The repairs of the subvolume and uuid trees.
//
// The uuid tree is an index of the subvolume items (each subvolume's UUID
// and received UUID to its id) and holds nothing they do not: it is
// rebuilt from them. The subvolume tree is small (one item per
// subvolume), so the rebuild reads it in the exclusive section, with the
// writers held, and follows no live update: a new uuid tree gets one key
// per UUID of every subvolume item, the old tree's blocks that nothing
// reaches any more are freed (engine.Exclusive.ResetTree), one commit.
// The row reads the subvolume tree: while that is damaged the rebuild
// waits for its repair, and refuses if it cannot be repaired.
//
// The subvolume tree is rebuilt from itself, the inodes and the uuid
// tree. Every item that can be read and decodes is kept as it is (the
// flags, times, parent UUID and reaper position nothing else records).
// A subvolume exists for every id some inode carries (ino >> 40, not
// the top level's 0): one whose item the damage took is made again —
//
//   - its UUID and received UUID from the uuid tree, whose keys
//     (uuid, type, id) are an index back from the id: each used when it is
//     the only one of its type naming the id and no kept item has it; a
//     fresh random UUID when the uuid tree lost it (the uuid repair then
//     indexes the new one), no received UUID;
//   - its creation generation from its root's Generation (without a
//     root, the oldest of its inodes'), its ctime from the root's birth
//     time;
//   - SubvolDeleting when no directory entry names its root and the root
//     is gone or has no link: that is the state only a deletion makes
//     (the entry and the link go in its transaction, the reaper frees the
//     root first), and the reaper then frees what is left (recovery pass
//     subvol_reap is set: the next mount resumes it). A root named
//     nowhere that still has links is a name the damage took, not a
//     deletion: the subvolume stays live and the link-count repair links
//     its root into /lost+found.
//
// The same rule answers subvol_root for a kept live item: a root named
// nowhere that is gone or has no link is a deletion whose flag was lost
// (the checkers leave its inodes alone, as a deletion's), and the item is
// marked SubvolDeleting. Any other subvol_root (a root that is not a
// directory, or missing while an entry names it: the inode repair's, or
// named twice) is not the subvolume tree's to repair, and stays
// reported.
//
// Online, as the xattr repair (xattr_repair.go): an inode hook and a
// dirent hook record what writers change after the pinned generation; the
// scan reads the pinned trees; the exclusive section reads the running
// subvolume tree again (its readable items win over the pinned ones;
// where the read meets damage the pinned item stands), looks again at
// each rebuilt subvolume's inodes and its root, writes the new tree, and
// frees the old blocks, in one commit.

// repairUUID is the uuid row's repairer.
func repairUUID(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	if err := e.Sync(); err != nil {
		return nil, err
	}
	pin := e.Pin()
	gen := pin.Gen()
	cands, note, err := ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool { return owner == format.TreeUUID })
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rb := &RebuildReport{Structure: "uuid", Gen: uint64(gen)}
	var held time.Duration
	var keys []format.Key
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		if _, ok := x.ReadTree(format.TreeUUID); !ok {
			return nil // no tree: nothing to rebuild
		}
		items, err := readSubvols(x.Tx)
		if err != nil {
			return fmt.Errorf("the subvolume tree cannot be read whole (%w): the uuid tree is not rebuilt from it", err)
		}
		keys = wantUUIDKeys(items)
		oldBlocks(x, format.TreeUUID, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeUUID, cands)
		if err != nil {
			return fmt.Errorf("replace the uuid tree: %w", err)
		}
		for _, k := range keys {
			if err := t.Put(k, nil); err != nil {
				return fmt.Errorf("uuid key %s: %w", k, err)
			}
		}
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructUUID, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.Records = uint64(len(keys))
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	if len(keys) == 0 {
		rb.Changes = append(rb.Changes, "wrote a new empty uuid tree (no subvolume exists)")
	} else {
		rb.Changes = append(rb.Changes, fmt.Sprintf("wrote a new uuid tree from the subvolume items: %d keys", len(keys)))
	}
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

// readSubvols reads every subvolume item of tx's tree; any damage or an
// item that does not decode is an error.
func readSubvols(tx *engine.Tx) (map[uint64]*format.SubvolItem, error) {
	items := map[uint64]*format.SubvolItem{}
	tr, ok := tx.ReadTree(format.TreeSubvol)
	if !ok {
		return items, nil
	}
	var ierr error
	err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		it, why := subvolItemProblem(k, v)
		if it == nil {
			ierr = fmt.Errorf("subvolume item %s: %s: %w", k, why, format.ErrCorrupt)
			return false
		}
		items[k.Obj] = it
		return true
	})
	if err == nil {
		err = ierr
	}
	return items, err
}

// subvolScan is what the subvolume rebuild reads of a pinned generation.
type subvolScan struct {
	kept map[uint64]*format.SubvolItem // the readable items
	// The uuid tree's keys by subvolume id and type (its readable part).
	uuids map[uint64]map[uint8][]format.UUID
	// The subvolumes that have inodes, with the oldest inode generation.
	inodes map[uint64]uint64
	// Entries naming a subvolume root, by root.
	named map[uint64]int
	// The items the old tree counted and read, and what the salvage of
	// its orphaned leaves gave.
	claimed, collected uint64
	sv                 Salvaged
}

// readableTree hands fn every item of tree id in s that can be read:
// the walk goes past damage, and the intact leaves below a damaged node
// are read back from the blocks the rmap lists as the tree's.
func readableTree(ctx context.Context, s *engine.Snapshot, id format.TreeID, fn func(k format.Key, v []byte) bool) (claimed uint64, sv Salvaged, err error) {
	t, ok := s.ScanTree(id)
	if !ok {
		return 0, sv, nil
	}
	walk := newWalkTrace()
	if err := t.Check(walk.visitor(eb.CheckVisitor{Item: func(k format.Key, v []byte) { fn(k, v) }})); err != nil {
		return 0, sv, fmt.Errorf("read the old %s tree: %w", id, err)
	}
	if walk.damaged {
		owned, err := rmapTreeBlocks(ctx, s, id)
		if err != nil {
			return 0, sv, err
		}
		if sv, err = salvage(ctx, s, id, owned, walk, func(k format.Key, v []byte) (bool, error) { return fn(k, v), nil }); err != nil {
			return 0, sv, fmt.Errorf("salvage the old %s tree: %w", id, err)
		}
	}
	return t.Items, sv, nil
}

func (sc *subvolScan) scan(ctx context.Context, s *engine.Snapshot) error {
	var err error
	sc.claimed, sc.sv, err = readableTree(ctx, s, format.TreeSubvol, func(k format.Key, v []byte) bool {
		it, _ := subvolItemProblem(k, v)
		if it != nil {
			sc.kept[k.Obj] = it
		}
		return it != nil
	})
	if err != nil {
		return err
	}
	sc.collected = uint64(len(sc.kept))
	// The uuid tree is no input: what of it can be read is used.
	if _, _, err := readableTree(ctx, s, format.TreeUUID, func(k format.Key, v []byte) bool {
		if uuidItemProblem(k, v) != "" {
			return false
		}
		m := sc.uuids[k.Aux]
		if m == nil {
			m = map[uint8][]format.UUID{}
			sc.uuids[k.Aux] = m
		}
		if u := format.UUIDOfKey(k); !slices.Contains(m[k.Type], u) {
			m[k.Type] = append(m[k.Type], u)
		}
		return true
	}); err != nil {
		return err
	}
	if err := scanTree(s, format.TreeInode, func(k format.Key, v []byte) error {
		id := format.SubvolOf(k.Obj)
		if k.Type != format.TypeInodeItem || id == 0 {
			return nil
		}
		in, err := format.DecodeInodeItem(v)
		if err != nil {
			return fmt.Errorf("inode %d: %w", k.Obj, err)
		}
		if g, ok := sc.inodes[id]; !ok || in.Generation < g {
			sc.inodes[id] = in.Generation
		}
		return nil
	}); err != nil {
		return fmt.Errorf("read the inode tree: %w", err)
	}
	if err := scanTree(s, format.TreeDir, func(k format.Key, v []byte) error {
		if k.Type != format.TypeDirEntry {
			return nil
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return fmt.Errorf("directory entry %s: %w", k, err)
		}
		if format.IsSubvolRoot(de.Ino) {
			sc.named[de.Ino]++
		}
		return nil
	}); err != nil {
		return fmt.Errorf("read the directory tree: %w", err)
	}
	return nil
}

// only returns the one UUID of the list, if it has exactly one.
func only(us []format.UUID) (format.UUID, bool) {
	if len(us) == 1 {
		return us[0], true
	}
	return format.UUID{}, false
}

// newSubvolUUID is a random (version 4) UUID, as a create makes.
func newSubvolUUID() format.UUID {
	var u format.UUID
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// maxSubvolChanges bounds the lines a subvolume rebuild reports, one per
// subvolume made again or marked; the rest are counted.
const maxSubvolChanges = 20

// repairSubvol is the subvol row's repairer.
func repairSubvol(ctx context.Context, e *engine.Engine, _ ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	touched, unwatch := watchInodes(e)
	defer unwatch()
	// Entries naming subvolume roots added or removed from now on.
	var mu sync.Mutex
	var dirents []engine.DirentEvent
	h := e.Hooks().Dirent.Register(func(ev engine.DirentEvent) {
		if format.IsSubvolRoot(ev.Entry.Ino) {
			mu.Lock()
			dirents = append(dirents, ev)
			mu.Unlock()
		}
	})
	defer e.Hooks().Dirent.Unregister(h)
	if err := e.Sync(); err != nil {
		return nil, err
	}

	pin := e.Pin()
	gen := pin.Gen()
	rb := &RebuildReport{Structure: "subvol", Gen: uint64(gen)}
	sc := &subvolScan{kept: map[uint64]*format.SubvolItem{}, uuids: map[uint64]map[uint8][]format.UUID{},
		inodes: map[uint64]uint64{}, named: map[uint64]int{}}
	err := sc.scan(ctx, pin)
	var cands map[format.BlockNr]format.TreeID
	var note string
	if err == nil {
		cands, note, err = ownedBlocks(ctx, e, pin, func(owner format.TreeID, _ format.BlockNr) bool { return owner == format.TreeSubvol })
	}
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	var held time.Duration
	var changes []string
	var items map[uint64]*format.SubvolItem
	err = e.RunExclusive(func(x *engine.Exclusive) error {
		defer func() { held = x.Held() }()
		if _, ok := x.ReadTree(format.TreeSubvol); !ok {
			return nil // no tree: nothing to rebuild
		}
		// What writers did since the pin.
		mu.Lock()
		evs := dirents
		dirents = nil
		mu.Unlock()
		for _, ev := range evs {
			if ev.Gen <= gen {
				continue
			}
			rb.Events++
			if ev.Op == engine.OpDelete {
				sc.named[ev.Entry.Ino]--
			} else {
				sc.named[ev.Entry.Ino]++
			}
		}
		ids := map[uint64]bool{}
		for id := range sc.inodes {
			ids[id] = true
		}
		for _, ino := range touched.take() {
			if id := format.SubvolOf(ino); id != 0 {
				ids[id] = true
			}
			rb.Events++
		}
		var err error
		if items, err = subvolReread(x.Tx, sc.kept); err != nil {
			return err
		}
		uuidsUsed := map[format.UUID]bool{}
		for _, it := range items {
			uuidsUsed[it.UUID] = true
		}
		// The snapshots being filled (snapshot.go): a snapshot's item made
		// again gets its parent UUID and its fill mark from them.
		snapFills := map[uint64]*format.SnapFillItem{}
		if nt, ok := x.ReadTree(format.TreeSnapshot); ok {
			if _, err := readableTreeItems(nt, func(k format.Key, v []byte) {
				if fi, why := snapItemProblem(k, v); why == "" && fi != nil {
					snapFills[k.Obj] = fi
				}
			}); err != nil {
				return err
			}
		}
		deleting := false
		for _, id := range slices.Sorted(maps.Keys(ids)) {
			if items[id] != nil {
				continue
			}
			has, oldest, err := subvolInodes(x.Tx, id)
			if err != nil {
				return err
			}
			if !has {
				continue // freed since the scan
			}
			if g, ok := sc.inodes[id]; ok && g < oldest {
				oldest = g
			}
			root, err := inodeIn(x.Tx, format.SubvolRootIno(id))
			if err != nil {
				return fmt.Errorf("subvolume %d's root: %w", id, err)
			}
			it := &format.SubvolItem{CTransID: oldest}
			if root != nil {
				it.CTransID, it.CTime = root.Generation, root.Btime
			}
			var how []string
			if u, ok := only(sc.uuids[id][format.TypeUUIDSubvol]); ok && !uuidsUsed[u] {
				it.UUID = u
				how = append(how, "its UUID from the uuid tree")
			} else {
				it.UUID = newSubvolUUID()
				how = append(how, "a new UUID (the uuid tree does not say which it had)")
			}
			uuidsUsed[it.UUID] = true
			if u, ok := only(sc.uuids[id][format.TypeUUIDReceived]); ok {
				it.ReceivedUUID = u
				how = append(how, "its received UUID from the uuid tree")
			}
			if fi := snapFills[id]; fi != nil && items[fi.Source] != nil {
				it.ParentUUID = items[fi.Source].UUID
				it.Flags |= format.SubvolFilling
				it.FillLimit = fi.Limit
				how = append(how, fmt.Sprintf("its parent UUID and fill from its snapshot fill item (a snapshot of subvolume %d being filled)", fi.Source))
			}
			if sc.named[format.SubvolRootIno(id)] <= 0 && (root == nil || root.Nlink == 0) {
				it.Flags |= format.SubvolDeleting
				it.ReapNext = format.SubvolIno(id, 0)
				deleting = true
				how = append(how, "marked being deleted (its root is named nowhere and is gone or has no link): the reaper frees what is left")
			}
			items[id] = it
			changes = append(changes, fmt.Sprintf("subvolume %d had no item: made again with %s", id, joinAnd(how)))
		}
		// A live subvolume whose root is named nowhere and is gone or has
		// no link is a deletion whose flag was lost.
		for _, id := range slices.Sorted(maps.Keys(items)) {
			it := items[id]
			if it.Flags&format.SubvolDeleting != 0 || sc.named[format.SubvolRootIno(id)] > 0 {
				continue
			}
			root, err := inodeIn(x.Tx, format.SubvolRootIno(id))
			if err != nil {
				return fmt.Errorf("subvolume %d's root: %w", id, err)
			}
			if root == nil || root.Nlink == 0 {
				it.Flags |= format.SubvolDeleting
				it.ReapNext = format.SubvolIno(id, 0)
				deleting = true
				changes = append(changes, fmt.Sprintf("subvolume %d: its root is named nowhere and is gone or has no link, as only its deletion leaves it: marked being deleted, the reaper frees what is left", id))
			}
		}
		oldBlocks(x, format.TreeSubvol, cands, gen, note != "")
		t, n, err := x.ResetTree(format.TreeSubvol, cands)
		if err != nil {
			return fmt.Errorf("replace the subvolume tree: %w", err)
		}
		for _, id := range slices.Sorted(maps.Keys(items)) {
			if err := t.Put(format.SubvolKey(id), items[id].Encode()); err != nil {
				return fmt.Errorf("subvolume item %d: %w", id, err)
			}
		}
		if deleting {
			x.RequirePass(engine.PassSubvolReap)
		}
		rb.OldBlocks, rb.NewBlocks = uint64(n), treeBlocks(t)
		e.MarkRepaired(engine.StructSubvol, x.Gen())
		return nil
	})
	if err != nil {
		return nil, err
	}
	rb.Records = uint64(len(items))
	rb.DurationS = time.Since(start).Seconds()
	rb.PauseMs = float64(held.Microseconds()) / 1000
	if len(items) == 0 {
		rb.Changes = append(rb.Changes, "wrote a new empty subvol tree (no inode is in a subvolume)")
	}
	rb.Changes = append(rb.Changes, salvagedChanges(sc.sv)...)
	if len(changes) > maxSubvolChanges {
		n := len(changes) - maxSubvolChanges
		changes = append(changes[:maxSubvolChanges], fmt.Sprintf("and %d more subvolumes made again or marked", n))
	}
	rb.Changes = append(rb.Changes, changes...)
	if sc.claimed > sc.collected {
		rb.Changes = append(rb.Changes, fmt.Sprintf("%d subvolume items the damage made unreadable or invalid (the tree counted %d, %d read): made again from the inodes where any are left", sc.claimed-sc.collected, sc.claimed, sc.collected))
	}
	if note != "" {
		rb.Changes = append(rb.Changes, note)
	}
	return rb, nil
}

func joinAnd(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	out := s[0]
	for _, x := range s[1 : len(s)-1] {
		out += ", " + x
	}
	return out + " and " + s[len(s)-1]
}

// subvolReread returns the subvolume items of the running transaction's
// tree that can be read, with, where that read meets damage, the pinned
// items (kept) it could not read and a look-up does not show changed or
// removed.
func subvolReread(tx *engine.Tx, kept map[uint64]*format.SubvolItem) (map[uint64]*format.SubvolItem, error) {
	items := map[uint64]*format.SubvolItem{}
	tr, ok := tx.ReadTree(format.TreeSubvol)
	if !ok {
		return items, nil
	}
	damaged := false
	err := tr.Check(eb.CheckVisitor{
		Item: func(k format.Key, v []byte) {
			if it, _ := subvolItemProblem(k, v); it != nil {
				items[k.Obj] = it
			}
		},
		Problem: func(eb.Problem) { damaged = true },
	})
	if err != nil {
		return nil, fmt.Errorf("read the subvolume tree: %w", err)
	}
	if !damaged {
		return items, nil
	}
	for id, it := range kept {
		if items[id] != nil {
			continue
		}
		v, found, err := tr.Get(format.SubvolKey(id), nil)
		switch {
		case errors.Is(err, format.ErrCorrupt):
			items[id] = it // behind the damage: the pinned copy stands
		case err != nil:
			return nil, err
		case found:
			if live, _ := subvolItemProblem(format.SubvolKey(id), v); live != nil {
				items[id] = live
			}
		}
	}
	return items, nil
}

// subvolInodes says whether subvolume id has an inode in tx, and the
// generation of its first.
func subvolInodes(tx *engine.Tx, id uint64) (has bool, gen uint64, err error) {
	tr, _ := tx.ReadTree(format.TreeInode)
	end := format.SubvolIno(id+1, 0)
	var derr error
	err = tr.Ascend(format.InodeKey(format.SubvolIno(id, 0)), func(k format.Key, v []byte) bool {
		if k.Obj >= end {
			return false
		}
		if k.Type != format.TypeInodeItem {
			return true
		}
		in, err := format.DecodeInodeItem(v)
		if err != nil {
			derr = fmt.Errorf("inode %d: %w", k.Obj, err)
			return false
		}
		has, gen = true, in.Generation
		return false
	})
	if err == nil {
		err = derr
	}
	return has, gen, err
}
