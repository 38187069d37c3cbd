package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// The generic half of the self-check. The engine walks every tree of a
// pinned generation and verifies, per block, checksum, header (magic,
// filesystem, own number, owner, level, generation against the parent
// pointer) and layout; per tree, key order, parent/child key ranges and
// the item count; it knows which trees every image has and which space
// trees its degraded modes stopped maintaining. It hands every item to the
// checker of its tree and keeps the finding-id registry. The filesystem's
// rules (what an item must hold, how the trees must agree with each
// other) are the structures' checkers, in the repair package: one file
// per structure, beside its repairer (repair/<structure>.go). The check
// never stops at the first problem; each finding names the tree, the
// block and what is wrong.

// ErrorID is a stable finding id: it is recorded in the superblock's error
// counters and in reports, and never renumbered.
type ErrorID uint32

const (
	ErrSuperCopyBad    ErrorID = 1
	ErrSuperCopyStale  ErrorID = 2
	ErrSuperFreeCount  ErrorID = 3
	ErrSuperCopyField  ErrorID = 4 // a copy of the generation in use differs from it in a field
	ErrNodeBadMagic    ErrorID = 10
	ErrNodeBadChecksum ErrorID = 11
	ErrNodeWrongFS     ErrorID = 12
	ErrNodeMisdirected ErrorID = 13
	ErrNodeWrongOwner  ErrorID = 14
	ErrNodeStale       ErrorID = 15
	ErrNodeBadLevel    ErrorID = 16
	ErrNodeBadLayout   ErrorID = 17
	ErrNodeKeyOrder    ErrorID = 18
	ErrNodeUnreadable  ErrorID = 19
	ErrItemBad         ErrorID = 20
	ErrTreeItemCount   ErrorID = 21
	ErrTreeMissing     ErrorID = 22
	ErrAllocMissing    ErrorID = 30
	ErrAllocLeaked     ErrorID = 31
	ErrAllocRefcount   ErrorID = 32
	ErrAllocOverlap    ErrorID = 33
	ErrAllocKind       ErrorID = 34
	ErrRmapMissing     ErrorID = 40
	ErrRmapOrphan      ErrorID = 41
	ErrRmapLength      ErrorID = 42
	ErrRmapDataOwner   ErrorID = 43 // data rmap record without the file extent item it names
	ErrExtentNoRmap    ErrorID = 44 // file extent item without its rmap record
	ErrExtentNoAlloc   ErrorID = 45 // file extent item pointing at an unallocated extent
	ErrCsumMissing     ErrorID = 46 // data extent without its checksum item
	ErrCsumOrphan      ErrorID = 47 // checksum item for no data extent
	ErrRmapMapping     ErrorID = 48 // data rmap record mapping another part of the extent than its file extent item
	ErrExtentOverlap   ErrorID = 49 // two file extent items of one file map the same file block
	ErrExtentPastEOF   ErrorID = 56 // a file extent item mapping blocks past its file's size
	ErrNlink           ErrorID = 70 // inode link count differs from the entries naming it
	ErrDirentDangling  ErrorID = 71 // directory entry naming a missing inode
	ErrDirentType      ErrorID = 72 // directory entry's type differs from the inode's
	ErrDirentIndex     ErrorID = 73 // name entry without its index twin, or the reverse
	ErrDirNotDir       ErrorID = 74 // entries under an inode that is not a directory
	ErrDeletedList     ErrorID = 75 // an inode with no links missing from the deleted list, or an entry for one with links
	ErrFreeOverlap     ErrorID = 50
	ErrSpaceLost       ErrorID = 51
	ErrFreeNotMerged   ErrorID = 52
	ErrBlockCrossLink  ErrorID = 53
	ErrRmapSick        ErrorID = 54 // the engine found the rmap damaged in use
	ErrTreeUntrusted   ErrorID = 55 // a space tree the engine stopped maintaining after finding it damaged
	ErrDataChecksum    ErrorID = 60 // a data block failed its checksum
	ErrLogBlockBad     ErrorID = 80 // a block of the fsync log's chain is damaged
	ErrXattrOrphan     ErrorID = 81 // an extended attribute of a missing inode
	ErrXattrKey        ErrorID = 82 // an extended attribute under a key its name does not hash to, or a name out of namespace
	ErrXattrChunk      ErrorID = 83 // a large attribute value's chunk missing, out of range, of the wrong length, or without its head
	ErrSubvolRoot      ErrorID = 90 // a live subvolume whose root directory is missing, not a directory, or named in no directory
	ErrSubvolOrphan    ErrorID = 91 // inodes in a subvolume that has no item
	ErrUUIDMissing     ErrorID = 92 // a subvolume's UUID, or received UUID, missing from the uuid tree
	ErrUUIDOrphan      ErrorID = 93 // a uuid tree key naming no subvolume, or a UUID its subvolume does not have
	ErrSnapFill        ErrorID = 94 // a snapshot fill item naming no live snapshot of a live source
	ErrSnapWhiteout    ErrorID = 95 // a snapshot whiteout of a subvolume with no fill under way
	ErrInodeBlocks     ErrorID = 96 // a regular file's block count differs from the blocks its file extent items map
)

var errorNames = map[ErrorID]string{
	ErrSuperCopyBad: "super_copy_bad", ErrSuperCopyStale: "super_copy_stale", ErrSuperFreeCount: "super_free_count",
	ErrSuperCopyField: "super_copy_field", ErrLogBlockBad: "log_block_bad",
	ErrXattrOrphan: "xattr_orphan", ErrXattrKey: "xattr_bad_key", ErrXattrChunk: "xattr_chunk",
	ErrSubvolRoot: "subvol_root", ErrSubvolOrphan: "subvol_orphan", ErrUUIDMissing: "uuid_missing", ErrUUIDOrphan: "uuid_orphan",
	ErrSnapFill: "snapshot_fill", ErrSnapWhiteout: "snapshot_whiteout",
	ErrNodeBadMagic: "node_bad_magic", ErrNodeBadChecksum: "node_bad_checksum", ErrNodeWrongFS: "node_wrong_fs",
	ErrNodeMisdirected: "node_misdirected", ErrNodeWrongOwner: "node_wrong_owner", ErrNodeStale: "node_stale",
	ErrNodeBadLevel: "node_bad_level", ErrNodeBadLayout: "node_bad_layout", ErrNodeKeyOrder: "node_key_order",
	ErrNodeUnreadable: "node_unreadable", ErrItemBad: "item_bad", ErrTreeItemCount: "tree_item_count",
	ErrTreeMissing: "tree_missing", ErrAllocMissing: "alloc_missing", ErrAllocLeaked: "alloc_leaked",
	ErrAllocRefcount: "alloc_refcount", ErrAllocOverlap: "alloc_overlap", ErrAllocKind: "alloc_kind",
	ErrRmapMissing: "rmap_missing", ErrRmapOrphan: "rmap_orphan", ErrRmapLength: "rmap_length",
	ErrRmapDataOwner: "rmap_data_owner", ErrRmapMapping: "rmap_data_mapping", ErrExtentOverlap: "extent_overlap", ErrExtentPastEOF: "extent_past_eof", ErrExtentNoRmap: "extent_no_rmap", ErrExtentNoAlloc: "extent_no_alloc",
	ErrCsumMissing: "csum_missing", ErrCsumOrphan: "csum_orphan",
	ErrNlink: "nlink_mismatch", ErrInodeBlocks: "inode_blocks", ErrDirentDangling: "dirent_dangling", ErrDirentType: "dirent_type",
	ErrDirentIndex: "dirent_index", ErrDirNotDir: "dirent_parent_not_dir", ErrDeletedList: "deleted_list",
	ErrFreeOverlap: "free_overlap", ErrSpaceLost: "space_lost", ErrFreeNotMerged: "free_not_merged",
	ErrBlockCrossLink: "block_cross_linked", ErrRmapSick: "rmap_sick", ErrTreeUntrusted: "tree_untrusted", ErrDataChecksum: "data_checksum",
}

// Name returns the stable name of the id.
func (id ErrorID) Name() string {
	if n, ok := errorNames[id]; ok {
		return n
	}
	return fmt.Sprintf("error_%d", uint32(id))
}

// ErrorIDs returns every id this build defines, in order.
func ErrorIDs() []ErrorID {
	ids := make([]ErrorID, 0, len(errorNames))
	for id := range errorNames {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

var kindIDs = map[format.Kind]ErrorID{
	format.KindBadMagic: ErrNodeBadMagic, format.KindBadChecksum: ErrNodeBadChecksum,
	format.KindWrongFS: ErrNodeWrongFS, format.KindMisdirected: ErrNodeMisdirected,
	format.KindWrongOwner: ErrNodeWrongOwner, format.KindStale: ErrNodeStale,
	format.KindBadLevel: ErrNodeBadLevel, format.KindBadLayout: ErrNodeBadLayout,
	format.KindKeyOrder: ErrNodeKeyOrder, format.KindBadItem: ErrItemBad,
	format.KindShortRead: ErrNodeUnreadable, format.KindItemCount: ErrTreeItemCount,
}

// Finding is one problem the check found. Findings are data; errors are for
// operational failure only.
type Finding struct {
	ID     ErrorID        `json:"id"`
	Name   string         `json:"name"`
	Tree   format.TreeID  `json:"-"`
	Block  format.BlockNr `json:"block"`
	Detail string         `json:"detail"`
	// File locates a data finding: the file, the offset in it and the
	// disk block. Nil for metadata findings.
	File *FileRef `json:"file,omitempty"`
}

// FileRef locates a data block in a file.
type FileRef struct {
	Path      string         `json:"path"`
	Inode     uint64         `json:"inode"`
	Offset    uint64         `json:"offset"`
	DiskBlock format.BlockNr `json:"disk_block"`
}

func (f Finding) String() string {
	return fmt.Sprintf("tree %s block %d: %s: %s", f.Tree, f.Block, f.Name, f.Detail)
}

func finding(id ErrorID, tree format.TreeID, b format.BlockNr, f string, args ...any) Finding {
	return Finding{ID: id, Name: id.Name(), Tree: tree, Block: b, Detail: fmt.Sprintf(f, args...)}
}

// TreeCheck summarizes the check of one tree.
type TreeCheck struct {
	Tree     format.TreeID
	Root     format.BlockNr
	Level    int
	Gen      format.Gen
	Items    uint64 // items seen
	Blocks   uint64 // blocks read
	Findings int
}

// CheckResult summarizes a whole check.
type CheckResult struct {
	Gen      format.Gen
	Trees    []TreeCheck
	Findings int
	// Complete is false when damage hid part of a tree, so cross-reference
	// checks that need every block (leaks) were skipped.
	Complete bool
	// SuperCopies is the number of superblock copies checked.
	SuperCopies int
	// FSID and Label name the filesystem checked.
	FSID  format.FSID
	Label string
}

// ItemCount is the number of items the trees of s hold, as their root
// items record it.
func (s *Snapshot) ItemCount() uint64 {
	var n uint64
	for _, id := range s.Trees() {
		if t, ok := s.ScanTree(id); ok {
			n += t.Items
		}
	}
	return n
}

// MetaRef is a metadata block in use: by a tree, the superblock or the log.
type MetaRef struct {
	Block format.BlockNr
	Tree  format.TreeID
}

// ItemChecker receives the items of one tree, in key order: the root of
// the tree (to locate findings without a block of their own), the key and
// the value. It must not keep val.
type ItemChecker func(root format.BlockNr, k format.Key, val []byte)

// A Checking is one check of a snapshot in progress: it counts the
// findings reported to it, walks the trees, and collects what the
// structures' checkers compare afterwards.
type Checking struct {
	s        *Snapshot
	fn       func(Finding)
	res      *CheckResult
	perTree  map[format.TreeID]*TreeCheck
	reported map[format.TreeID]int
	broken   map[format.TreeID]bool
	refs     []MetaRef
	missing  bool
}

// StartCheck begins a check of s whose findings go to fn.
func (s *Snapshot) StartCheck(fn func(Finding)) *Checking {
	e := s.e
	c := &Checking{s: s, fn: fn,
		res: &CheckResult{Gen: s.Gen(), Complete: true, SuperCopies: len(format.SuperBlocks(e.totalBlocks)),
			FSID: s.v.super.FSID, Label: s.v.super.Label},
		perTree: map[format.TreeID]*TreeCheck{}, reported: map[format.TreeID]int{}, broken: map[format.TreeID]bool{}}
	for _, b := range format.SuperBlocks(e.totalBlocks) {
		c.refs = append(c.refs, MetaRef{b, format.OwnerSuper})
	}
	if lb := s.v.super.Log.Block; lb != 0 && uint64(lb) < e.totalBlocks {
		c.refs = append(c.refs, MetaRef{lb, format.TreeLog})
	}
	return c
}

// Report records a finding and passes it on.
func (c *Checking) Report(f Finding) {
	c.res.Findings++
	c.reported[f.Tree]++
	if tc := c.perTree[f.Tree]; tc != nil {
		tc.Findings++
	}
	c.fn(f)
}

// Reportf reports a finding made of its parts.
func (c *Checking) Reportf(id ErrorID, tree format.TreeID, b format.BlockNr, f string, args ...any) {
	c.Report(finding(id, tree, b, f, args...))
}

// WalkTrees walks every tree of the snapshot, handing each item to the
// checker of its tree (trees without one are walked for their blocks
// only) and calling tick, if set, after every item. Damage a walk meets
// is reported and makes its tree broken. A space tree the engine stopped
// maintaining (degraded.go) is stale by design: it is broken from the
// start (every difference from the others would be reported as damage of
// its own), and one finding says so, unless its walk finds damage itself.
// Then every tree each image has must exist.
func (c *Checking) WalkTrees(ctx context.Context, items map[format.TreeID]ItemChecker, tick func()) error {
	s := c.s
	var untrusted []format.TreeID
	for _, st := range []Structure{StructAlloc, StructRmap, StructFree} {
		if s.v.super.RecoveryPasses&(1<<degradedPass[st]) != 0 {
			id := format.TreeRoot + format.TreeID(st-StructRoot)
			c.broken[id] = true
			untrusted = append(untrusted, id)
		}
	}
	w := newTreeWalks(s)
	defer w.stop()
	for i, id := range w.ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		w.start(i)
		w.start(i + 1) // the next tree's walk runs ahead, on another core
		tr := w.trees[i]
		tc := &TreeCheck{Tree: id, Root: tr.Root.Block, Level: tr.Level, Gen: tr.Root.Gen}
		c.perTree[id] = tc
		item := items[id]
		err := w.consume(i, tc, func(ev *walkEv, val []byte, prob *eb.Problem) {
			switch ev.kind {
			case evBlock:
				c.refs = append(c.refs, MetaRef{format.BlockNr(ev.k.Obj), id})
			case evProblem:
				p := prob
				if p.Kind != format.KindItemCount {
					c.res.Complete = false
					c.broken[id] = true
				}
				c.Report(finding(kindID(p.Kind), id, p.Block, "%s", p.Detail))
			case evItem:
				tc.Items++
				if tick != nil {
					tick()
				}
				if item != nil {
					item(tr.Root.Block, ev.k, val)
				}
			}
		})
		if err != nil {
			return err
		}
		c.res.Trees = append(c.res.Trees, *tc)
	}
	for _, id := range untrusted {
		if c.reported[id] == 0 {
			c.Reportf(ErrTreeUntrusted, id, 0, "the %s tree was found damaged in use and is no longer maintained: it must be rebuilt", id)
		}
	}
	// The csum tree is still maintained while degraded (its healthy part
	// stays exact and is checked as usual), so its marker is no reason to
	// distrust the rest; but a marker with nothing found must still lead
	// to the rebuild that clears it.
	if s.v.super.RecoveryPasses&(1<<PassCsumUntrusted) != 0 && c.reported[format.TreeCsum] == 0 {
		c.Reportf(ErrTreeUntrusted, format.TreeCsum, 0, "the csum tree was found damaged in use: records the damage hid are served unverified until it is rebuilt")
	}
	for _, id := range format.KnownTrees[:4] { // root, alloc, rmap, free must exist
		if _, ok := s.v.roots[id]; !ok {
			c.res.Complete, c.missing = false, true
			c.Reportf(ErrTreeMissing, id, 0, "the root tree has no usable %s tree", id)
		}
	}
	return nil
}

// Snapshot is the snapshot being checked.
func (c *Checking) Snapshot() *Snapshot { return c.s }

// Refs are the metadata blocks in use: the superblock copies', the log
// head's and every block the walk reached, in walk order.
func (c *Checking) Refs() []MetaRef { return c.refs }

// Broken says whether the walk of tree id met damage (or the tree is one
// the engine stopped maintaining): comparisons reading it are skipped, so
// that damage is reported once, by the walk, not again as a thousand
// mismatches.
func (c *Checking) Broken(id format.TreeID) bool { return c.broken[id] }

// Complete says whether the walk reached every block of every tree:
// comparisons that need them all (leaks) run only then.
func (c *Checking) Complete() bool { return c.res.Complete }

// Missing says whether a tree every image has is missing: no comparison
// runs then.
func (c *Checking) Missing() bool { return c.missing }

// Result returns the check's summary; per-tree finding counts include
// the findings reported in a tree after its walk.
func (c *Checking) Result() *CheckResult {
	for i := range c.res.Trees {
		c.res.Trees[i].Findings = c.perTree[c.res.Trees[i].Tree].Findings
	}
	return c.res
}

// ReadSuperCopies reads every superblock copy, holding commits off so
// that none is rewritten while it is read, and hands each to fn: its
// block and the copy, or why it cannot be used (unreadable, not a
// superblock, not fitting the device).
func (s *Snapshot) ReadSuperCopies(fn func(at format.BlockNr, sb *format.Super, err error)) {
	e := s.e
	e.cmu.Lock()
	defer e.cmu.Unlock()
	buf := make([]byte, format.BlockSize)
	for _, at := range format.SuperBlocks(e.totalBlocks) {
		if _, err := e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
			fn(at, nil, fmt.Errorf("unreadable: %w", err))
			continue
		}
		sb, err := format.DecodeSuper(buf, at)
		if err == nil {
			err = sb.FitsDevice(uint64(e.dev.Size()) / format.BlockSize)
		}
		if err != nil {
			fn(at, nil, err)
			continue
		}
		fn(at, sb, nil)
	}
}

// ReadRaw reads block at from the device into buf (a block's size) as it
// is, verifying nothing.
func (s *Snapshot) ReadRaw(at format.BlockNr, buf []byte) error {
	if uint64(at) >= s.e.totalBlocks {
		return fmt.Errorf("block number %d is beyond the filesystem's %d blocks", at, s.e.totalBlocks)
	}
	_, err := s.e.dev.ReadAt(buf[:format.BlockSize], int64(at)*format.BlockSize)
	return err
}

// Offline says whether s is a generation of an unmounted image opened for
// a check (CheckImage): nothing else writes to its device.
func (s *Snapshot) Offline() bool { return s.e.tolerant }

// NewFinding makes a finding of id in tree at block b, its detail
// formatted from f and args.
func NewFinding(id ErrorID, tree format.TreeID, b format.BlockNr, f string, args ...any) Finding {
	return finding(id, tree, b, f, args...)
}

// checkStore is the store of the check's walk: a scan of the pinned
// generation (read through the cache without filling it, one recycled
// buffer per level, as ScanTree's) that reads a node's children ahead
// (eb.Prefetcher): their blocks sorted, neighbours (gaps of at most
// raGap blocks, runs of at most raMaxRun) are read with one pread each
// into a buffer of the children's level, and the walk's Read of a child
// verifies it there. How much that saves depends on the placement: on
// an image whose files were created one after the other (each tree's
// leaves interleaved with the others' and with data) it halves the
// reads; a tree written in one go reads a leaf level in a few reads.
//
// An offline check also has the kernel read the neighbourhood of every
// block the walk is about to read, ahead of it (adviser): tree blocks lie
// in clusters, the trees' leaves interleaved with each other's, so a few
// large device reads fill the page cache with what the walks of this
// tree and of the next ones will read, where each block or short run read
// on its own would be a device request of its own (on the virtual disk
// of the benchmarks, an exit to the host each: most of the check's
// system time there).
type checkStore struct {
	viewStore
	ra   *readahead
	quit chan struct{} // closed: reads fail, the walk winds down
}

const (
	raGap    = 8   // blocks read and thrown away to join two runs, at most
	raMaxRun = 64  // blocks per read (256 KiB)
	raMaxBuf = 256 // blocks buffered per level (1 MiB)
)

// readahead holds, per level, the runs read ahead for it, and the
// check's adviser (nil: none).
type readahead struct {
	lv      [format.MaxLevel + 1]raLevel
	scratch []format.BlockNr
	adv     *adviser
}

type raLevel struct {
	buf  []byte
	runs []raRun // by start
}

// raRun is blocks [start, start+n) at buf[off*BlockSize:].
type raRun struct {
	start format.BlockNr
	n     int
	off   int
}

func newCheckStore(e *Engine, adv *adviser) checkStore {
	return checkStore{viewStore: viewStore{e: e, ring: &scanRing{}}, ra: &readahead{adv: adv}}
}

func (s checkStore) Prefetch(tree format.TreeID, kids []eb.Ptr, level int) {
	if level < 0 || level > format.MaxLevel {
		return
	}
	e, ra := s.e, s.ra
	lv := &ra.lv[level]
	lv.runs = lv.runs[:0]
	bs := ra.scratch[:0]
	for _, k := range kids {
		if k.Block != 0 && uint64(k.Block) < e.totalBlocks {
			bs = append(bs, k.Block)
		}
	}
	slices.Sort(bs)
	ra.scratch = bs
	ra.adv.advise(bs)
	used := 0
	for i := 0; i < len(bs); {
		start, last, j := bs[i], bs[i], i+1
		for j < len(bs) && bs[j]-last <= raGap && bs[j]-start < raMaxRun {
			last = bs[j]
			j++
		}
		i = j
		n := int(last-start) + 1
		if n < 2 || used+n > raMaxBuf {
			continue // a lone block: the walk's own read
		}
		if need := (used + n) * format.BlockSize; len(lv.buf) < need {
			lv.buf = append(lv.buf, make([]byte, need-len(lv.buf))...)
		}
		b := lv.buf[used*format.BlockSize : (used+n)*format.BlockSize]
		if _, err := e.dev.ReadAt(b, int64(start)*format.BlockSize); err != nil {
			continue // read block by block, each error reported by its own
		}
		lv.runs = append(lv.runs, raRun{start: start, n: n, off: used})
		used += n
	}
}

func (s checkStore) Read(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	e := s.e
	select {
	case <-s.quit:
		return nil, errWalkStopped
	default:
	}
	if level >= 0 && level <= format.MaxLevel && len(s.ra.lv[level].runs) > 0 {
		lv := &s.ra.lv[level]
		i, _ := slices.BinarySearchFunc(lv.runs, p.Block+1, func(r raRun, b format.BlockNr) int { return cmp.Compare(r.start, b) })
		if i > 0 {
			if r := lv.runs[i-1]; p.Block < r.start+format.BlockNr(r.n) {
				if _, ok := e.cache.get(p.Block); !ok {
					off := (r.off + int(p.Block-r.start)) * format.BlockSize
					buf := lv.buf[off : off+format.BlockSize : off+format.BlockSize]
					x := format.Expect{FSID: e.fsid, Block: p.Block, Tree: tree, Gen: p.Gen, Level: level}
					if err := format.VerifyNode(buf, x); err != nil {
						if ce, ok := format.AsCorrupt(err); ok && ce.Kind == format.KindBadChecksum {
							e.countIOError(ioCsum)
						}
						return nil, err
					}
					return format.Node(buf), nil
				}
			}
		}
	}
	return s.viewStore.Read(tree, p, level)
}

// raChunk is the adviser's unit: blocks [k*raChunk, (k+1)*raChunk) are
// read ahead together, once per check.
const raChunk = 128 // 512 KiB

// adviser has the kernel read, ahead of the walks, the chunks of the
// device holding blocks they are about to read (disk.File.WillNeed:
// large reads into the page cache, which the walks' reads then copy
// from, where each block or run read on its own would wait for a device
// request of its own). Only an offline check (CheckImage) of an image
// file or block device has one: nothing else reads its device, and the
// page cache it fills is not the process's memory. It is advice only:
// what it reads is verified when the walk reads it, and a hint that
// fails only costs the reads it would have saved (so its error is not
// the check's).
type adviser struct {
	f    *disk.File
	mu   sync.Mutex
	done []uint64 // chunks advised, a bit each
}

// adviser returns the adviser of s's walks (one per snapshot, created at
// the first walk), or nil when they may not have the kernel read ahead:
// an offline check (CheckImage) always may, an engine opened with
// Options.ReadAhead too, and a snapshot its holder allowed
// (AllowReadAhead); only on an image file or block device.
func (s *Snapshot) adviser() *adviser {
	s.advOnce.Do(func() {
		e := s.e
		f, ok := e.dev.(*disk.File)
		if !ok || !(e.tolerant || e.opts.ReadAhead || s.readAhead.Load()) {
			return
		}
		chunks := (e.totalBlocks + raChunk - 1) / raChunk
		s.adv = &adviser{f: f, done: make([]uint64, (chunks+63)/64)}
	})
	return s.adv
}

// AllowReadAhead lets the walks of s have the kernel read ahead, as an
// offline check's do: a scrub that is not rate-limited asks for it (the
// kernel's read-ahead of a plain walk fills the page cache with about as
// much). Call it before the first walk.
func (s *Snapshot) AllowReadAhead() { s.readAhead.Store(true) }

// advise reads ahead the chunks of bs (sorted) not read ahead yet,
// adjacent chunks with one call.
func (a *adviser) advise(bs []format.BlockNr) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var from, to uint64 // chunks [from, to), to advise
	flush := func() {
		if to > from {
			_ = a.f.WillNeed(int64(from)*raChunk*format.BlockSize, int64(to-from)*raChunk*format.BlockSize)
		}
	}
	for _, b := range bs {
		c := uint64(b) / raChunk
		if c/64 >= uint64(len(a.done)) || a.done[c/64]&(1<<(c%64)) != 0 {
			continue
		}
		a.done[c/64] |= 1 << (c % 64)
		if c != to {
			flush()
			from = c
		}
		to = c + 1
	}
	flush()
}

// checkTree is tree id of the snapshot for the check's walk (checkStore).
func (s *Snapshot) checkTree(id format.TreeID, st checkStore) (*eb.Tree, bool) {
	ri, ok := s.v.roots[id]
	if !ok {
		return nil, false
	}
	return eb.Open(st, id, eb.Ptr{Block: ri.Root.Block, Gen: ri.Root.Gen}, int(ri.Root.Level), ri.Items), true
}

// The walk runs in two goroutines: the walk of a tree proper (device
// reads, checksums, node layout, key order: btree.Check over a
// checkStore) runs ahead in a goroutine of its own, the next tree's
// while the checking goroutine still consumes the current one's, and
// hands what it meets to the checking goroutine in batches, in walk
// order: the blocks, the problems, the items (copied). The checking
// goroutine does everything else as before, tree after tree: it records
// the blocks, reports the problems, calls the item checkers and tick.
// So the findings, their order and everything the checkers collect are
// exactly those of a walk in one goroutine; the two cores share the
// work, and at most two trees' walks and walkBatches batches each are in
// memory.

const (
	walkBatches   = 4        // batches in flight per tree
	walkBatchData = 64 << 10 // item bytes per batch
	walkBatchEvs  = 2048     // events per batch
)

type walkKind uint8

const (
	evBlock walkKind = iota
	evProblem
	evItem
)

// walkEv is one thing the walk met: a block referenced, a problem, or an
// item (its value at data[off:off+n] of the batch). It is 48 bytes: the
// walk writes one per item and the checking goroutine, on the other
// core, reads it, so its size is cache traffic between the two.
type walkEv struct {
	// evItem: the item's key; evBlock: the block number, in k.Obj (the
	// checking goroutine needs no more of the pointer)
	k format.Key
	// evItem: the value at data[off:off+n]; evProblem: probs[off]
	off, n int32
	kind   walkKind
}

type walkBatch struct {
	evs   []walkEv
	data  []byte
	probs []eb.Problem
	// last: the walk's end; blocks read and its operational error.
	last   bool
	blocks uint64
	err    error
}

// treeWalks are the walks of a check's trees.
type treeWalks struct {
	s       *Snapshot
	ids     []format.TreeID
	trees   []*eb.Tree
	out     []chan *walkBatch
	free    []chan *walkBatch
	stores  []checkStore // each walk's, while it runs
	spare   []*walkBatch // batches of finished walks, for the next
	spareSt []checkStore // stores of finished walks, for the next
	adv     *adviser     // shared by the walks
	quit    chan struct{}
	wg      sync.WaitGroup
	stopped bool
}

var errWalkStopped = errors.New("check walk stopped")

func newTreeWalks(s *Snapshot) *treeWalks {
	w := &treeWalks{s: s, quit: make(chan struct{}), adv: s.adviser()}
	for _, id := range s.Trees() {
		if _, ok := s.v.roots[id]; ok {
			w.ids = append(w.ids, id)
		}
	}
	n := len(w.ids)
	w.trees, w.out, w.free, w.stores = make([]*eb.Tree, n), make([]chan *walkBatch, n), make([]chan *walkBatch, n), make([]checkStore, n)
	return w
}

// start starts the walk of tree i, if there is one and it has not
// started.
func (w *treeWalks) start(i int) {
	if i >= len(w.ids) || w.trees[i] != nil {
		return
	}
	var st checkStore
	if k := len(w.spareSt); k > 0 {
		st, w.spareSt = w.spareSt[k-1], w.spareSt[:k-1]
	} else {
		st = newCheckStore(w.s.e, w.adv)
		st.quit = w.quit
	}
	w.stores[i] = st
	w.trees[i], _ = w.s.checkTree(w.ids[i], st)
	out, free := make(chan *walkBatch, walkBatches), make(chan *walkBatch, walkBatches)
	for range walkBatches {
		var b *walkBatch
		if k := len(w.spare); k > 0 {
			b, w.spare = w.spare[k-1], w.spare[:k-1]
		} else {
			b = &walkBatch{evs: make([]walkEv, 0, walkBatchEvs), data: make([]byte, 0, walkBatchData+format.BlockSize)}
		}
		free <- b
	}
	w.out[i], w.free[i] = out, free
	w.wg.Add(1)
	go w.walk(w.trees[i], out, free)
}

// walk is the goroutine walking tr: it fills batches from free and sends
// them to out, the last one marked.
func (w *treeWalks) walk(tr *eb.Tree, out, free chan *walkBatch) {
	defer w.wg.Done()
	var b *walkBatch
	next := func() bool {
		select {
		case b = <-free:
			b.evs, b.data, b.probs, b.last, b.blocks, b.err = b.evs[:0], b.data[:0], b.probs[:0], false, 0, nil
			return true
		case <-w.quit:
			return false
		}
	}
	send := func() bool {
		select {
		case out <- b:
			b = nil
			return true
		case <-w.quit:
			return false
		}
	}
	if !next() {
		return
	}
	ok := true
	var blocks uint64
	// flush hands a full batch on; after a stop, the walk only winds
	// down (its store's reads fail).
	flush := func() {
		if ok && (len(b.evs) >= walkBatchEvs || len(b.data) >= walkBatchData) {
			ok = send() && next()
		}
	}
	v := eb.CheckVisitor{
		Block: func(p eb.Ptr, _ int) {
			if ok {
				b.evs = append(b.evs, walkEv{kind: evBlock, k: format.Key{Obj: uint64(p.Block)}})
				flush()
			}
		},
		Node: func(format.Node, eb.Ptr) { blocks++ },
		Problem: func(p eb.Problem) {
			if ok {
				b.evs = append(b.evs, walkEv{kind: evProblem, off: int32(len(b.probs))})
				b.probs = append(b.probs, p)
				flush()
			}
		},
		Item: func(k format.Key, val []byte) {
			if ok {
				b.evs = append(b.evs, walkEv{kind: evItem, k: k, off: int32(len(b.data)), n: int32(len(val))})
				b.data = append(b.data, val...)
				flush()
			}
		},
	}
	err := tr.Check(v)
	if !ok {
		return
	}
	b.last, b.blocks, b.err = true, blocks, err
	send()
}

// consume hands the events of tree i's walk to fn, in walk order, and
// returns the walk's operational error; it starts the walk if needed.
func (w *treeWalks) consume(i int, tc *TreeCheck, fn func(ev *walkEv, val []byte, prob *eb.Problem)) error {
	w.start(i)
	out, free := w.out[i], w.free[i]
	for {
		b := <-out
		for j := range b.evs {
			ev := &b.evs[j]
			var val []byte
			var prob *eb.Problem
			switch ev.kind {
			case evItem:
				val = b.data[ev.off : ev.off+ev.n : ev.off+ev.n]
			case evProblem:
				prob = &b.probs[ev.off]
			}
			fn(ev, val, prob)
		}
		if b.last {
			// The walk is over (it touches neither its batches nor its
			// store after sending its last): both serve the next.
			tc.Blocks = b.blocks
			w.spare = append(w.spare, b)
			for len(free) > 0 {
				w.spare = append(w.spare, <-free)
			}
			w.spareSt = append(w.spareSt, w.stores[i])
			return b.err
		}
		free <- b
	}
}

// stop ends the walks still running and waits for them.
func (w *treeWalks) stop() {
	if !w.stopped {
		w.stopped = true
		close(w.quit)
		w.wg.Wait()
	}
}
