package repair

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/hooks"
	"github.com/scrubd/scrubd/xfile"
)

// Online rebuild of the directory tree.
//
// Every directory entry is kept twice: under (dir, name hash, seq), which
// lookups use, and under (dir, readdir index), which readdir uses; both
// items hold the whole entry (inode, type, index, name). So either twin
// rebuilds the other, and the rebuild, on the kit (shadow.go, newbt.go,
// reap.go, pace.go):
//
//  1. subscribes, through one feed, to the Dirent hook (every entry added
//     or removed, with the whole entry) and to the Rmap events of the dir
//     tree's own blocks (writers keep changing the old tree's healthy
//     part), and pins a committed generation G;
//  2. scans G: the old tree's items that can be read (a walk that reports
//     what it cannot read and goes on), and the items of the dir tree's
//     blocks the walk never reached — the rmap of G names every block of
//     the tree at G, and below a damaged interior node the leaves are
//     intact and current (copy on write never rewrites a block in use):
//     each is read and verified on its own (magic, checksum, filesystem,
//     block number, owner, a generation no later than G), so damage to an
//     interior node loses no entry at all. Blocks the walk reached and
//     found bad (a stale, misdirected or wrong-owner leaf included) give
//     nothing. Each entry is then the union of its twins, keyed (dir,
//     index): an entry with one twin left gets the other again (listed in
//     the report); a lone twin naming an inode that does not exist at G
//     is dropped (a removal whose second delete the damage blocked), a
//     second entry of a name already in the directory too. The inode and
//     deleted trees of G say which inodes no entry names any more: those
//     an entry named whose twins were both lost with a leaf;
//  3. follows the feed: an added entry goes in under a free seq of its
//     hash (the writer chose one in the damaged tree, which may lack a
//     twin the rebuild put back), displacing an entry of the same name
//     the damage had hidden from the writer (its inode becomes a
//     candidate orphan); a removed one is found by name and goes, both
//     twins. The events after G on top of G's entries are the entries at
//     the swap;
//  4. loads (planned by bytes: entries are 20 to 274 bytes), catches up,
//     swaps and reaps like every rebuild. In the exclusive section of the
//     swap, after the last events reached the new tree, every inode that
//     no entry names (and that is not unlinked-while-open, on the deleted
//     list) is linked into /lost+found (made then if missing) under its
//     inode number, and listed. A directory adopted so keeps its subtree;
//     its parent pointer is set to lost+found. Link counts are set for
//     the adopted inodes (fs.AdoptTx); counts the lost names leave wrong
//     elsewhere (a file with another name left, the parent of a lost
//     directory) are the inode row's to fix, which runs after this one.
//
// Inputs are verified as the other rebuilds verify theirs: the rmap must
// be trusted (its walk meeting damage refuses the rebuild), and the inode
// tree is the ops row's input (damage proven there makes the dir row wait
// or refuse: orphans could not be told from inodes lost with it). Crash
// safety is the kit's: the reservation and the old tree's blocks are
// covered by logged operations, so a crash leaves the old tree or the new
// one and leaks nothing; the adoptions commit with the swap.

// DirRebuildResult is what a directory rebuild did.
type DirRebuildResult struct {
	*RebuildResult
	// Rebuilt are the entries one of whose twins the rebuild wrote again.
	Rebuilt []RebuiltEntry
	// Dropped are lone twins the rebuild did not carry over.
	Dropped []RebuiltEntry
	// Adopted are the inodes no entry named, linked into /lost+found.
	Adopted []AdoptedInode
	// Unadopted says why inodes named by no entry were left so ("": none
	// were).
	Unadopted string
	// Recovered counts the items read from blocks the walk of the old
	// tree could not reach (below a damaged interior node).
	Recovered uint64
}

// RebuiltEntry is a directory entry a rebuild wrote a twin of again (or
// dropped).
type RebuiltEntry struct {
	Dir  uint64
	Name string
	Ino  uint64
	// From is the twin that survived: "index" or "name".
	From string
	Why  string // for a dropped entry
}

// AdoptedInode is an inode a rebuild linked into /lost+found.
type AdoptedInode struct {
	Ino  uint64
	Path string
	Dir  bool
	// Parent is, for a directory, the parent its inode recorded.
	Parent uint64
}

// RebuildDir rebuilds the directory tree of f online.
func RebuildDir(ctx context.Context, f *fs.FS, opts RebuildOptions) (_ *DirRebuildResult, err error) {
	e := f.Engine()
	if e.RmapSick() {
		return nil, fmt.Errorf("cannot rebuild the dir tree while the rmap it finds the tree's blocks by is untrusted: %w", format.ErrCorrupt)
	}
	opts = opts.withDefaults()
	r := &dirRebuild{e: e, tempDir: opts.TempDir, names: map[uint64]int64{}, displaced: map[uint64]bool{}}
	r.follow()
	defer r.unfollow()

	// The item size only sizes the reservation made alongside the scan;
	// the load is planned by bytes and reserves what it needs beyond.
	res, err := rebuild(ctx, e, opts, rebuildSpec[dirEvent]{
		Name: "dir", Tree: format.TreeDir, Structure: engine.StructDir, ItemSize: dirItemGuess, VarSize: true,
		Codec: dirEvents, Gen: func(ev dirEvent) format.Gen { return ev.Gen },
		Chain:  func(*engine.Engine) *hooks.Chain[dirEvent] { return &r.feed },
		Apply:  r.apply,
		Expect: treeItems(format.TreeDir),
		Scan:   r.scan,
		Old:    func(o *oldTree) { r.old = o },
		// Adoptions commit with the swap: the candidates still named by
		// nothing once the last events reached the new tree.
		Swap: swapSteps{Stopped: func(*engine.Exclusive) { r.unfollow() }, Then: r.adopt},
	})
	if err != nil {
		return nil, err
	}
	return &DirRebuildResult{RebuildResult: res, Rebuilt: r.rebuilt, Dropped: r.dropped, Adopted: r.adopted,
		Unadopted: r.unadopted, Recovered: r.recovered}, nil
}

// dirItemGuess is the value size the reservation made alongside the scan
// plans for (an entry with a 13-byte name).
const dirItemGuess = 32

// dirRebuild is the dir tree's own state in a rebuild. apply runs
// serialized by the shadow; the exclusive section reads what it left.
type dirRebuild struct {
	e       *engine.Engine
	tempDir string

	feed    hooks.Chain[dirEvent]
	handles []func()

	old *oldTree // set after the scan, before any apply

	// names counts, for each candidate orphan (an inode no entry named
	// at G, or one whose entry a writer's displaced), the entries that
	// name it since.
	names map[uint64]int64
	// part is the entry whose name chunks are being collected.
	part    dirEvent
	partBuf []byte

	rebuilt, dropped []RebuiltEntry
	adopted          []AdoptedInode
	unadopted        string // why the orphans were not adopted
	recovered        uint64
	parents          map[uint64]uint64 // candidate directories' recorded parents
	// displaced are inodes named at G whose entry a writer's displaced:
	// the swap counts the names they have left.
	displaced map[uint64]bool
}

// Kinds of dirEvent.
const (
	direntAdd    = iota + 1 // an entry added (name chunk Chunk)
	direntRemove            // an entry removed (name chunk Chunk)
	dirBlockAdd             // the dir tree gained block Dir
	dirBlockDrop            // the dir tree lost block Dir
)

// dirEventSize is the size of an encoded dirEvent, and dirNameInOne how
// many bytes of a name one carries.
const (
	dirEventSize = 128
	dirNameInOne = dirEventSize - 36
)

// dirEvent is one event of the feed, a fixed 128-byte record: an entry
// whose name is longer than dirNameInOne bytes comes as several, their
// Chunk counting up, published one after another by the same writer.
type dirEvent struct {
	Gen     format.Gen
	Kind    uint8
	Type    uint8
	NameLen uint8
	Chunk   uint8
	Dir     uint64 // the directory; the block, for block events
	Ino     uint64
	Index   uint64
	Name    [dirNameInOne]byte
}

var dirEvents = eventCodec[dirEvent]{
	size: dirEventSize,
	put: func(b []byte, ev dirEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		b[8], b[9], b[10], b[11] = ev.Kind, ev.Type, ev.NameLen, ev.Chunk
		le.PutUint64(b[12:], ev.Dir)
		le.PutUint64(b[20:], ev.Ino)
		le.PutUint64(b[28:], ev.Index)
		copy(b[36:], ev.Name[:])
	},
	get: func(b []byte) dirEvent {
		le := binary.LittleEndian
		ev := dirEvent{Gen: format.Gen(le.Uint64(b[0:])), Kind: b[8], Type: b[9], NameLen: b[10], Chunk: b[11],
			Dir: le.Uint64(b[12:]), Ino: le.Uint64(b[20:]), Index: le.Uint64(b[28:])}
		copy(ev.Name[:], b[36:])
		return ev
	},
}

// follow registers the feed's sources, synchronous with the writers that
// make the changes, so the feed keeps their order.
func (r *dirRebuild) follow() {
	h := r.e.Hooks()
	dh := h.Dirent.Register(func(ev engine.DirentEvent) {
		kind := uint8(direntAdd)
		if ev.Op == engine.OpDelete {
			kind = direntRemove
		}
		name := ev.Entry.Name
		if len(name) > format.MaxNameLen {
			name = name[:format.MaxNameLen] // cannot happen: checkName
		}
		for c := 0; c == 0 || c*dirNameInOne < len(name); c++ {
			fe := dirEvent{Gen: ev.Gen, Kind: kind, Type: ev.Entry.Type, NameLen: uint8(len(name)), Chunk: uint8(c),
				Dir: ev.Dir, Ino: ev.Entry.Ino, Index: ev.Entry.Index}
			copy(fe.Name[:], name[c*dirNameInOne:])
			r.feed.Call(fe)
		}
	})
	rm := h.Rmap.Register(func(ev engine.RmapEvent) {
		if ev.Owner.IsData() || ev.Owner.Tree != format.TreeDir {
			return
		}
		switch ev.Op {
		case engine.OpInsert:
			r.feed.Call(dirEvent{Gen: ev.Gen, Kind: dirBlockAdd, Dir: uint64(ev.Start)})
		case engine.OpDelete:
			r.feed.Call(dirEvent{Gen: ev.Gen, Kind: dirBlockDrop, Dir: uint64(ev.Start)})
		}
	})
	r.handles = []func(){func() { h.Dirent.Unregister(dh) }, func() { h.Rmap.Unregister(rm) }}
}

// unfollow unregisters the feed's sources (in the exclusive section,
// after the shadow stopped; or when the rebuild ends).
func (r *dirRebuild) unfollow() {
	for _, f := range r.handles {
		f()
	}
	r.handles = nil
}

// apply applies a feed event to t (the shadow, the staged tree or the
// swapped-in one). The shadow serializes the calls, all of generations
// after the scanned one, in the order they were published.
func (r *dirRebuild) apply(t *eb.Tree, ev dirEvent) error {
	switch ev.Kind {
	case dirBlockAdd:
		r.old.add(format.BlockNr(ev.Dir))
		return nil
	case dirBlockDrop:
		r.old.remove(format.BlockNr(ev.Dir))
		return nil
	case direntAdd, direntRemove:
	default:
		return fmt.Errorf("dir rebuild: event kind %d (internal error)", ev.Kind)
	}
	if ev.Chunk == 0 {
		r.part, r.partBuf = ev, r.partBuf[:0]
	} else if r.part.Kind != ev.Kind || r.part.Dir != ev.Dir || r.part.Ino != ev.Ino || int(ev.Chunk)*dirNameInOne != len(r.partBuf) {
		return fmt.Errorf("dir rebuild: name chunk %d of an entry out of order (internal error)", ev.Chunk)
	}
	n := min(int(ev.NameLen)-len(r.partBuf), dirNameInOne)
	r.partBuf = append(r.partBuf, ev.Name[:n]...)
	if len(r.partBuf) < int(ev.NameLen) {
		return nil // more chunks follow
	}
	de := format.DirEntry{Ino: ev.Ino, Type: ev.Type, Index: ev.Index, Name: string(r.partBuf)}
	var err error
	if ev.Kind == direntAdd {
		err = r.add(t, ev.Dir, de)
	} else {
		err = r.remove(t, ev.Dir, de)
	}
	if err != nil {
		return fmt.Errorf("entry %q of directory %d: %w", de.Name, ev.Dir, err)
	}
	return nil
}

// displace notes that an entry naming ino went to make room for a
// writer's: the inode may have no name left (its other names, if any,
// are counted at the swap).
func (r *dirRebuild) displace(ino uint64) {
	if _, ok := r.names[ino]; ok {
		r.names[ino]--
		return
	}
	r.displaced[ino] = true
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// named counts a name of ino gained (+1) or lost (-1) for a candidate
// orphan.
func (r *dirRebuild) named(ino uint64, d int64) {
	if _, ok := r.names[ino]; ok {
		r.names[ino] += d
	}
}

// add puts entry de of dir into t, both twins, under a free seq of its
// hash; an entry of the same name it finds there (one the damage hid from
// the writer) goes, its inode a candidate orphan.
func (r *dirRebuild) add(t *eb.Tree, dir uint64, de format.DirEntry) error {
	h := fs.NameHash(de.Name)
	if old, k, ok, err := entryByName(t, dir, h, de.Name); err != nil {
		return err
	} else if ok {
		if err := dropEntry(t, dir, k, old); err != nil {
			return err
		}
		r.displace(old.Ino)
	}
	if v, ok, err := t.Get(format.DirIndexKey(dir, de.Index), nil); err != nil {
		return err
	} else if ok {
		// An index the damage hid (the directory's next index is in its
		// inode, beyond every index it handed out: not expected).
		if old, err := format.DecodeDirEntry(v); err == nil {
			if _, k, ok, err := entryByName(t, dir, fs.NameHash(old.Name), old.Name); err == nil && ok {
				if _, err := t.Delete(k); err != nil {
					return err
				}
			}
			r.displace(old.Ino)
		}
	}
	seq, err := freeSeq(t, dir, h)
	if err != nil {
		return err
	}
	v := de.Encode()
	if err := t.Put(format.DirEntryKey(dir, h, seq), v); err != nil {
		return err
	}
	if err := t.Put(format.DirIndexKey(dir, de.Index), v); err != nil {
		return err
	}
	r.named(de.Ino, 1)
	return nil
}

// remove deletes entry de of dir from t, both twins.
func (r *dirRebuild) remove(t *eb.Tree, dir uint64, de format.DirEntry) error {
	old, k, ok, err := entryByName(t, dir, fs.NameHash(de.Name), de.Name)
	if err != nil {
		return err
	}
	if ok && old.Ino == de.Ino {
		if err := dropEntry(t, dir, k, old); err != nil {
			return err
		}
	} else if v, ok, err := t.Get(format.DirIndexKey(dir, de.Index), nil); err != nil {
		return err
	} else if ok {
		if x, err := format.DecodeDirEntry(v); err == nil && x.Name == de.Name && x.Ino == de.Ino {
			if _, err := t.Delete(format.DirIndexKey(dir, de.Index)); err != nil {
				return err
			}
		}
	}
	r.named(de.Ino, -1)
	return nil
}

// entryByName finds the name twin of entry name (hash h) of dir in t.
func entryByName(t *eb.Tree, dir, h uint64, name string) (format.DirEntry, format.Key, bool, error) {
	var de format.DirEntry
	var key format.Key
	found := false
	err := t.Ascend(format.DirEntryKey(dir, h, 0), func(k format.Key, v []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirEntry || k.Off != h {
			return false
		}
		if d, err := format.DecodeDirEntry(v); err == nil && d.Name == name {
			de, key, found = d, k, true
			return false
		}
		return true
	})
	return de, key, found, err
}

// dropEntry deletes the entry de of dir whose name twin is at k, and its
// index twin if it is de's.
func dropEntry(t *eb.Tree, dir uint64, k format.Key, de format.DirEntry) error {
	if _, err := t.Delete(k); err != nil {
		return err
	}
	ik := format.DirIndexKey(dir, de.Index)
	v, ok, err := t.Get(ik, nil)
	if err != nil || !ok {
		return err
	}
	if x, err := format.DecodeDirEntry(v); err == nil && x.Name == de.Name {
		_, err = t.Delete(ik)
		return err
	}
	return nil
}

// freeSeq returns the seq after the last one used by hash h in dir.
func freeSeq(t *eb.Tree, dir, h uint64) (uint64, error) {
	seq := uint64(0)
	err := t.Ascend(format.DirEntryKey(dir, h, 0), func(k format.Key, _ []byte) bool {
		if k.Obj != dir || k.Type != format.TypeDirEntry || k.Off != h {
			return false
		}
		seq = k.Aux + 1
		return true
	})
	return seq, err
}

// scan puts into shadow the entries generation s implies — every twin
// that can be read, the other rebuilt from it — and returns the old dir
// tree's blocks. It notes the candidate orphans.
func (r *dirRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	store, err := xfile.NewBTreeStore(xfile.Options{Dir: r.tempDir, Name: "dir old items"})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	kept, err := store.CreateTree(format.TreeDir)
	if err != nil {
		return nil, err
	}
	keep := func(k format.Key, v []byte) error {
		if k.Type != format.TypeDirEntry && k.Type != format.TypeDirIndex {
			return nil
		}
		if _, err := format.DecodeDirEntry(v); err != nil {
			return nil // a bad item: its twin tells
		}
		return kept.Put(k, v)
	}
	// The old tree as its walk reaches it.
	reached := map[format.BlockNr]bool{}
	if dt, ok := s.ScanTree(format.TreeDir); ok {
		var perr error
		err := dt.Check(eb.CheckVisitor{
			Block: func(p eb.Ptr, _ int) { reached[p.Block] = true },
			Item: func(k format.Key, v []byte) {
				th.tick()
				progress.Add(1) // the reservation keeps pace with the old tree's items
				if perr == nil {
					perr = keep(k, v)
				}
			},
		})
		if err == nil {
			err = perr
		}
		if err != nil {
			return nil, fmt.Errorf("read the old dir tree: %w", err)
		}
	}
	// Its blocks by the rmap; those the walk did not reach, read on their
	// own.
	old, err := rmapTreeBlocks(ctx, s, format.TreeDir)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, format.BlockSize)
	sb := s.Super()
	for _, b := range old {
		if reached[b] {
			continue
		}
		if err := s.ReadRaw(b, buf); err != nil {
			continue // unreadable: what it held is lost
		}
		if format.VerifyNode(buf, format.Expect{FSID: sb.FSID, Block: b, Tree: format.TreeDir, Level: -1}) != nil {
			continue
		}
		n := format.Node(buf)
		if n.Gen() > s.Gen() || !n.IsLeaf() {
			continue
		}
		for i := 0; i < n.NrItems(); i++ {
			if err := keep(n.Key(i), n.Value(i)); err != nil {
				return nil, err
			}
			r.recovered++
		}
	}

	// What the inode and deleted trees of s say.
	modes := map[uint64]uint32{}
	r.parents = map[uint64]uint64{}
	if err := scanTree(s, format.TreeInode, func(k format.Key, v []byte) error {
		if k.Type != format.TypeInodeItem {
			return nil
		}
		in, err := format.DecodeInodeItem(v)
		if err != nil {
			return err
		}
		modes[k.Obj] = in.Mode
		if in.Mode&modeType == modeDir {
			r.parents[k.Obj] = in.Parent
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the inode tree: %w", err)
	}
	deleted := map[uint64]bool{}
	if err := scanTree(s, format.TreeDeleted, func(k format.Key, _ []byte) error {
		deleted[k.Obj] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the deleted tree: %w", err)
	}

	// One directory at a time: the union of its twins, by index.
	named := map[uint64]bool{}
	type twins struct {
		de         format.DirEntry
		key        format.Key // the name twin's, if it survived
		name, indx bool
	}
	var cur uint64
	var ents map[uint64]*twins
	var nEnt int
	flush := func() error {
		idx := make([]uint64, 0, len(ents))
		for i := range ents {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		// Entries whose name twin survived first, under their keys;
		// then the rebuilt ones, under a seq none of those uses.
		slices.SortStableFunc(idx, func(a, b uint64) int {
			return boolCmp(!ents[a].name, !ents[b].name)
		})
		seen := map[string]bool{}
		for _, i := range idx {
			tw := ents[i]
			de := tw.de
			if nEnt++; nEnt%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			th.tick()
			from := ""
			switch {
			case !tw.name:
				from = "index"
			case !tw.indx:
				from = "name"
			}
			if mode, ok := modes[de.Ino]; from != "" && (!ok || (mode&modeType)>>12 != uint32(de.Type)) {
				r.dropped = append(r.dropped, RebuiltEntry{Dir: cur, Name: de.Name, Ino: de.Ino, From: from,
					Why: "it names no inode of its type: a removal the damage interrupted"})
				continue
			}
			if seen[de.Name] {
				r.dropped = append(r.dropped, RebuiltEntry{Dir: cur, Name: de.Name, Ino: de.Ino, From: from,
					Why: "the directory holds another entry of that name"})
				continue
			}
			seen[de.Name] = true
			v := de.Encode()
			k := tw.key
			if !tw.name {
				h := fs.NameHash(de.Name)
				seq, err := freeSeq(shadow, cur, h)
				if err != nil {
					return err
				}
				k = format.DirEntryKey(cur, h, seq)
			}
			if err := shadow.Put(k, v); err != nil {
				return err
			}
			if err := shadow.Put(format.DirIndexKey(cur, de.Index), v); err != nil {
				return err
			}
			named[de.Ino] = true
			if from != "" {
				r.rebuilt = append(r.rebuilt, RebuiltEntry{Dir: cur, Name: de.Name, Ino: de.Ino, From: from})
			}
		}
		return nil
	}
	var ferr error
	err = kept.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Obj != cur || ents == nil {
			if ents != nil {
				if ferr = flush(); ferr != nil {
					return false
				}
			}
			cur, ents = k.Obj, map[uint64]*twins{}
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return true
		}
		if k.Type == format.TypeDirIndex && k.Off != de.Index {
			return true // an index twin under another index: not an entry
		}
		tw := ents[de.Index]
		if tw == nil {
			tw = &twins{de: de}
			ents[de.Index] = tw
		} else if tw.de.Ino != de.Ino || tw.de.Name != de.Name {
			return true // twins that disagree: the first kept
		}
		if k.Type == format.TypeDirEntry {
			tw.name, tw.key = true, k
		} else {
			tw.indx = true
		}
		return true
	})
	if err == nil {
		err = ferr
	}
	if err == nil && ents != nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	settled := settledInodes(s) // subvol.go
	for ino := range modes {
		if ino != fs.RootIno && !named[ino] && !deleted[ino] && settled(ino) {
			r.names[ino] = 0
		}
	}
	return old, nil
}

// adopt links into /lost+found every candidate orphan no entry names at
// the swap (x: the new tree is live, every event applied).
func (r *dirRebuild) adopt(x *engine.Exclusive) error {
	var orphans []uint64
	for ino, n := range r.names {
		if n <= 0 {
			orphans = append(orphans, ino)
		}
	}
	if len(r.displaced) > 0 {
		// Rare (a name the damage hid, made again by a writer): one pass
		// over the new tree counts what names the displaced have left.
		left := map[uint64]bool{}
		t, _ := x.ReadTree(format.TreeDir)
		if err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type == format.TypeDirIndex {
				if de, err := format.DecodeDirEntry(v); err == nil && r.displaced[de.Ino] {
					left[de.Ino] = true
				}
			}
			return true
		}); err != nil {
			return err
		}
		for ino := range r.displaced {
			if !left[ino] {
				orphans = append(orphans, ino)
			}
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	slices.Sort(orphans)
	var lf uint64
	for _, ino := range orphans {
		in, err := inodeIn(x.Tx, ino)
		if err != nil {
			return err
		}
		if in == nil {
			continue // freed since
		}
		if deleted, err := onDeletedList(x.Tx, ino); err != nil {
			return err
		} else if deleted {
			continue
		}
		if lf == 0 {
			if lf, err = fs.LostFoundTx(x.Tx); err != nil {
				// /lost+found is not a directory: the orphans stay as
				// they are (a failure here would abort the swap).
				r.unadopted = fmt.Sprintf("%d inodes named by no directory entry were not linked into /lost+found: %v", len(orphans), err)
				return nil
			}
		}
		if ino == lf {
			continue
		}
		path, err := fs.AdoptTx(x.Tx, ino, lf)
		if err != nil {
			return fmt.Errorf("adopt inode %d into lost+found: %w", ino, err)
		}
		isDir := in.Mode&modeType == modeDir
		r.adopted = append(r.adopted, AdoptedInode{Ino: ino, Path: path, Dir: isDir, Parent: r.parents[ino]})
	}
	return nil
}

// repairDir is the dir row's repairer.
func repairDir(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	f := opts.fsys
	if f == nil {
		return nil, errors.New("the directory rebuild needs the filesystem")
	}
	dr, err := RebuildDir(ctx, f, RebuildOptions{TempDir: opts.TempDir})
	if err != nil {
		return nil, err
	}
	rb, err := rebuildReport("dir")(dr.RebuildResult, nil)
	if err != nil {
		return nil, err
	}
	rb.Changes = dirChanges(e, dr)
	return rb, nil
}

// dirChanges describes a directory rebuild for the report: every entry
// rebuilt or dropped (its directory by path where the new tree reaches
// it), every inode adopted into lost+found.
func dirChanges(e *engine.Engine, dr *DirRebuildResult) []string {
	want := map[uint64]bool{}
	for _, l := range [][]RebuiltEntry{dr.Rebuilt, dr.Dropped} {
		for _, re := range l {
			want[re.Dir] = true
		}
	}
	for _, a := range dr.Adopted {
		if a.Parent != 0 {
			want[a.Parent] = true
		}
	}
	paths := inodePaths(e, want)
	dirName := func(d uint64) string {
		if d == fs.RootIno {
			return "/"
		}
		if p, ok := paths[d]; ok {
			return p
		}
		return fmt.Sprintf("directory inode %d", d)
	}
	twin := map[string]string{"index": "its readdir index", "name": "its name-hash entry"}
	var out []string
	for _, re := range dr.Rebuilt {
		out = append(out, fmt.Sprintf("%s: entry %q (inode %d) rebuilt from %s", dirName(re.Dir), re.Name, re.Ino, twin[re.From]))
	}
	for _, re := range dr.Dropped {
		out = append(out, fmt.Sprintf("%s: entry %q (inode %d) found only in %s, dropped: %s", dirName(re.Dir), re.Name, re.Ino, twin[re.From], re.Why))
	}
	for _, a := range dr.Adopted {
		if a.Dir && a.Parent != 0 {
			out = append(out, fmt.Sprintf("directory inode %d (its parent was %s) was named by no directory entry: linked as %s", a.Ino, dirName(a.Parent), a.Path))
			continue
		}
		out = append(out, fmt.Sprintf("inode %d was named by no directory entry: linked as %s", a.Ino, a.Path))
	}
	if dr.Unadopted != "" {
		out = append(out, dr.Unadopted)
	}
	if dr.Recovered > 0 {
		out = append(out, fmt.Sprintf("%d directory items read from blocks below a damaged node", dr.Recovered))
	}
	return out
}
