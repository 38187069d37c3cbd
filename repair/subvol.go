package repair

import (
	"maps"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The checkers of the subvolume and uuid trees (format/subvol.go). Every
// subvolume item must decode under its key (id, TypeSubvolItem, 0, 0);
// every uuid tree item must be an empty (uuid, TypeUUIDSubvol or
// TypeUUIDReceived, uuid, id) key (item_bad otherwise). Then, across the
// trees:
//
//   - a live subvolume's root inode exists, is a directory and is named
//     by exactly one directory entry (subvol_root);
//   - every inode of a subvolume other than the top level belongs to a
//     subvolume that has an item (subvol_orphan, once per subvolume);
//   - every subvolume's UUID, and its received UUID when set, has its key
//     in the uuid tree (uuid_missing), and every key of the uuid tree
//     names a subvolume that has that UUID (uuid_orphan).
//
// A subvolume being deleted (SubvolDeleting) is half-freed by design: its
// root has no name and no link and is not on the deleted list, and the
// reaper frees its inodes in batches, leaving entries naming inodes
// already freed and inodes whose names went with their directory. The
// namespace checks (dir.go, inode.go, deleted.go) judge none of its
// inodes; nor, while the subvolume tree cannot be read whole, any inode
// outside the top level, nor the inodes of a subvolume whose item is
// missing (subvol_orphan says so, and the subvolume repair decides from
// its root whether the subvolume was being deleted), nor those of a live
// subvolume whose root is gone or has no link: that is the state only a
// deletion leaves, whose flag was lost (subvol_root says so, and the
// subvolume repair marks the deletion). A subvolume's root is
// never on the deleted list: its link count reaches zero only by the
// subvolume's deletion.

// subvolState is what the walks of the subvolume and uuid trees collect:
// one entry per subvolume and per uuid key (the trees hold a few items
// per subvolume).
type subvolState struct {
	items   map[uint64]*format.SubvolItem // by id
	bad     bool                          // an item did not decode: the set is incomplete
	uuids   []format.Key                  // the uuid tree's keys, in key order
	uuidBad bool                          // a uuid item was not a uuid key
	// The live subvolumes whose root is gone or has no link: a deletion
	// whose flag was lost (subvol_root; the repair marks it), found on the
	// first look (interruptedDone).
	interrupted     map[uint64]bool
	interruptedDone bool
}

var subvolCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeSubvol: checkSubvolItem,
	},
	cross: checkSubvols,
}

var uuidCheck = &checker{
	items: map[format.TreeID]func(*checkState, format.BlockNr, format.Key, []byte){
		format.TreeUUID: checkUUIDItem,
	},
	cross: checkUUIDs,
}

// subvolItemProblem says what is wrong with an item of the subvolume
// tree, or returns the decoded item. The repair keeps exactly the items
// it accepts.
func subvolItemProblem(k format.Key, v []byte) (*format.SubvolItem, string) {
	if k.Type != format.TypeSubvolItem || k.Off != 0 || k.Aux != 0 || k.Obj == 0 || k.Obj > format.MaxSubvolID {
		return nil, "not a subvolume item"
	}
	it, err := format.DecodeSubvolItem(v)
	if err != nil {
		return nil, err.Error()
	}
	return it, ""
}

// uuidItemProblem says what is wrong with an item of the uuid tree.
func uuidItemProblem(k format.Key, v []byte) string {
	if k.Type != format.TypeUUIDSubvol && k.Type != format.TypeUUIDReceived {
		return "not a uuid item"
	}
	if len(v) != 0 {
		return "a uuid item with a value"
	}
	return ""
}

func checkSubvolItem(st *checkState, root format.BlockNr, k format.Key, v []byte) {
	sv := &st.subvol
	it, why := subvolItemProblem(k, v)
	if it == nil {
		sv.bad = true
		st.Reportf(engine.ErrItemBad, format.TreeSubvol, root, "subvolume item %s: %s", k, why)
		return
	}
	if sv.items == nil {
		sv.items = map[uint64]*format.SubvolItem{}
	}
	sv.items[k.Obj] = it
}

func checkUUIDItem(st *checkState, root format.BlockNr, k format.Key, v []byte) {
	sv := &st.subvol
	if why := uuidItemProblem(k, v); why != "" {
		sv.uuidBad = true
		st.Reportf(engine.ErrItemBad, format.TreeUUID, root, "uuid item %s: %s", k, why)
		return
	}
	sv.uuids = append(sv.uuids, k)
}

// subvolsKnown says whether the walk read every subvolume item.
func (st *checkState) subvolsKnown() bool {
	return !st.Broken(format.TreeSubvol) && !st.subvol.bad
}

// halfFreed says whether the namespace checks must leave inode ino
// alone: it belongs to a subvolume being deleted, or to one whose item is
// missing, or, when the subvolume tree could not be read whole, to any
// subvolume but the top level.
func (st *checkState) halfFreed(ino uint64) bool {
	id := format.SubvolOf(ino)
	if id == 0 {
		return false
	}
	if !st.subvolsKnown() {
		return true
	}
	it := st.subvol.items[id]
	return it == nil || it.Flags&format.SubvolDeleting != 0 || st.interrupted()[id] || st.snapFilling(id)
}

// interrupted returns the live subvolumes whose root is gone or has no
// link (the inodes as the walk met them).
func (st *checkState) interrupted() map[uint64]bool {
	sv := &st.subvol
	if sv.interruptedDone {
		return sv.interrupted
	}
	sv.interruptedDone = true
	sv.interrupted = map[uint64]bool{}
	if st.Broken(format.TreeInode) {
		return sv.interrupted
	}
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	for _, id := range slices.Sorted(maps.Keys(sv.items)) {
		if sv.items[id].Flags&format.SubvolDeleting != 0 {
			continue
		}
		if in, ok := inodes.last(format.SubvolRootIno(id)); !ok || in.nlink == 0 {
			sv.interrupted[id] = true
		}
	}
	return sv.interrupted
}

// checkSubvols reports the subvolumes whose root is wrong and the inodes
// of subvolumes that have no item.
func checkSubvols(st *checkState) {
	if !st.subvolsKnown() || st.inodes.len() == 0 || st.Broken(format.TreeInode) {
		return
	}
	items := st.subvol.items
	// The inodes by subvolume: the stream is by inode number, so each
	// subvolume's inodes are one run, after the top level's (skipped by
	// a binary search).
	total := st.inodes.len()
	lo, hi := uint64(0), total
	for lo < hi {
		m := lo + (hi-lo)/2
		if format.SubvolOf(st.inodes.at(m).ino) == 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	// An inode unlinked while open (no link, on the deleted list) is no
	// subvolume's: its last close frees it, and the reaper leaves it
	// behind when it removes its deleted subvolume's item.
	deleted := newSeeker(st.sortedDeleted(), ident, cmpUint)
	var cur, n, last uint64
	flush := func() {
		if cur != 0 && n > 0 && items[cur] == nil {
			st.Reportf(engine.ErrSubvolOrphan, format.TreeSubvol, 0, "%d inodes of subvolume %d, which has no item", n, cur)
		}
	}
	for i := lo; i < total && st.err == nil; i++ {
		in := st.inodes.at(i)
		ino := in.ino
		if i > lo && ino == last {
			continue // an inode item twice: counted once
		}
		last = ino
		if in.nlink == 0 && deleted.seek(ino) > 0 {
			continue
		}
		if id := format.SubvolOf(ino); id != cur {
			flush()
			cur, n = id, 0
		}
		n++
	}
	flush()

	// Each live subvolume's root: an existing directory, named once.
	ids := make([]uint64, 0, len(items))
	for id, it := range items {
		if it.Flags&format.SubvolDeleting == 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	inodes := newSeeker(st.inodes, inodeNr, cmpUint)
	var links *seeker[nsName, uint64]
	if !st.Broken(format.TreeDir) {
		links = newSeeker(st.sortedNames(), func(d nsName) uint64 { return d.ino }, cmpUint)
	}
	for _, id := range ids {
		ino := format.SubvolRootIno(id)
		in, ok := inodes.last(ino)
		switch {
		case !ok:
			st.Reportf(engine.ErrSubvolRoot, format.TreeSubvol, 0, "subvolume %d: its root directory, inode %d, does not exist", id, ino)
		case !in.isDir():
			st.Reportf(engine.ErrSubvolRoot, format.TreeSubvol, 0, "subvolume %d: its root, inode %d, has mode %o, not a directory", id, ino, in.mode)
		case links != nil:
			if n := links.seek(ino); n != 1 {
				st.Reportf(engine.ErrSubvolRoot, format.TreeSubvol, 0, "subvolume %d: its root directory, inode %d, is named by %d directory entries, not one (link count %d)", id, ino, n, in.nlink)
			}
		}
	}
}

// wantUUIDKeys returns the uuid tree keys the subvolume items imply,
// sorted.
func wantUUIDKeys(items map[uint64]*format.SubvolItem) []format.Key {
	var keys []format.Key
	for id, it := range items {
		keys = append(keys, format.UUIDKey(it.UUID, format.TypeUUIDSubvol, id))
		if !it.ReceivedUUID.IsZero() {
			keys = append(keys, format.UUIDKey(it.ReceivedUUID, format.TypeUUIDReceived, id))
		}
	}
	slices.SortFunc(keys, format.Key.Compare)
	return keys
}

// checkUUIDs compares the uuid tree with the keys the subvolume items
// imply (a merge of two sorted lists).
func checkUUIDs(st *checkState) {
	sv := &st.subvol
	if !st.subvolsKnown() || st.Broken(format.TreeUUID) || sv.uuidBad {
		return
	}
	want, have := wantUUIDKeys(sv.items), sv.uuids
	kind := func(k format.Key) string {
		if k.Type == format.TypeUUIDReceived {
			return "received UUID"
		}
		return "UUID"
	}
	for len(want) > 0 || len(have) > 0 {
		c := 0
		switch {
		case len(want) == 0:
			c = 1
		case len(have) == 0:
			c = -1
		default:
			c = want[0].Compare(have[0])
		}
		switch {
		case c < 0:
			k := want[0]
			st.Reportf(engine.ErrUUIDMissing, format.TreeUUID, 0, "subvolume %d: its %s %s is missing from the uuid tree", k.Aux, kind(k), format.UUIDOfKey(k))
			want = want[1:]
		case c > 0:
			k := have[0]
			why := "which has no item"
			if it := sv.items[k.Aux]; it != nil {
				why = "whose " + kind(k) + " is not that"
			}
			st.Reportf(engine.ErrUUIDOrphan, format.TreeUUID, 0, "uuid tree key %s maps %s %s to subvolume %d, %s", k, kind(k), format.UUIDOfKey(k), k.Aux, why)
			have = have[1:]
		default:
			want, have = want[1:], have[1:]
		}
	}
}

// settledInodes reads the subvolume tree of s and returns the test the
// namespace repairs (link counts, orphans adopted into /lost+found, the
// deleted list) apply before they change an inode: it is in the top level
// or in a live subvolume. The inodes of a subvolume being deleted are the
// reaper's, half-freed by design; those of a subvolume without an item
// wait for the subvolume repair; while the tree cannot be read whole only
// the top level's inodes are judged.
func settledInodes(s *engine.Snapshot) func(ino uint64) bool {
	live := map[uint64]bool{}
	whole := false
	itr, iok := s.Tree(format.TreeInode)
	if t, ok := s.Tree(format.TreeSubvol); ok && iok {
		bad := false
		err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			it, _ := subvolItemProblem(k, v)
			if it == nil {
				bad = true
				return false
			}
			live[k.Obj] = it.Flags&(format.SubvolDeleting|format.SubvolFilling) == 0
			return true
		})
		whole = err == nil && !bad
		// A live subvolume whose root is gone or has no link is a
		// deletion whose flag was lost: the subvolume repair's.
		for id, ok := range live {
			if !ok || !whole {
				continue
			}
			v, found, err := itr.Get(format.InodeKey(format.SubvolRootIno(id)), nil)
			if err != nil {
				whole = false
				break
			}
			in, derr := format.DecodeInodeItem(v)
			live[id] = found && derr == nil && in.Nlink > 0
		}
	}
	filling, swhole := fillingSnapshots(s) // snapshot.go
	return func(ino uint64) bool {
		id := format.SubvolOf(ino)
		return id == 0 || whole && swhole && live[id] && !filling[id]
	}
}
