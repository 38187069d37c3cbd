package fs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Snapshots (format 1.8; the items are in engine/format/snapshot.go).
//
// A snapshot is a subvolume made in one transaction whose size does not
// depend on its source's: the new subvolume's item (ParentUUID: the
// source's UUID), its root directory (a copy of the source's root, with
// its entries), its name, and a fill item that records the source and the
// object id counter at that moment (Limit: every inode the source had
// then has a local number up to it). Nothing else is copied then. From
// then on, until the fill ends, three rules keep the snapshot exactly the
// source as it was:
//
//   - Copy before change. A guard on the engine's trees (engine.SetGuard)
//     sees every change to the inode, directory, extent and xattr trees
//     before it is made. A change to an inode of the source whose local
//     number the snapshot can still need (Next ≤ n ≤ Limit) first copies
//     that inode into the snapshot, in the same transaction: its inode
//     item, symlink target, directory entries (naming the snapshot's
//     numbers), attributes, and its file extent items, each taking one
//     more reference to the data it names through the delayed-ref queue.
//     So an inode the snapshot has not copied is unchanged in the source.
//   - Copy on use. Every call of the filesystem that names an inode of
//     the snapshot first copies it if it is not there yet (prepare): the
//     snapshot then serves it as its own. Lookups copy the child they
//     return, so a path walked down from the root finds every directory
//     on it copied.
//   - Whiteouts. An inode the snapshot frees before the fill passed it
//     leaves a whiteout key, so that neither the fill nor a change in the
//     source copies it back.
//
// A background filler copies the remaining inodes in order of number, a
// batch per transaction, recording Next in the fill item; the transaction
// that passes Limit removes the fill item and the whiteouts, and the
// snapshot is an ordinary subvolume. Data is shared, never copied:
// metadata is copied, once, in the background. The fill is a logged
// operation: recovery pass snapshot_fill is set while one is under way and
// a crash resumes from Next.
//
// Rules at the edges: the top level cannot be snapshotted, nor a
// subvolume holding other subvolumes, nor one still being filled; a
// subvolume is not deleted while a snapshot of it is being filled. A
// read-only snapshot refuses every change (EROFS); it can be deleted.

// Errors of the snapshot calls.
var (
	ErrNoSnapshots = fmt.Errorf("the image's format predates snapshots (1.8): upgrade it first (scrubd upgrade IMAGE, or mount --version-upgrade incompatible): %w", syscall.EOPNOTSUPP)
	// ErrSnapTopLevel: the top level has no item or UUID to name.
	ErrSnapTopLevel = fmt.Errorf("the top level cannot be snapshotted: snapshot a subvolume: %w", syscall.EINVAL)
	// ErrSnapNested: a snapshot would have to show the nested
	// subvolumes' roots as something.
	ErrSnapNested = fmt.Errorf("the subvolume holds other subvolumes, which a snapshot cannot hold: %w", syscall.EBUSY)
	// ErrSnapFilling: a snapshot still reading from its own source.
	ErrSnapFilling = fmt.Errorf("the subvolume is a snapshot still being filled: wait for its fill to end (scrubd subvol show): %w", syscall.EBUSY)
	// ErrSnapSource: a subvolume is not deleted while a snapshot of it is
	// being filled from it.
	ErrSnapSource = fmt.Errorf("a snapshot of the subvolume is still being filled from it: wait for the fill to end: %w", syscall.EBUSY)
	// ErrSnapBlind: the snapshot tree is damaged, so a change in a
	// subvolume might be one a snapshot's fill must see first.
	ErrSnapBlind = fmt.Errorf("the snapshot tree is damaged: changes inside subvolumes wait for its repair (scrubd scrub --repair): %w", syscall.EIO)
)

// snapFill is one snapshot's fill under way (format.SnapFillItem).
type snapFill struct {
	id     uint64 // the snapshot
	source uint64
	limit  uint64
	next   uint64 // changed only under the writer lock (and mu)
}

// snapState is the fills under way and the read-only subvolumes, loaded
// at open and kept current by the calls that change them.
type snapState struct {
	mu       sync.Mutex
	fills    atomic.Int32 // how many: the fast path of every check
	endedN   atomic.Int32 // len(ended)
	byID     map[uint64]*snapFill
	bySource map[uint64][]*snapFill
	roAny    atomic.Bool // ro is not empty, or blind
	ro       map[uint64]bool
	// blind: the snapshot tree could not be read, so the fills are not
	// known: every change inside a subvolume is refused.
	blind bool
	// ended: fills that ended (or were dropped) in a generation not yet
	// durable: their subvolumes' fsyncs still commit, since a crash
	// would bring the fill back under way beside a log replayed without
	// the copies it needs.
	ended []endedFill
}

type endedFill struct {
	id, source uint64
	gen        format.Gen
}

// fillOf returns a copy of subvolume id's fill, if it is being filled.
func (s *snapState) fillOf(id uint64) (snapFill, bool) {
	if s.fills.Load() == 0 {
		return snapFill{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fl := s.byID[id]
	if fl == nil {
		return snapFill{}, false
	}
	return *fl, true
}

// sourceFills returns copies of the fills reading from subvolume id.
func (s *snapState) sourceFills(id uint64) []snapFill {
	if s.fills.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []snapFill
	for _, fl := range s.bySource[id] {
		out = append(out, *fl)
	}
	return out
}

// register adds a fill (the caller holds the writer lock) and sets the
// guard on its first.
func (f *FS) registerFill(fl snapFill) {
	s := &f.snap
	s.mu.Lock()
	if s.byID == nil {
		s.byID, s.bySource = map[uint64]*snapFill{}, map[uint64][]*snapFill{}
	}
	p := &fl
	s.byID[fl.id] = p
	s.bySource[fl.source] = append(s.bySource[fl.source], p)
	n := s.fills.Add(1)
	s.mu.Unlock()
	if n == 1 {
		f.e.SetGuard(f.guard)
	}
}

// unregisterFill forgets snapshot id's fill, and the guard with the last;
// gen is the generation that ended it (0: none did, it never was).
func (f *FS) unregisterFill(id uint64, gen format.Gen) {
	s := &f.snap
	s.mu.Lock()
	fl := s.byID[id]
	if fl == nil {
		s.mu.Unlock()
		return
	}
	if gen != 0 {
		s.ended = append(s.ended, endedFill{id: id, source: fl.source, gen: gen})
		s.endedN.Store(int32(len(s.ended)))
	}
	delete(s.byID, id)
	s.bySource[fl.source] = slices.DeleteFunc(s.bySource[fl.source], func(p *snapFill) bool { return p == fl })
	if len(s.bySource[fl.source]) == 0 {
		delete(s.bySource, fl.source)
	}
	n := s.fills.Add(-1)
	s.mu.Unlock()
	if n == 0 {
		f.e.SetGuard(nil)
	}
}

// setNext records snapshot id's fill position (under the writer lock).
func (f *FS) setNext(id, next uint64) {
	f.snap.mu.Lock()
	if fl := f.snap.byID[id]; fl != nil {
		fl.next = next
	}
	f.snap.mu.Unlock()
}

func (f *FS) setReadOnly(id uint64, ro bool) {
	s := &f.snap
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ro == nil {
		s.ro = map[uint64]bool{}
	}
	if ro {
		s.ro[id] = true
	} else {
		delete(s.ro, id)
	}
	s.roAny.Store(len(s.ro) > 0 || s.blind)
}

// loadSnapshots reads the read-only subvolumes and the fills under way
// (at open, and again after a repair of either tree). Damage does not
// fail the mount: a read-only flag the damage hides is not enforced until
// the subvolume tree is repaired, and while the snapshot tree cannot be
// read every change inside a subvolume is refused (blind): a fill the
// damage hides would not see its source change.
func (f *FS) loadSnapshots() {
	// Under the writer lock (on a read-write mount): no fill step runs
	// between the read and the reconciling.
	run := f.e.Update
	if f.opts.ReadOnly {
		run = f.e.View
	}
	run(func(tx *engine.Tx) error {
		f.loadSnapshotsTx(tx)
		return nil
	})
}

func (f *FS) loadSnapshotsTx(tx *engine.Tx) {
	var ro []uint64
	var fills []snapFill
	var fillErr error
	items := map[uint64]*format.SubvolItem{}
	str, _ := tx.ReadTree(format.TreeSubvol)
	roErr := str.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeSubvolItem {
			return true
		}
		it, err := format.DecodeSubvolItem(v)
		if err != nil {
			return true
		}
		items[k.Obj] = it
		if it.Flags&format.SubvolReadOnly != 0 && it.Flags&format.SubvolDeleting == 0 {
			ro = append(ro, k.Obj)
		}
		return true
	})
	if ntr, ok := tx.ReadTree(format.TreeSnapshot); ok {
		var derr error
		fillErr = ntr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeSnapFill {
				return true
			}
			it, err := format.DecodeSnapFillItem(v)
			if err != nil {
				derr = fmt.Errorf("snapshot %d: %w", k.Obj, err)
				return false
			}
			fills = append(fills, snapFill{id: k.Obj, source: it.Source, limit: it.Limit, next: it.Next})
			return true
		})
		if fillErr == nil {
			fillErr = derr
		}
	}
	if roErr != nil {
		f.e.Logger().Warn("the subvolume tree is damaged: read-only flags it hides are not enforced until its repair", "err", roErr)
	}
	s := &f.snap
	s.mu.Lock()
	s.ro = map[uint64]bool{}
	for _, id := range ro {
		s.ro[id] = true
	}
	s.blind = fillErr != nil
	s.roAny.Store(len(s.ro) > 0 || s.blind)
	var known []uint64
	for id := range s.byID {
		known = append(known, id)
	}
	s.mu.Unlock()
	if fillErr != nil {
		f.e.Logger().Warn("the snapshot tree is damaged: changes inside subvolumes are refused until its repair", "err", fillErr)
		return
	}
	// A snapshot marked being filled whose fill item is missing (lost to
	// damage): filled again from the start, from the source its parent
	// UUID names; the first fill step writes the item again.
	onDisk := map[uint64]bool{}
	for _, fl := range fills {
		onDisk[fl.id] = true
	}
	for _, id := range slices.Sorted(maps.Keys(items)) {
		it := items[id]
		if it.Flags&format.SubvolFilling == 0 || it.Flags&format.SubvolDeleting != 0 || onDisk[id] {
			continue
		}
		src := uint64(0)
		for sid, s := range items {
			if s.UUID == it.ParentUUID && s.Flags&format.SubvolDeleting == 0 {
				src = sid
			}
		}
		if src == 0 {
			f.e.Logger().Warn("a snapshot being filled has no fill item and its source is gone: what it had not copied is lost", "subvol", id)
			continue
		}
		f.e.Logger().Warn("a snapshot being filled has no fill item: its fill starts again", "subvol", id, "source", src)
		fills = append(fills, snapFill{id: id, source: src, limit: it.FillLimit})
		onDisk[id] = true
	}
	// Reconcile: a repair may have dropped a fill item, or kept one
	// this FS did not know.
	for _, fl := range fills {
		if !slices.Contains(known, fl.id) {
			f.registerFill(fl)
		}
	}
	for _, id := range known {
		if !onDisk[id] {
			f.unregisterFill(id, tx.Gen())
		}
	}
}

// guard is the engine's guard while fills are under way: a change to an
// inode of a source first copies it into each snapshot that can still
// need it.
func (f *FS) guard(tx *engine.Tx, tree format.TreeID, k format.Key) error {
	switch tree {
	case format.TreeInode, format.TreeDir, format.TreeExtent, format.TreeXattr:
	default:
		return nil
	}
	for _, fl := range f.snap.sourceFills(format.SubvolOf(k.Obj)) {
		if err := f.copyIn(tx, fl, format.LocalIno(k.Obj), 0); err != nil {
			return fmt.Errorf("copy inode %d into snapshot %d before it changes: %w", k.Obj, fl.id, err)
		}
	}
	return nil
}

// snapHas reports whether snapshot id has settled local inode n: copied,
// or freed (a whiteout).
func snapHas(tx *engine.Tx, id, n uint64) (bool, error) {
	if _, ok, err := getInode(tx, format.SubvolIno(id, n)); err != nil || ok {
		return ok, err
	}
	tr, ok := tx.ReadTree(format.TreeSnapshot)
	if !ok {
		return false, nil
	}
	_, ok, err := tr.Get(format.SnapWhiteoutKey(id, n), nil)
	return ok, err
}

// copyIn copies local inode n of fl's source into the snapshot, unless the
// fill no longer needs it (outside [Next, Limit], settled already, or not
// the source's: freed, or unlinked and open). parent, when not 0, is the
// copy's parent directory (the snapshot's root).
func (f *FS) copyIn(tx *engine.Tx, fl snapFill, n uint64, parent uint64) error {
	if n < fl.next || n > fl.limit {
		return nil
	}
	if has, err := snapHas(tx, fl.id, n); err != nil || has {
		return err
	}
	src, dst := format.SubvolIno(fl.source, n), format.SubvolIno(fl.id, n)
	in, ok, err := getInode(tx, src)
	if err != nil || !ok || in.Nlink == 0 {
		return err
	}
	remap := func(ino uint64) uint64 {
		if format.SubvolOf(ino) == fl.source {
			return format.SubvolIno(fl.id, format.LocalIno(ino))
		}
		return ino
	}
	cp := *in
	if parent != 0 {
		cp.Parent = parent
	} else if isDir(in) {
		cp.Parent = remap(in.Parent)
	}
	type kv struct {
		k format.Key
		v []byte
	}
	items := func(id format.TreeID) ([]kv, error) {
		tr, ok := tx.ReadTree(id)
		if !ok {
			return nil, nil
		}
		var out []kv
		err := tr.Ascend(format.Key{Obj: src}, func(k format.Key, v []byte) bool {
			if k.Obj != src {
				return false
			}
			out = append(out, kv{k, slices.Clone(v)})
			return true
		})
		return out, err
	}
	// The symlink target (the inode tree's other items).
	its, err := items(format.TreeInode)
	if err != nil {
		return err
	}
	itr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	for _, it := range its {
		if it.k.Type == format.TypeInodeItem {
			continue
		}
		it.k.Obj = dst
		if err := itr.Put(it.k, it.v); err != nil {
			return err
		}
	}
	if isDir(in) {
		des, err := items(format.TreeDir)
		if err != nil {
			return err
		}
		dtr, err := tx.Tree(format.TreeDir)
		if err != nil {
			return err
		}
		for _, it := range des {
			v := it.v
			if it.k.Type == format.TypeDirEntry || it.k.Type == format.TypeDirIndex {
				de, err := format.DecodeDirEntry(v)
				if err != nil {
					return fmt.Errorf("directory %d: %w", src, err)
				}
				if format.SubvolOf(de.Ino) != fl.source {
					return fmt.Errorf("directory %d names inode %d of another subvolume: %w", src, de.Ino, ErrSnapNested)
				}
				de.Ino = remap(de.Ino)
				v = de.Encode()
				if it.k.Type == format.TypeDirIndex {
					tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpInsert, Dir: dst, Entry: de})
				}
			}
			it.k.Obj = dst
			if err := dtr.Put(it.k, v); err != nil {
				return err
			}
		}
	}
	if isReg(in) {
		exts, err := items(format.TreeExtent)
		if err != nil {
			return err
		}
		etr, err := tx.Tree(format.TreeExtent)
		if err != nil {
			return err
		}
		for _, it := range exts {
			if it.k.Type != format.TypeFileExtent {
				return fmt.Errorf("inode %d: extent tree item %s: %w", src, it.k, format.ErrCorrupt)
			}
			fe, err := format.DecodeFileExtent(it.v)
			if err != nil {
				return fmt.Errorf("inode %d: %w", src, err)
			}
			if err := putExtent(tx, etr, dst, it.k.Off, fe, engine.OpInsert); err != nil {
				return err
			}
			tx.AddRef(format.Owner{Inode: dst, Offset: it.k.Off}, fe)
		}
	}
	xs, err := items(format.TreeXattr)
	if err != nil {
		return err
	}
	if len(xs) > 0 {
		xtr, err := tx.Tree(format.TreeXattr)
		if err != nil {
			return err
		}
		for _, it := range xs {
			it.k.Obj = dst
			if err := xtr.Put(it.k, it.v); err != nil {
				return err
			}
		}
	}
	return putInode(tx, dst, &cp)
}

// prepare copies into their snapshots the inodes among inos that a
// snapshot being filled does not hold yet, so that the call about to run
// finds them (copy on use).
func (f *FS) prepare(inos ...uint64) error {
	if f.snap.fills.Load() == 0 {
		return nil
	}
	for _, ino := range inos {
		fl, ok := f.snap.fillOf(format.SubvolOf(ino))
		n := format.LocalIno(ino)
		if !ok || n < fl.next || n > fl.limit {
			continue
		}
		var has bool
		if err := f.e.View(func(tx *engine.Tx) error {
			var err error
			has, err = snapHas(tx, fl.id, n)
			return err
		}); err != nil {
			return err
		}
		if has {
			continue
		}
		if f.opts.ReadOnly {
			return fmt.Errorf("snapshot %d is still being filled and this mount is read-only (a read-write mount finishes the fill): %w", fl.id, syscall.EIO)
		}
		if err := f.e.Update(func(tx *engine.Tx) error {
			fl, ok := f.snap.fillOf(fl.id)
			if !ok {
				return nil
			}
			return f.copyIn(tx, fl, n, 0)
		}); err != nil {
			return err
		}
	}
	return nil
}

// prepareEntry prepares directory dir and what name names in it.
func (f *FS) prepareEntry(dir uint64, name string) error {
	if f.snap.fills.Load() == 0 {
		return nil
	}
	if err := f.prepare(dir); err != nil {
		return err
	}
	var child uint64
	err := f.e.View(func(tx *engine.Tx) error {
		if name == ".." {
			in, ok, err := getInode(tx, dir)
			if ok {
				child = in.Parent
			}
			return err
		}
		if name == "." || len(name) > format.MaxNameLen {
			return nil
		}
		de, _, ok, err := lookupEntry(tx, dir, name)
		if ok {
			child = de.Ino
		}
		return err
	})
	if err != nil || child == 0 {
		return err
	}
	return f.prepare(child)
}

// prepareAncestors prepares dir and every directory above it (a rename
// walks them).
func (f *FS) prepareAncestors(dir uint64) error {
	if f.snap.fills.Load() == 0 {
		return nil
	}
	for i := 0; i < 4096; i++ {
		if err := f.prepare(dir); err != nil {
			return err
		}
		var parent uint64
		if err := f.e.View(func(tx *engine.Tx) error {
			in, ok, err := getInode(tx, dir)
			if ok {
				parent = in.Parent
			}
			return err
		}); err != nil {
			return err
		}
		if parent == 0 || parent == dir || format.SubvolOf(parent) != format.SubvolOf(dir) {
			return nil
		}
		dir = parent
	}
	return nil
}

// writable refuses a change to an inode of a read-only subvolume.
func (f *FS) writable(inos ...uint64) error {
	if !f.snap.roAny.Load() {
		return nil
	}
	f.snap.mu.Lock()
	defer f.snap.mu.Unlock()
	for _, ino := range inos {
		if f.snap.ro[format.SubvolOf(ino)] {
			return syscall.EROFS
		}
		if f.snap.blind && format.SubvolOf(ino) != 0 {
			return ErrSnapBlind
		}
	}
	return nil
}

// snapInvolved reports whether ino's subvolume is being filled or is a
// fill's source: its fsync commits (the fast-fsync log's replay knows
// nothing of copies made before a change).
//
// A fill that ended in a generation not yet durable still counts: a crash
// would bring it back under way, and the log replayed onto it would make
// changes the snapshot never copied.
func (f *FS) snapInvolved(ino uint64) bool {
	s := &f.snap
	if s.fills.Load() == 0 && s.endedN.Load() == 0 {
		return false
	}
	id := format.SubvolOf(ino)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID[id] != nil || len(s.bySource[id]) > 0 {
		return true
	}
	involved := false
	s.ended = slices.DeleteFunc(s.ended, func(e endedFill) bool {
		if f.e.Durable(e.gen) {
			return true
		}
		involved = involved || e.id == id || e.source == id
		return false
	})
	s.endedN.Store(int32(len(s.ended)))
	return involved
}

// snapFreed leaves a whiteout when a snapshot being filled frees an inode
// its fill has not passed (called as the inode's items go).
//
// It reads the fill item itself rather than the fills in memory: the
// mount's deleted_inodes pass frees inodes before the FS has loaded them.
func (f *FS) snapFreed(tx *engine.Tx, ino uint64) error {
	id, n := format.SubvolOf(ino), format.LocalIno(ino)
	if id == 0 {
		return nil
	}
	rt, ok := tx.ReadTree(format.TreeSnapshot)
	if !ok {
		return nil
	}
	v, ok, err := rt.Get(format.SnapFillKey(id), nil)
	if err != nil || !ok {
		return err
	}
	it, err := format.DecodeSnapFillItem(v)
	if err != nil {
		return fmt.Errorf("snapshot %d: %w", id, err)
	}
	if n < it.Next || n > it.Limit {
		return nil
	}
	tr, err := tx.Tree(format.TreeSnapshot)
	if err != nil {
		return err
	}
	return tr.Put(format.SnapWhiteoutKey(id, n), nil)
}

// CreateSnapshot makes a snapshot of the subvolume whose root is src,
// called name in directory dir, read-only if readonly. It returns once
// the snapshot is durable; the snapshot is filled in the background
// (see the top of this file).
func (f *FS) CreateSnapshot(src, dir uint64, name string, readonly bool) (SubvolInfo, error) {
	if err := checkName(name); err != nil {
		return SubvolInfo{}, err
	}
	if !f.e.HasFeatures(0, format.IncompatSnapshots) {
		return SubvolInfo{}, ErrNoSnapshots
	}
	if err := f.writable(dir); err != nil {
		return SubvolInfo{}, err
	}
	if err := f.prepare(src); err != nil {
		return SubvolInfo{}, errno(err)
	}
	if err := f.prepareAncestors(dir); err != nil {
		return SubvolInfo{}, errno(err)
	}
	sid := format.SubvolOf(src)
	if sid == 0 {
		if src == RootIno {
			return SubvolInfo{}, ErrSnapTopLevel
		}
		return SubvolInfo{}, ErrNotSubvol
	}
	if src != format.SubvolRootIno(sid) {
		return SubvolInfo{}, ErrNotSubvol
	}
	var info SubvolInfo
	var gen format.Gen
	registered := uint64(0)
	err := f.e.Update(func(tx *engine.Tx) error {
		sit, ok, err := getSubvol(tx, sid)
		if err != nil {
			return err
		}
		if !ok || sit.Flags&format.SubvolDeleting != 0 {
			return ErrNoSuchSubvol
		}
		if _, filling := f.snap.fillOf(sid); filling {
			return ErrSnapFilling
		}
		if busy, err := holdsSubvols(tx, sid); err != nil {
			return err
		} else if busy {
			return ErrSnapNested
		}
		din, err := newEntryDir(tx, dir, name)
		if err != nil {
			return err
		}
		id, err := nextSubvolID(tx)
		if err != nil {
			return err
		}
		now := time.Now()
		limit := tx.PeekObjectID() - 1
		it := &format.SubvolItem{Flags: format.SubvolFilling, FillLimit: limit, CTransID: uint64(tx.Gen()),
			UUID: newUUID(), ParentUUID: sit.UUID, CTime: ts(now)}
		if readonly {
			it.Flags |= format.SubvolReadOnly
		}
		if err := probeUUIDs(tx, id, it); err != nil {
			return err
		}
		ntr, err := tx.Tree(format.TreeSnapshot)
		if err != nil {
			return err
		}
		if _, _, err := ntr.Get(format.SnapFillKey(id), nil); err != nil {
			return err
		}
		// What the source's files hold in memory belongs to the
		// snapshot: written out first, before any copy can be needed.
		for _, ino := range f.bufferedIn(sid) {
			if err := f.flushIno(tx, ino); err != nil {
				return err
			}
		}
		fl := snapFill{id: id, source: sid, limit: limit}
		// From here every change to the source copies first: the
		// directory taking the name too, if it is the source's.
		f.registerFill(fl)
		registered = id
		if err := f.copyIn(tx, fl, format.LocalIno(src), dir); err != nil {
			return err
		}
		root := format.SubvolRootIno(id)
		rin, err := mustInode(tx, root)
		if err != nil {
			return fmt.Errorf("snapshot root: %w", err)
		}
		if din, err = mustInode(tx, dir); err != nil {
			return err
		}
		if err := linkSubvol(tx, dir, din, name, id, it, rin.Mode, now); err != nil {
			return err
		}
		fi := format.SnapFillItem{Source: sid, Limit: fl.limit, Next: 0}
		if err := ntr.Put(format.SnapFillKey(id), fi.Encode()); err != nil {
			return err
		}
		tx.RequirePass(engine.PassSnapshotFill)
		info, gen = subvolInfo(id, it), tx.Gen()
		info.Filling = true
		return nil
	})
	if err != nil {
		if registered != 0 {
			f.unregisterFill(registered, 0)
		}
		return SubvolInfo{}, errno(f.dirDamage(err))
	}
	if readonly {
		f.setReadOnly(info.ID, true)
	}
	f.markFull(dir, gen)
	if err := f.e.Sync(); err != nil {
		return SubvolInfo{}, errno(err)
	}
	f.startFiller()
	info.Path, _ = f.dirPath(dir, name)
	return info, nil
}

// bufferedIn lists the files of subvolume id with buffered blocks.
func (f *FS) bufferedIn(id uint64) []uint64 {
	var out []uint64
	for ino := range f.delay.files {
		if format.SubvolOf(ino) == id {
			out = append(out, ino)
		}
	}
	slices.Sort(out)
	return out
}

// dropFill ends snapshot id's fill in tx (it is being deleted): the fill
// item and whiteouts go.
func (f *FS) dropFill(tx *engine.Tx, id uint64) error {
	ntr, err := tx.Tree(format.TreeSnapshot)
	if err != nil {
		return err
	}
	if err := dropWhiteouts(ntr, id, ^uint64(0)); err != nil {
		return err
	}
	_, err = ntr.Delete(format.SnapFillKey(id))
	return err
}

// dropWhiteouts deletes snapshot id's whiteouts below local number end.
func dropWhiteouts(ntr *eb.Tree, id, end uint64) error {
	var keys []format.Key
	if err := ntr.Ascend(format.SnapWhiteoutKey(id, 0), func(k format.Key, _ []byte) bool {
		if k.Obj != id || k.Type != format.TypeSnapWhiteout || k.Off >= end {
			return false
		}
		keys = append(keys, k)
		return true
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := ntr.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// fillBatch bounds the inodes one fill transaction looks at, and
// fillCommitEvery how many fill transactions go into one commit
// (variables for the tests).
var (
	fillBatch       = 64
	fillCommitEvery = 64
	// fillAuto off keeps the filler from starting (the tests run fills
	// by hand, to see the snapshot mid-fill).
	fillAuto = true
)

// startFiller runs the filler in the background unless it runs already
// (not on a read-only mount, nor with NoBackgroundFill).
func (f *FS) startFiller() {
	if f.opts.ReadOnly || f.opts.NoBackgroundFill || !fillAuto {
		return
	}
	f.filler.start(f.e.Logger())
}

// stopFiller stops a running filler and waits for it (Close).
func (f *FS) stopFiller() { f.filler.stop() }

// WaitFill waits until the background filler, if one runs, has nothing
// left to do.
func (f *FS) WaitFill() { f.filler.wait() }

// fillAll fills every snapshot under way to its end. It is the pass too
// (Options.SnapshotFill, run explicitly), with e the engine.
func (f *FS) fillAll(ctx context.Context, e *engine.Engine) error {
	for steps := 1; ; steps++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		done := false
		err := e.Update(func(tx *engine.Tx) error {
			var err error
			done, err = f.fillStep(tx)
			return err
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if steps%fillCommitEvery == 0 {
			if err := e.Sync(); err != nil {
				return err
			}
		}
	}
}

// fillStep copies the next batch of the first fill under way, or ends it;
// done reports that no fill is left.
func (f *FS) fillStep(tx *engine.Tx) (done bool, err error) {
	f.snap.mu.Lock()
	var fl snapFill
	ok := false
	for _, p := range f.snap.byID {
		if !ok || p.id < fl.id {
			fl, ok = *p, true
		}
	}
	f.snap.mu.Unlock()
	if !ok {
		tx.ClearPass(engine.PassSnapshotFill)
		return true, nil
	}
	itr, _ := tx.ReadTree(format.TreeInode)
	var ns []uint64
	end := format.SubvolIno(fl.source, fl.limit)
	if err := itr.Ascend(format.InodeKey(format.SubvolIno(fl.source, fl.next)), func(k format.Key, _ []byte) bool {
		if k.Obj > end || len(ns) == fillBatch {
			return false
		}
		if k.Type == format.TypeInodeItem {
			ns = append(ns, format.LocalIno(k.Obj))
		}
		return true
	}); err != nil {
		return false, err
	}
	for _, n := range ns {
		if err := f.copyIn(tx, fl, n, 0); err != nil {
			return false, fmt.Errorf("fill snapshot %d from subvolume %d, inode %d: %w", fl.id, fl.source, n, err)
		}
	}
	ntr, err := tx.Tree(format.TreeSnapshot)
	if err != nil {
		return false, err
	}
	if len(ns) < fillBatch {
		// Past the source's last inode the snapshot can need: it is
		// whole.
		it, ok, err := getSubvol(tx, fl.id)
		if err != nil {
			return false, err
		}
		if ok && it.Flags&format.SubvolFilling != 0 {
			it.Flags &^= format.SubvolFilling
			if err := putSubvol(tx, fl.id, it); err != nil {
				return false, err
			}
		}
		if err := f.dropFill(tx, fl.id); err != nil {
			return false, err
		}
		f.unregisterFill(fl.id, tx.Gen())
		if f.snap.fills.Load() == 0 {
			tx.ClearPass(engine.PassSnapshotFill)
		}
		return false, nil
	}
	next := ns[len(ns)-1] + 1
	if err := dropWhiteouts(ntr, fl.id, next); err != nil {
		return false, err
	}
	fi := format.SnapFillItem{Source: fl.source, Limit: fl.limit, Next: next}
	if err := ntr.Put(format.SnapFillKey(fl.id), fi.Encode()); err != nil {
		return false, err
	}
	f.setNext(fl.id, next)
	return false, nil
}
