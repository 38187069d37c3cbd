package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/hooks"
)

// Online rebuild of the inode tree (XFS reconstructs a lost inode core
// from what still names the inode the same way: inode_repair.c).
//
// The inode tree is primary metadata: an inode item's mode bits, owner and
// times are written nowhere else. But most of what matters to reach a
// file and read it back is written elsewhere too:
//
//   - its number and file type: the directory entries naming it (and,
//     for the root, the filesystem's layout);
//   - its link count: the number of entries naming it (a directory: two
//     plus its subdirectories), exact from one scan of the directory tree;
//   - a directory's parent and next readdir index: the entry naming it,
//     and the largest index among its own entries;
//   - a regular file's data: its file extent items (the extent tree, kept
//     consistent with the rmap by the check); its size is at least the
//     end of its last mapped block, its block count the blocks mapped.
//
// So a rebuild keeps every inode item (and symlink target) it can still
// read and reconstructs each inode something still names whose item the
// damage took: the inodes the directory entries, the file extents or the
// deleted list name. What nothing records gets a safe default — mode 0600
// for a file, 0700 for a directory, owner root, the times of the repair;
// a size rounded up to the last mapped block (never less than the data:
// the bytes past the true end read back as zeros, no byte of the file is
// ever lost) — and every reconstructed inode is listed with the fields
// that were guessed (RebuildResult.Reconstructed, the report's
// "reconstructed"): information that is truly gone is never lost
// silently. A symlink whose target was lost keeps no target (readlink
// fails with EIO); a device node's number is lost.
//
// On the kit (shadow.go, newbt.go, reap.go, pace.go), the rebuild:
//
//  1. subscribes, through one feed, to the Inode hook (every inode item
//     a writer puts or deletes) and to the Rmap events of the inode
//     tree's own blocks (writers keep changing its healthy part), and
//     pins a committed generation G;
//  2. scans G: the old tree's readable items into the shadow (a walk
//     that reports what it cannot read and goes on); the directory tree,
//     the file extent tree and the deleted list (inputs: a walk of the
//     directory or extent tree meeting any damage refuses the rebuild,
//     so does a damaged rmap, which lists the old tree's blocks — a
//     subtree whose pointer was lost is reaped too); and every inode they
//     name without a readable item is reconstructed into the shadow;
//  3. follows the feed: a put or delete of an inode item changes the
//     shadow (an inode a writer changed is no longer a reconstruction:
//     what the writer wrote is what it is). A writer cannot change an
//     inode whose item the damage hides (it reads the item first and
//     gets EIO), so the reconstructions stand;
//  4. plans the bulk load by bytes (a symlink target is up to 900 bytes,
//     an inode item 120), loads, catches up, swaps and reaps like every
//     rebuild. Symlinks created after G have their targets copied from
//     the live tree in the exclusive section (the Inode hook carries the
//     item, not the target; a target never changes once written).
//
// Crash safety is the kit's: the reservation and the old tree's blocks
// are covered by logged operations, so a crash leaves the old tree or
// the new one and leaks nothing.

// InodeRebuildResult describes an inode tree rebuild.
type InodeRebuildResult struct {
	RebuildResult
	// Reconstructed are the inodes whose items the damage took, made
	// again from what still names them, in inode order.
	Reconstructed []ReconstructedInode
}

// ReconstructedInode is an inode an inode rebuild reconstructed.
type ReconstructedInode struct {
	Ino uint64 `json:"ino"`
	// Path is where the directory tree names it ("" if nothing does: an
	// inode unlinked while open, or one only its data names).
	Path  string `json:"path,omitempty"`
	Mode  uint32 `json:"mode"`
	Nlink uint32 `json:"nlink"`
	Size  uint64 `json:"size"`
	// Guessed names the fields nothing on the image recorded, set to a
	// safe default: mode (the permission bits; the file type comes from
	// the directory entry, or is "regular" for an inode only its data
	// names), uid, gid, times, generation, flags, size (a regular file:
	// rounded up to its last mapped block), rdev (device nodes), target
	// (a symlink whose target was lost too).
	Guessed []string `json:"guessed"`
}

// RebuildInode rebuilds the inode tree of e online, keeping every item it
// can read and reconstructing the inodes the damage took.
func RebuildInode(ctx context.Context, e *engine.Engine, opts RebuildOptions) (_ *InodeRebuildResult, err error) {
	if e.RmapSick() {
		return nil, fmt.Errorf("cannot rebuild the inode tree while the rmap (which lists its blocks) is sick: %w", format.ErrCorrupt)
	}
	opts = opts.withDefaults()
	r := &inodeRebuild{e: e, recon: map[uint64]ReconstructedInode{}, heads: map[uint64][inodeHalf]byte{}, links: map[uint64]bool{}}
	r.follow()
	defer r.unfollow()

	res, err := rebuild(ctx, e, opts, rebuildSpec[inodeEvent]{
		Name: "inode", Tree: format.TreeInode, Structure: engine.StructInode, ItemSize: format.InodeItemSize, VarSize: true,
		Codec: inodeEvents, Gen: func(ev inodeEvent) format.Gen { return ev.Gen },
		Chain:  func(*engine.Engine) *hooks.Chain[inodeEvent] { return &r.feed },
		Apply:  r.apply,
		Expect: treeItems(format.TreeInode),
		Scan:   r.scan,
		Old:    func(o *oldTree) { r.old = o },
		Swap: swapSteps{
			Stopped: func(x *engine.Exclusive) {
				r.unfollow()
				r.newTargets(x)
			},
			Then: r.putTargets,
		},
	})
	if err != nil {
		return nil, err
	}
	res.Salvaged = r.salvaged
	return &InodeRebuildResult{RebuildResult: *res, Reconstructed: r.reconstructed()}, nil
}

// inodeRebuild is the inode tree's own state in a rebuild. apply runs
// serialized by the shadow; mu guards the reconstructions against the
// result's read.
type inodeRebuild struct {
	e       *engine.Engine
	feed    hooks.Chain[inodeEvent]
	handles []func()

	old     *oldTree // set after the scan, before any apply
	heads   map[uint64][inodeHalf]byte
	nextIno uint64 // the first local inode number (format.LocalIno) handed out after the scan
	targets []symlinkTarget
	tErr    error

	mu    sync.Mutex
	recon map[uint64]ReconstructedInode
	links map[uint64]bool // symlinks put since the subscription

	salvaged Salvaged // what the scan kept from below damaged nodes
}

// symlinkTarget is the target of a symlink created during the rebuild:
// its items (one, or a long target's chunks).
type symlinkTarget struct {
	ino  uint64
	keys []format.Key
	vals [][]byte
}

// targetOf is what the scan kept of one symlink's target: its items'
// lengths, and the target length they claim.
type targetOf struct {
	total uint64
	lens  map[format.Key]uint64
	bad   bool // items claiming different lengths
}

// dropIncompleteTargets deletes from shadow the items of every target the
// scan did not keep whole (a long target's chunk lost with a leaf): a
// symlink keeps its whole target or none, never a shorter one (readlink
// of one without fails with EIO). It marks in links the targets kept.
func dropIncompleteTargets(shadow *eb.Tree, chunks map[uint64]*targetOf, links map[uint64]bool) error {
	for ino, t := range chunks {
		got := uint64(0)
		for _, n := range t.lens {
			got += n
		}
		if !t.bad && got == t.total {
			links[ino] = true
			continue
		}
		for k := range t.lens {
			if _, err := shadow.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// symlinkItems returns the target items of ino in t, in key order: at
// most maxTargetItems of them (more is an error).
func symlinkItems(t *eb.Tree, ino uint64) ([]format.Key, [][]byte, error) {
	var ks []format.Key
	var vs [][]byte
	err := t.Ascend(format.SymlinkKey(ino), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeSymlink {
			return false
		}
		ks, vs = append(ks, k), append(vs, slices.Clone(v))
		return len(ks) <= maxTargetItems
	})
	if err == nil && len(ks) > maxTargetItems {
		err = fmt.Errorf("symlink %d has more than %d target items: %w", ino, maxTargetItems, format.ErrCorrupt)
	}
	return ks, vs, err
}

// maxTargetItems is the most items a symlink target takes.
const maxTargetItems = format.MaxSymlinkLen/format.MaxSymlinkItem + 1

// deleteTargetItems deletes ino's target items from t.
func deleteTargetItems(t *eb.Tree, ino uint64) error {
	ks, _, err := symlinkItems(t, ino)
	if err != nil {
		return err
	}
	for _, k := range ks {
		if _, err := t.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// linkCursor is what the inode checker keeps of the inode whose items
// it is walking (an inode item comes before its target items: type 40,
// then 45).
type linkCursor struct {
	ino        uint64
	link       bool   // the inode item decoded, and is a symlink's
	bad        bool   // a finding made: the rest of this target is not checked
	got, total uint64 // target bytes met so far, and the length claimed
	root       format.BlockNr
}

// checkSymlinkItem is the inode checker's rule for symlink targets
// (called for every item of the inode tree, in key order: repair/inode.go):
// each target item keeps the chunk layout (format.SymlinkTotal), a chunk
// of a long target only on an image with IncompatLongSymlinks, belongs to
// a symlink and follows the items before it; a target whose last chunks
// are missing is reported when the next inode item, or the end
// (checkSymlinkTargets), comes.
func checkSymlinkItem(st *checkState, root format.BlockNr, k format.Key, v []byte) {
	c := &st.link
	switch k.Type {
	case format.TypeInodeItem:
		finishLink(st)
		*c = linkCursor{ino: k.Obj, root: root}
		if in, err := format.DecodeInodeItem(v); err == nil && k.Off == 0 && k.Aux == 0 {
			c.link = in.Mode&syscall.S_IFMT == syscall.S_IFLNK
		}
		return
	case format.TypeSymlink:
	default:
		return
	}
	if k.Obj == c.ino && c.bad {
		return
	}
	total, err := format.SymlinkTotal(k, len(v))
	c.bad = k.Obj == c.ino // until the item passes
	switch {
	case err != nil:
		st.Reportf(engine.ErrItemBad, format.TreeInode, root, "symlink %d: %v", k.Obj, err)
		return
	case k.Aux != 0 && st.Snapshot().Super().Incompat&format.IncompatLongSymlinks == 0:
		st.Reportf(engine.ErrItemBad, format.TreeInode, root, "symlink %d: target chunk %s on an image without long symlinks (incompat %#x)", k.Obj, k, format.IncompatLongSymlinks)
		return
	case k.Obj != c.ino:
		// No inode item before it: an orphan target (or the item's
		// own damage, reported with it).
		st.Reportf(engine.ErrItemBad, format.TreeInode, root, "symlink target item %s of an inode without an item", k)
		return
	case !c.link:
		st.Reportf(engine.ErrItemBad, format.TreeInode, root, "inode %d is not a symlink (or its item is bad) but has a target item %s", k.Obj, k)
		return
	case k.Off != c.got || (c.got != 0 && c.total != total):
		st.Reportf(engine.ErrItemBad, format.TreeInode, root, "symlink %d: target item %s follows %d of %d bytes", k.Obj, k, c.got, c.total)
		return
	}
	c.bad = false
	c.got += uint64(len(v))
	c.total = total
	c.root = root
}

// finishLink reports the walked symlink if its target items stopped short
// of the length they claim.
func finishLink(st *checkState) {
	c := &st.link
	if c.link && !c.bad && c.got != c.total {
		st.Reportf(engine.ErrItemBad, format.TreeInode, c.root, "symlink %d: target items hold %d of its %d bytes", c.ino, c.got, c.total)
	}
	*c = linkCursor{}
}

// checkSymlinkTargets finishes the last symlink of the walk.
func checkSymlinkTargets(st *checkState) {
	if st.Broken(format.TreeInode) {
		return // items lost with the damage: the walk reported it
	}
	finishLink(st)
}

// Kinds of inodeEvent.
const (
	inodePutHead = iota + 1 // the first inodeHalf bytes of the new item of inode Ino
	inodePutTail            // the rest of it: the item is put
	inodeDelete             // inode Ino (its item and symlink target) freed
	inodeBlock              // the inode tree gained block Ino
	inodeUnblock            // the inode tree lost block Ino
)

// inodeHalf is how many bytes of an encoded item one event carries: an
// item (120 bytes) goes in two events, so that a record stays within the
// event queue's bound.
const inodeHalf = (format.InodeItemSize + 1) / 2

// inodeEvent is one event of the feed, a fixed 84-byte record.
type inodeEvent struct {
	Gen  format.Gen
	Kind uint8
	Ino  uint64 // a block number for inodeBlock and inodeUnblock
	Part [inodeHalf]byte
}

var inodeEvents = eventCodec[inodeEvent]{
	size: 24 + inodeHalf,
	put: func(b []byte, ev inodeEvent) {
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(ev.Gen))
		b[8] = ev.Kind
		le.PutUint64(b[16:], ev.Ino)
		copy(b[24:], ev.Part[:])
	},
	get: func(b []byte) inodeEvent {
		le := binary.LittleEndian
		ev := inodeEvent{Gen: format.Gen(le.Uint64(b[0:])), Kind: b[8], Ino: le.Uint64(b[16:])}
		copy(ev.Part[:], b[24:])
		return ev
	},
}

// follow registers the feed's sources, each called synchronously by the
// writer that makes the change, so the feed keeps their order.
func (r *inodeRebuild) follow() {
	h := r.e.Hooks()
	in := h.Inode.Register(func(ev engine.InodeEvent) {
		if ev.Op == engine.OpDelete {
			r.newLink(ev.Ino, false)
			r.feed.Call(inodeEvent{Gen: ev.Gen, Ino: ev.Ino, Kind: inodeDelete})
			return
		}
		if ev.Inode.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			r.newLink(ev.Ino, true)
		}
		var b [2 * inodeHalf]byte
		ev.Inode.Put(b[:])
		head := inodeEvent{Gen: ev.Gen, Ino: ev.Ino, Kind: inodePutHead}
		copy(head.Part[:], b[:inodeHalf])
		tail := inodeEvent{Gen: ev.Gen, Ino: ev.Ino, Kind: inodePutTail}
		copy(tail.Part[:], b[inodeHalf:])
		r.feed.Call(head)
		r.feed.Call(tail)
	})
	rm := h.Rmap.Register(func(ev engine.RmapEvent) {
		if ev.Owner.IsData() || ev.Owner.Tree != format.TreeInode {
			return
		}
		switch ev.Op {
		case engine.OpInsert:
			r.feed.Call(inodeEvent{Gen: ev.Gen, Kind: inodeBlock, Ino: uint64(ev.Start)})
		case engine.OpDelete:
			r.feed.Call(inodeEvent{Gen: ev.Gen, Kind: inodeUnblock, Ino: uint64(ev.Start)})
		}
	})
	r.handles = []func(){func() { h.Inode.Unregister(in) }, func() { h.Rmap.Unregister(rm) }}
}

// unfollow unregisters the feed's sources.
func (r *inodeRebuild) unfollow() {
	for _, f := range r.handles {
		f()
	}
	r.handles = nil
}

// apply applies a feed event to t (the shadow, the staged tree or the
// swapped-in one) and keeps the old tree's blocks current.
func (r *inodeRebuild) apply(t *eb.Tree, ev inodeEvent) error {
	var err error
	switch ev.Kind {
	case inodePutHead:
		// The writer lock orders the changes of one inode: its tail
		// comes next among the events of this inode.
		r.heads[ev.Ino] = ev.Part
	case inodePutTail:
		head, ok := r.heads[ev.Ino]
		if !ok {
			return fmt.Errorf("inode item %d: the second half of an update without the first (internal error)", ev.Ino)
		}
		delete(r.heads, ev.Ino)
		var b [2 * inodeHalf]byte
		copy(b[:], head[:])
		copy(b[inodeHalf:], ev.Part[:])
		r.written(ev.Ino)
		err = t.Put(format.InodeKey(ev.Ino), b[:format.InodeItemSize])
	case inodeDelete:
		r.written(ev.Ino)
		if err = deleteTargetItems(t, ev.Ino); err == nil {
			_, err = t.Delete(format.InodeKey(ev.Ino))
		}
	case inodeBlock:
		r.old.add(format.BlockNr(ev.Ino))
	case inodeUnblock:
		r.old.remove(format.BlockNr(ev.Ino))
	}
	if err != nil {
		return fmt.Errorf("inode item %d: %w", ev.Ino, err)
	}
	return nil
}

// written drops ino from the reconstructions: a writer wrote its item.
func (r *inodeRebuild) written(ino uint64) {
	r.mu.Lock()
	delete(r.recon, ino)
	r.mu.Unlock()
}

// reconstructed returns the reconstructions the new tree holds, in inode
// order, with the path the directory tree names each by.
func (r *inodeRebuild) reconstructed() []ReconstructedInode {
	r.mu.Lock()
	out := make([]ReconstructedInode, 0, len(r.recon))
	want := map[uint64]bool{}
	for ino, rc := range r.recon {
		out = append(out, rc)
		want[ino] = true
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b ReconstructedInode) int { return cmpU64(a.Ino, b.Ino) })
	if len(out) > 0 {
		paths := inodePaths(r.e, want)
		paths[fs.RootIno] = "/"
		for i := range out {
			out[i].Path = paths[out[i].Ino]
		}
	}
	return out
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// nameOf is what the directory entries say of an inode without a
// readable item.
type nameOf struct {
	typ    uint8  // file type (S_IFMT >> 12) of the first entry
	names  uint32 // entries naming it
	parent uint64 // the directory of the first entry
}

// fileOf is what the file extent items say of one.
type fileOf struct {
	end    uint64 // file blocks: one past the last mapped
	blocks uint64 // blocks mapped
}

// scan puts into shadow the inode tree generation s implies — every
// readable item kept, every inode named without one reconstructed — and
// returns the old tree's blocks.
func (r *inodeRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	sb := s.Super()
	r.nextIno = sb.NextObjectID
	now := format.Timespec{Sec: time.Now().Unix(), Nsec: uint32(time.Now().Nanosecond())}

	// The old tree: what can be read is kept (the walk's problems are the
	// check's to report).
	kept := map[uint64]bool{}
	links := map[uint64]bool{} // symlink targets kept
	chunks := map[uint64]*targetOf{}
	keep := func(k format.Key, v []byte) (bool, error) {
		switch k.Type {
		case format.TypeInodeItem:
			if _, err := format.DecodeInodeItem(v); err != nil || k.Off != 0 || k.Aux != 0 {
				return false, nil // reconstructed below, if anything names it
			}
			kept[k.Obj] = true
		case format.TypeSymlink:
			// Each item bounds itself (format.SymlinkTotal); whether a
			// long target's chunks are all there is known after the
			// scan (dropIncompleteTargets).
			total, err := format.SymlinkTotal(k, len(v))
			if err != nil || (k.Aux != 0 && sb.Incompat&format.IncompatLongSymlinks == 0) {
				return false, nil
			}
			t := chunks[k.Obj]
			if t == nil {
				t = &targetOf{total: total, lens: map[format.Key]uint64{}}
				chunks[k.Obj] = t
			}
			t.bad = t.bad || t.total != total
			t.lens[k] = uint64(len(v))
		default:
			return false, nil // no item of this build: dropped
		}
		progress.Add(1)
		return true, shadow.Put(k, v)
	}
	var perr error
	var n int
	walk := newWalkTrace()
	if it, ok := s.ScanTree(format.TreeInode); ok {
		err := it.Check(walk.visitor(eb.CheckVisitor{Item: func(k format.Key, v []byte) {
			th.tick()
			if perr != nil {
				return
			}
			if n++; n%4096 == 0 {
				if perr = ctx.Err(); perr != nil {
					return
				}
			}
			_, perr = keep(k, v)
		}}))
		if err == nil {
			err = perr
		}
		if err != nil {
			return nil, fmt.Errorf("read the old inode tree: %w", err)
		}
	}

	// Its blocks, as the rmap lists them (a subtree whose pointer was
	// lost is still the tree's).
	old, err := rmapTreeBlocks(ctx, s, format.TreeInode)
	if err != nil {
		return nil, err
	}

	// The intact leaves below a damaged node: their items are kept as
	// they are, not reconstructed (salvage.go).
	sv, err := salvage(ctx, s, format.TreeInode, old, walk, keep)
	if err != nil {
		return nil, fmt.Errorf("salvage the old inode tree: %w", err)
	}
	r.salvaged = sv
	if err := dropIncompleteTargets(shadow, chunks, links); err != nil {
		return nil, fmt.Errorf("drop incomplete symlink targets: %w", err)
	}

	// What names an inode whose item is gone. An inode number is
	// plausible when it was handed out before G: its number within its
	// subvolume (format.LocalIno; the top 24 bits are the subvolume's id)
	// came from the object id counter.
	plausible := func(ino uint64) bool {
		l := format.LocalIno(ino)
		return l >= fs.RootIno && l < sb.NextObjectID && !kept[ino]
	}
	// A snapshot being filled names inodes it reads from its source
	// until it copies them: a name alone is no evidence there (its own
	// items — extents, entries — are).
	filling := snapshotsFilling(s) // snapshot.go
	names := map[uint64]*nameOf{}
	subdirs := map[uint64]uint32{}   // of directories without an item
	nextIndex := map[uint64]uint64{} // of directories without an item
	if err := walkInput(ctx, s, format.TreeDir, th, func(k format.Key, v []byte) error {
		if k.Type != format.TypeDirEntry && k.Type != format.TypeDirIndex {
			return nil
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return fmt.Errorf("directory entry %s: %w", k, err)
		}
		if k.Type == format.TypeDirIndex {
			if plausible(k.Obj) && k.Off+1 > nextIndex[k.Obj] {
				nextIndex[k.Obj] = k.Off + 1
			}
			return nil
		}
		if plausible(k.Obj) && uint32(de.Type)<<12 == syscall.S_IFDIR {
			subdirs[k.Obj]++
		}
		if !plausible(de.Ino) {
			return nil
		}
		nm := names[de.Ino]
		if nm == nil {
			nm = &nameOf{typ: de.Type, parent: k.Obj}
			names[de.Ino] = nm
		}
		nm.names++
		return nil
	}); err != nil {
		return nil, err
	}
	files := map[uint64]*fileOf{}
	if err := walkInput(ctx, s, format.TreeExtent, th, func(k format.Key, v []byte) error {
		if k.Type != format.TypeFileExtent || !plausible(k.Obj) {
			return nil
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil {
			return fmt.Errorf("file extent %s: %w", k, err)
		}
		if fe.Count > format.MaxExtentBlocks || k.Off > 1<<52 {
			return fmt.Errorf("file extent %s maps %d blocks: %w", k, fe.Count, format.ErrCorrupt)
		}
		f := files[k.Obj]
		if f == nil {
			f = &fileOf{}
			files[k.Obj] = f
		}
		f.end = max(f.end, k.Off+fe.Count)
		f.blocks += fe.Count
		return nil
	}); err != nil {
		return nil, err
	}
	deleted := map[uint64]bool{}
	if dt, ok := s.ScanTree(format.TreeDeleted); ok {
		// Best effort: the deleted list only adds inodes to reconstruct.
		_ = dt.Check(eb.CheckVisitor{Item: func(k format.Key, _ []byte) {
			if plausible(k.Obj) {
				deleted[k.Obj] = true
			}
		}})
	}

	// Reconstruct: every inode something names, and the root if the
	// filesystem has any inode at all.
	var want []uint64
	for ino := range names {
		if filling[format.SubvolOf(ino)] && files[ino] == nil && nextIndex[ino] == 0 && !deleted[ino] && !links[ino] {
			continue // named only: the snapshot still reads it from its source
		}
		want = append(want, ino)
	}
	for ino := range files {
		if names[ino] == nil {
			want = append(want, ino)
		}
	}
	for ino := range deleted {
		if names[ino] == nil && files[ino] == nil {
			want = append(want, ino)
		}
	}
	if plausible(fs.RootIno) && (len(old) > 0 || len(kept) > 0) && names[fs.RootIno] == nil {
		want = append(want, fs.RootIno)
	}
	slices.Sort(want)
	want = slices.Compact(want)
	for _, ino := range want {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		in, rc := reconstructInode(ino, names[ino], files[ino], subdirs[ino], nextIndex[ino], links[ino], deleted[ino], now, uint64(sb.Gen))
		if err := shadow.Put(format.InodeKey(ino), in.Encode()); err != nil {
			return nil, err
		}
		progress.Add(1)
		r.mu.Lock()
		r.recon[ino] = rc
		r.mu.Unlock()
	}
	return old, nil
}

// reconstructInode makes the item of inode ino from what names it (nm,
// nil if no entry does), its file extents (fo, nil if none), the number
// of subdirectories and the next readdir index its entries imply (a
// directory), whether its symlink target survived and whether it is on
// the deleted list; what nothing records gets a safe default, listed as
// guessed.
func reconstructInode(ino uint64, nm *nameOf, fo *fileOf, subdirs uint32, nextIndex uint64, hasTarget, deleted bool, now format.Timespec, gen uint64) (format.InodeItem, ReconstructedInode) {
	guessed := []string{"mode", "uid", "gid", "times", "generation", "flags"}
	typ := uint32(syscall.S_IFREG)
	switch {
	case ino == fs.RootIno:
		typ = syscall.S_IFDIR
	case nm != nil && nm.typ != 0 && uint32(nm.typ)<<12&^syscall.S_IFMT == 0:
		typ = uint32(nm.typ) << 12
	}
	if fo != nil {
		// Only regular files have extents.
		typ = syscall.S_IFREG
	}
	in := format.InodeItem{Generation: gen, Atime: now, Mtime: now, Ctime: now, Btime: now}
	switch typ {
	case syscall.S_IFDIR:
		in.Mode = typ | 0o700
		in.NextIndex = max(2, nextIndex)
		in.Parent = fs.RootIno
		if nm != nil {
			in.Parent = nm.parent
		}
		if nm != nil || ino == fs.RootIno {
			in.Nlink = 2 + subdirs
		}
	case syscall.S_IFLNK:
		in.Mode = typ | 0o777
		if !hasTarget {
			guessed = append(guessed, "target")
		}
	default:
		in.Mode = typ | 0o600
	}
	if typ != syscall.S_IFDIR && nm != nil {
		in.Nlink = nm.names
	}
	if typ == syscall.S_IFCHR || typ == syscall.S_IFBLK {
		guessed = append(guessed, "rdev")
	}
	if typ == syscall.S_IFREG {
		guessed = append(guessed, "size")
		if fo != nil {
			in.Size = fo.end * format.BlockSize
			in.Blocks = fo.blocks
		}
	}
	if nm == nil && fo != nil && !deleted {
		// Data no directory names: a link count of one makes the
		// link-count repair adopt it into lost+found; on the deleted
		// list, none (the next mount frees it).
		in.Nlink = 1
	}
	return in, ReconstructedInode{Ino: ino, Mode: in.Mode, Nlink: in.Nlink, Size: in.Size, Guessed: guessed}
}

// walkInput walks every item of tree id in s, an input of the rebuild:
// any damage met refuses it.
func walkInput(ctx context.Context, s *engine.Snapshot, id format.TreeID, th *throttle, fn func(k format.Key, v []byte) error) error {
	t, ok := s.ScanTree(id)
	if !ok {
		return nil
	}
	var bad firstProblem
	var ferr error
	n := 0
	err := t.Check(eb.CheckVisitor{
		Item: func(k format.Key, v []byte) {
			if ferr != nil {
				return
			}
			th.tick()
			if n++; n%4096 == 0 {
				if ferr = ctx.Err(); ferr != nil {
					return
				}
			}
			ferr = fn(k, v)
		},
		Problem: bad.note,
	})
	if err == nil && bad.p != nil {
		err = fmt.Errorf("cannot rebuild the inode tree while the %s tree is damaged (%s): %w", id, bad.p, format.ErrCorrupt)
	}
	if err == nil {
		err = ferr
	}
	return err
}

// newLink notes a symlink put (made, or its item changed) or an inode
// freed, from the writer that does it.
func (r *inodeRebuild) newLink(ino uint64, put bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if put {
		r.links[ino] = true
	} else {
		delete(r.links, ino)
	}
}

// newTargets reads, in the exclusive section before the swap, the targets
// of the symlinks created since the scan from the live tree (the Inode
// hook carries items, not targets; a target never changes once made).
func (r *inodeRebuild) newTargets(x *engine.Exclusive) {
	t, _ := x.ReadTree(format.TreeInode)
	r.mu.Lock()
	defer r.mu.Unlock()
	for ino := range r.links {
		if format.LocalIno(ino) < r.nextIno {
			continue // the scan read it, or the damage took it
		}
		ks, vs, err := symlinkItems(t, ino)
		if err != nil {
			r.tErr = err
			return
		}
		if len(ks) > 0 {
			r.targets = append(r.targets, symlinkTarget{ino, ks, vs})
		}
	}
}

// putTargets puts those targets into the new tree, for the symlinks it
// holds.
func (r *inodeRebuild) putTargets(x *engine.Exclusive) error {
	if r.tErr != nil {
		return fmt.Errorf("read the targets of the symlinks made during the rebuild: %w", r.tErr)
	}
	t, _ := x.ReadTree(format.TreeInode)
	for _, st := range r.targets {
		_, ok, err := t.Get(format.InodeKey(st.ino), nil)
		for i := 0; err == nil && ok && i < len(st.keys); i++ {
			err = t.Put(st.keys[i], st.vals[i])
		}
		if err != nil {
			return fmt.Errorf("symlink target of inode %d: %w", st.ino, err)
		}
	}
	return nil
}

// inodeTreeDamaged says whether a walk of the committed inode tree meets
// any damage: a block it cannot read, an item count that is wrong, or an
// inode item that does not decode.
func inodeTreeDamaged(e *engine.Engine) bool {
	pin := e.Pin()
	defer pin.Release()
	t, ok := pin.ScanTree(format.TreeInode)
	if !ok {
		return false
	}
	var bad firstProblem
	badItem := false
	err := t.Check(eb.CheckVisitor{
		Item: func(k format.Key, v []byte) {
			if k.Type == format.TypeInodeItem {
				if _, err := format.DecodeInodeItem(v); err != nil {
					badItem = true
				}
			}
		},
		Problem: bad.note,
	})
	return err != nil || bad.p != nil || badItem
}

// repairInode is the inode row's repairer: damage to the inode tree's
// own blocks (or an item that does not decode) rebuilds it, keeping every
// item still readable and reconstructing the lost ones; then files' block
// counts are set from their extent items (repairBlocks) and link counts
// are fixed from the directory entries (repairNlinks), which also adopts
// into lost+found a reconstructed inode only its data names.
func repairInode(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	var rb *RebuildReport
	if inodeTreeDamaged(e) {
		res, err := RebuildInode(ctx, e, RebuildOptions{TempDir: opts.TempDir})
		if err != nil {
			return nil, err
		}
		if rb, err = rebuildReport("inode")(&res.RebuildResult, nil); err != nil {
			return nil, err
		}
		rb.Reconstructed = res.Reconstructed
		rb.Changes = append(rb.Changes, reconstructedChanges(res.Reconstructed)...)
	}
	bl, err := repairBlocks(ctx, e) // blocks_repair.go
	if err != nil {
		if rb != nil {
			return nil, fmt.Errorf("inode tree rebuilt (%d inodes reconstructed), then the block-count repair failed: %w", len(rb.Reconstructed), err)
		}
		return nil, err
	}
	nl, err := repairNlinks(ctx, e, opts)
	if err != nil {
		if rb != nil {
			return nil, fmt.Errorf("inode tree rebuilt (%d inodes reconstructed), then the link-count repair failed: %w", len(rb.Reconstructed), err)
		}
		return nil, err
	}
	nl = withBlocks(nl, bl)
	if rb == nil {
		return nl, nil
	}
	rb.Changes = append(rb.Changes, nl.Changes...)
	return rb, nil
}

// reconstructedChanges describes the reconstructed inodes for the report,
// one line each.
func reconstructedChanges(rs []ReconstructedInode) []string {
	out := make([]string, 0, len(rs))
	for _, rc := range rs {
		name := rc.Path
		if name == "" {
			name = "(named by no directory)"
		}
		out = append(out, fmt.Sprintf("inode %d %s: item lost with the damage, reconstructed (mode %#o, %d links, %d bytes); guessed: %s",
			rc.Ino, name, rc.Mode, rc.Nlink, rc.Size, strings.Join(rc.Guessed, ", ")))
	}
	return out
}
