package engine

import (
	"context"
	"fmt"
	"slices"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// The self-check walks every tree of a pinned generation and verifies, per
// block, checksum, header (magic, filesystem, own number, owner, level,
// generation against the parent pointer) and layout; per tree, key order
// and parent/child key ranges and the item count; and across trees, that
// the free-space, alloc and rmap trees describe exactly the blocks the trees
// use: every block is either free or allocated, never both; every
// allocated extent has one rmap record per reference; every tree block has
// an alloc record and an rmap record naming its tree; and no alloc record
// is left that nothing uses. It never stops at the first problem; each
// finding names the tree, the block and what is wrong.

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
	ErrFreeOverlap     ErrorID = 50
	ErrSpaceLost       ErrorID = 51
	ErrFreeNotMerged   ErrorID = 52
	ErrBlockCrossLink  ErrorID = 53
	ErrRmapSick        ErrorID = 54 // the engine found the rmap damaged in use
	ErrTreeUntrusted   ErrorID = 55 // a space tree the engine stopped maintaining after finding it damaged
	ErrDataChecksum    ErrorID = 60 // a data block failed its checksum
	ErrLogBlockBad     ErrorID = 80 // a block of the fsync log's chain is damaged
)

var errorNames = map[ErrorID]string{
	ErrSuperCopyBad: "super_copy_bad", ErrSuperCopyStale: "super_copy_stale", ErrSuperFreeCount: "super_free_count",
	ErrSuperCopyField: "super_copy_field", ErrLogBlockBad: "log_block_bad",
	ErrNodeBadMagic: "node_bad_magic", ErrNodeBadChecksum: "node_bad_checksum", ErrNodeWrongFS: "node_wrong_fs",
	ErrNodeMisdirected: "node_misdirected", ErrNodeWrongOwner: "node_wrong_owner", ErrNodeStale: "node_stale",
	ErrNodeBadLevel: "node_bad_level", ErrNodeBadLayout: "node_bad_layout", ErrNodeKeyOrder: "node_key_order",
	ErrNodeUnreadable: "node_unreadable", ErrItemBad: "item_bad", ErrTreeItemCount: "tree_item_count",
	ErrTreeMissing: "tree_missing", ErrAllocMissing: "alloc_missing", ErrAllocLeaked: "alloc_leaked",
	ErrAllocRefcount: "alloc_refcount", ErrAllocOverlap: "alloc_overlap", ErrAllocKind: "alloc_kind",
	ErrRmapMissing: "rmap_missing", ErrRmapOrphan: "rmap_orphan", ErrRmapLength: "rmap_length",
	ErrRmapDataOwner: "rmap_data_owner", ErrRmapMapping: "rmap_data_mapping", ErrExtentOverlap: "extent_overlap", ErrExtentPastEOF: "extent_past_eof", ErrExtentNoRmap: "extent_no_rmap", ErrExtentNoAlloc: "extent_no_alloc",
	ErrCsumMissing: "csum_missing", ErrCsumOrphan: "csum_orphan",
	ErrNlink: "nlink_mismatch", ErrDirentDangling: "dirent_dangling", ErrDirentType: "dirent_type",
	ErrDirentIndex: "dirent_index", ErrDirNotDir: "dirent_parent_not_dir",
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

// Check runs the full self-check on the snapshot's generation and streams
// every finding to fn. It returns an error only for operational failure
// (an unreadable device, cancellation).
func (s *Snapshot) Check(ctx context.Context, fn func(Finding)) (*CheckResult, error) {
	return s.check(ctx, fn, nil)
}

// CheckTicked is Check calling tick after every item it walks, from the
// checking goroutine: for progress reports and pausing (a tick may
// block; the snapshot stays pinned meanwhile). ItemCount is how many
// ticks a check of an undamaged image makes.
func (s *Snapshot) CheckTicked(ctx context.Context, fn func(Finding), tick func()) (*CheckResult, error) {
	return s.check(ctx, fn, tick)
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

type allocRec struct {
	start format.BlockNr
	n     uint64
	item  format.ExtentItem
}

type rmapRec struct {
	start format.BlockNr
	n     uint64
	owner format.Owner
	m     format.RmapItem // the mapping of a file's record (format 1.2)
}

type fileExt struct {
	ino, fb uint64
	fe      format.FileExtent
}

type metaRef struct {
	block format.BlockNr
	tree  format.TreeID
}

func (s *Snapshot) check(ctx context.Context, fn func(Finding), tick func()) (*CheckResult, error) {
	e := s.e
	res := &CheckResult{Gen: s.Gen(), Complete: true, SuperCopies: len(format.SuperBlocks(e.totalBlocks)),
		FSID: s.v.super.FSID, Label: s.v.super.Label}
	perTree := map[format.TreeID]*TreeCheck{}
	broken := map[format.TreeID]bool{} // trees whose walk hit damage
	reported := map[format.TreeID]int{}
	report := func(f Finding) {
		res.Findings++
		reported[f.Tree]++
		if tc := perTree[f.Tree]; tc != nil {
			tc.Findings++
		}
		fn(f)
	}
	total := e.totalBlocks
	var refs []metaRef
	for _, b := range format.SuperBlocks(total) {
		refs = append(refs, metaRef{b, format.OwnerSuper})
	}
	if lb := s.v.super.Log.Block; lb != 0 && uint64(lb) < total {
		refs = append(refs, metaRef{lb, format.TreeLog})
	}
	s.checkSupers(report)
	// A space tree the engine stopped maintaining (degraded.go) is stale
	// by design: it is not compared with the others (every difference
	// would be reported as damage of its own), and one finding says so,
	// unless its walk finds the damage itself.
	var untrusted []format.TreeID
	for _, st := range []Structure{StructAlloc, StructRmap, StructFree} {
		if s.v.super.RecoveryPasses&(1<<degradedPass[st]) != 0 {
			id := format.TreeRoot + format.TreeID(st-StructRoot)
			broken[id] = true
			untrusted = append(untrusted, id)
		}
	}
	if e.tolerant {
		// Offline only: on a mounted image fsyncs append to the chain
		// while it is read, and a block being written is no damage.
		s.checkLog(report)
	}

	maps := s.v.super.Incompat&format.IncompatRmapMaps != 0
	var allocs []allocRec
	var rmaps []rmapRec
	var frees []extent
	var fexts []fileExt
	csums := map[format.BlockNr]uint64{}
	ns := &namespace{inodes: map[uint64]nsInode{}, deleted: map[uint64]bool{}}
	for _, id := range s.Trees() {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		tr, _ := s.ScanTree(id)
		tc := &TreeCheck{Tree: id, Root: tr.Root.Block, Level: tr.Level, Gen: tr.Root.Gen}
		perTree[id] = tc
		v := eb.CheckVisitor{
			Block: func(p eb.Ptr, _ int) { refs = append(refs, metaRef{p.Block, id}) },
			Node:  func(format.Node, eb.Ptr) { tc.Blocks++ },
			Problem: func(p eb.Problem) {
				if p.Kind != format.KindItemCount {
					res.Complete = false
					broken[id] = true
				}
				idv, ok := kindIDs[p.Kind]
				if !ok {
					idv = ErrNodeBadLayout
				}
				report(finding(idv, id, p.Block, "%s", p.Detail))
			},
			Item: func(k format.Key, val []byte) {
				tc.Items++
				if tick != nil {
					tick()
				}
				switch id {
				case format.TreeRoot:
					if k.Type == format.TypeRootItem {
						if _, err := format.DecodeRootItem(val); err != nil {
							report(finding(ErrItemBad, id, tr.Root.Block, "root item %s: %v", k, err))
						}
					}
				case format.TreeAlloc:
					it, err := format.DecodeExtentItem(val)
					if err != nil || k.Type != format.TypeExtentItem || k.Off == 0 || k.Obj+k.Off > total || k.Obj+k.Off < k.Obj {
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "alloc item %s: bad key or value (%v)", k, err))
						return
					}
					allocs = append(allocs, allocRec{format.BlockNr(k.Obj), k.Off, it})
				case format.TreeRmap:
					ri, err := format.DecodeRmapItem(val)
					o, ok := format.RmapOwner(k)
					if err != nil || !ok || k.Obj+ri.Len > total {
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "rmap item %s: bad key or value (%v)", k, err))
						return
					}
					// Format 1.2 records of files carry their mapping;
					// no other record does.
					if ri.Mapped() != (o.IsData() && maps) {
						want := format.RmapItemSize
						if o.IsData() && maps {
							want = format.RmapMappedItemSize
						}
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "rmap item %s of %d bytes: this format's records of %s are %d bytes", k, len(val), o, want))
						return
					}
					rmaps = append(rmaps, rmapRec{format.BlockNr(k.Obj), ri.Len, o, ri})
				case format.TreeInode:
					if k.Type == format.TypeInodeItem {
						in, err := format.DecodeInodeItem(val)
						if err != nil {
							report(finding(ErrItemBad, id, tr.Root.Block, "inode item %d: %v", k.Obj, err))
							return
						}
						ns.inodes[k.Obj] = nsInode{mode: in.Mode, nlink: in.Nlink, size: in.Size}
					}
				case format.TreeDeleted:
					ns.deleted[k.Obj] = true
				case format.TreeDir:
					if k.Type != format.TypeDirEntry && k.Type != format.TypeDirIndex {
						return
					}
					de, err := format.DecodeDirEntry(val)
					if err != nil {
						report(finding(ErrItemBad, id, tr.Root.Block, "directory entry %s: %v", k, err))
						return
					}
					ns.dirents = append(ns.dirents, nsDirent{dir: k.Obj, index: k.Type == format.TypeDirIndex, de: de})
				case format.TreeExtent:
					if k.Type != format.TypeFileExtent {
						return
					}
					fe, err := format.DecodeFileExtent(val)
					if err != nil || uint64(fe.Start)+fe.Len > total {
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "file extent %s: %v", k, err))
						return
					}
					// Items come in key order: a file's items must not
					// overlap, which only a damaged tree shows.
					if n := len(fexts); n > 0 && fexts[n-1].ino == k.Obj && fexts[n-1].fb+fexts[n-1].fe.Count > k.Off {
						p := fexts[n-1]
						report(finding(ErrExtentOverlap, id, fe.Start, "inode %d: the item at block %d maps blocks up to %d, past the item at block %d", k.Obj, p.fb, p.fb+p.fe.Count, k.Off))
					}
					fexts = append(fexts, fileExt{ino: k.Obj, fb: k.Off, fe: fe})
				case format.TreeCsum:
					if k.Type != format.TypeCsum {
						return
					}
					if _, err := format.DecodeCsums(val); err != nil {
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "checksum item %s: %v", k, err))
						return
					}
					csums[format.BlockNr(k.Obj)] = uint64(len(val) / 4)
				case format.TreeFree:
					if k.Type != format.TypeFreeExtent || k.Off == 0 || k.Obj+k.Off > total || k.Obj+k.Off < k.Obj || len(val) != 0 {
						report(finding(ErrItemBad, id, format.BlockNr(k.Obj), "free item %s out of range", k))
						return
					}
					frees = append(frees, extent{format.BlockNr(k.Obj), k.Off})
				}
			},
		}
		if err := tr.Check(v); err != nil {
			return res, err
		}
		res.Trees = append(res.Trees, *tc)
	}
	for _, id := range untrusted {
		if reported[id] == 0 {
			report(finding(ErrTreeUntrusted, id, 0, "the %s tree was found damaged in use and is no longer maintained: it must be rebuilt", id))
		}
	}
	missing := false
	for _, id := range format.KnownTrees[:4] { // root, alloc, rmap, free must exist
		if _, ok := s.v.roots[id]; !ok {
			res.Complete, missing = false, true
			report(finding(ErrTreeMissing, id, 0, "the root tree has no usable %s tree", id))
		}
	}
	if !missing {
		s.crossCheck(res, broken, refs, allocs, rmaps, frees, report)
		s.crossCheckData(broken, allocs, rmaps, fexts, csums, report)
		if !broken[format.TreeInode] && !broken[format.TreeDir] {
			ns.check(report)
		}
		if !broken[format.TreeInode] && !broken[format.TreeExtent] {
			ns.checkExtents(fexts, report)
		}
	}
	// Per-tree finding counts include cross-reference findings.
	for i := range res.Trees {
		res.Trees[i].Findings = perTree[res.Trees[i].Tree].Findings
	}
	return res, nil
}

// checkSupers verifies every superblock copy against the snapshot's.
func (s *Snapshot) checkSupers(report func(Finding)) {
	e := s.e
	// Hold commits off so that none rewrites a copy while it is read.
	e.cmu.Lock()
	defer e.cmu.Unlock()
	buf := make([]byte, format.BlockSize)
	for _, at := range format.SuperBlocks(e.totalBlocks) {
		if _, err := e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
			report(finding(ErrSuperCopyBad, format.OwnerSuper, at, "unreadable: %v", err))
			continue
		}
		sb, err := format.DecodeSuper(buf, at)
		if err == nil {
			err = sb.FitsDevice(uint64(e.dev.Size()) / format.BlockSize)
		}
		if err != nil {
			report(finding(ErrSuperCopyBad, format.OwnerSuper, at, "%v", err))
			continue
		}
		switch {
		case sb.FSID != e.fsid:
			report(finding(ErrSuperCopyBad, format.OwnerSuper, at, "copy belongs to filesystem %s", sb.FSID))
		case sb.Gen < s.Gen():
			report(finding(ErrSuperCopyStale, format.OwnerSuper, at, "copy has generation %d, filesystem is at %d", sb.Gen, s.Gen()))
		case sb.Gen == s.Gen():
			if f := s.v.super.Differs(sb); f != "" {
				report(finding(ErrSuperCopyField, format.OwnerSuper, at, "copy of generation %d differs from the one in use in its %s", sb.Gen, f))
			}
		}
	}
}

// checkLog walks the fsync log's chain as the mount's replay would, and
// reports the blocks that replay would stop at although they are part of
// the chain: a block carrying the chain's tag and the expected sequence
// number that fails any other check (its checksum, its header, its chain
// pointer, its records). A block of another tag or sequence, or without
// the log magic, is the chain's normal end (the next block, not written
// yet). The head block, when it holds a log block of this filesystem,
// must also be a well-formed one (whatever its chain). A crash during an fsync can tear the
// chain's last block the same way: the detail says so, and the next mount
// drops that unacknowledged fsync and restarts the chain.
func (s *Snapshot) checkLog(report func(Finding)) {
	e := s.e
	sb := s.v.super
	total := sb.TotalBlocks
	start, seq, tag := sb.LogChain()
	buf := make([]byte, format.BlockSize)
	read := func(at format.BlockNr) []byte {
		if uint64(at) >= total {
			report(finding(ErrLogBlockBad, format.TreeLog, at, "log block number %d is beyond the filesystem's %d blocks", at, total))
			return nil
		}
		if _, err := e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
			report(finding(ErrLogBlockBad, format.TreeLog, at, "unreadable: %v", err))
			return nil
		}
		return buf
	}
	chain := s.walkLogChain(start, seq, tag, read, report)
	if head := sb.Log.Block; head != 0 && head != start && !chain[head] && read(head) != nil {
		// Zeros (no fsync since mkfs) or any well-formed log block of
		// some chain are fine; a log block of ours that fails is not.
		n := format.Node(buf)
		if format.IsLogBlock(n) && n.FSID() == e.fsid {
			if err := format.VerifyLogBlock(buf, e.fsid, head, n.Gen(), n.LogSeq(), total); err != nil {
				report(finding(ErrLogBlockBad, format.TreeLog, head, "log head block: %v (a crash during an fsync can leave it torn; the next fsync rewrites it)", err))
			}
		}
	}
}

// walkLogChain is checkLog's walk of the chain from start; it returns the
// blocks that verified as part of it.
func (s *Snapshot) walkLogChain(start format.BlockNr, seq uint32, tag format.Gen,
	read func(format.BlockNr) []byte, report func(Finding)) map[format.BlockNr]bool {
	e := s.e
	total := s.v.super.TotalBlocks
	chain := map[format.BlockNr]bool{}
	for at := start; at != 0; seq++ {
		if chain[at] {
			report(finding(ErrLogBlockBad, format.TreeLog, at, "the log chain loops back to block %d", at))
			return chain
		}
		buf := read(at)
		if buf == nil {
			return chain
		}
		n := format.Node(buf)
		verr := format.VerifyLogBlock(buf, e.fsid, at, tag, seq, total)
		if verr != nil {
			// Ours (the chain's tag and sequence, our filesystem) but
			// failing: damage. Anything else: the chain's end.
			if format.IsLogBlock(n) && n.FSID() == e.fsid && n.Gen() == tag && n.LogSeq() == seq {
				report(finding(ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: %v (the records from here on cannot be replayed; a crash during an fsync leaves the same)", seq, verr))
			}
			return chain
		}
		chain[at] = true
		for i := 1; i < n.NrItems(); i++ {
			if n.Key(i).Type != format.TypeLogRecord {
				report(finding(ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: item %d is not a log record", seq, i))
				return chain
			}
			if _, _, _, err := format.DecodeLogRecord(n.Value(i)); err != nil {
				report(finding(ErrLogBlockBad, format.TreeLog, at, "log block %d of the chain: item %d: %v", seq, i, err))
				return chain
			}
		}
		at = n.LogNext()
	}
	return chain
}

// crossCheck compares the trees with each other. A comparison runs only when
// every tree it reads was walked without damage: a finding about a damaged
// tree is reported once, by the walk, not again as a thousand mismatches.
func (s *Snapshot) crossCheck(res *CheckResult, broken map[format.TreeID]bool, refs []metaRef, allocs []allocRec, rmaps []rmapRec, frees []extent, report func(Finding)) {
	total := s.e.totalBlocks
	allocOK, rmapOK, freeOK := !broken[format.TreeAlloc], !broken[format.TreeRmap], !broken[format.TreeFree]
	slices.SortFunc(refs, func(a, b metaRef) int { return cmpBlock(a.block, b.block) })
	// Tree blocks referenced twice.
	for i := 1; i < len(refs); i++ {
		if refs[i].block == refs[i-1].block {
			report(finding(ErrBlockCrossLink, refs[i].tree, refs[i].block, "block referenced by tree %s and tree %s", refs[i-1].tree, refs[i].tree))
		}
	}
	// Alloc extents: sorted by the tree; must not overlap.
	allocAt := make(map[format.BlockNr]*allocRec, len(allocs))
	for i := range allocs {
		a := &allocs[i]
		if i > 0 && uint64(allocs[i-1].start)+allocs[i-1].n > uint64(a.start) {
			report(finding(ErrAllocOverlap, format.TreeAlloc, a.start, "extent %d+%d overlaps extent %d+%d", a.start, a.n, allocs[i-1].start, allocs[i-1].n))
		}
		allocAt[a.start] = a
	}
	// Rmap records against alloc extents.
	owners := make(map[format.BlockNr][]rmapRec, len(rmaps))
	for _, r := range rmaps {
		owners[r.start] = append(owners[r.start], r)
		if !allocOK || !rmapOK {
			continue
		}
		a := allocAt[r.start]
		switch {
		case a == nil:
			report(finding(ErrRmapOrphan, format.TreeRmap, r.start, "reverse mapping to %s for %d blocks, but no allocated extent starts there", r.owner, r.n))
		case a.n != r.n:
			report(finding(ErrRmapLength, format.TreeRmap, r.start, "reverse mapping to %s says %d blocks, extent has %d", r.owner, r.n, a.n))
		case r.owner.IsData() != (a.item.Flags == format.ExtentData):
			report(finding(ErrAllocKind, format.TreeAlloc, r.start, "extent flags %#x but owner is %s", a.item.Flags, r.owner))
		}
	}
	for _, a := range allocs {
		if !allocOK || !rmapOK {
			break
		}
		if got := uint64(len(owners[a.start])); got != a.item.Refs {
			report(finding(ErrAllocRefcount, format.TreeAlloc, a.start, "extent %d+%d has %d references recorded, %d reverse mappings", a.start, a.n, a.item.Refs, got))
		}
	}
	// Every tree block: alloc record (1 block, metadata) and rmap by its tree.
	used := make(map[format.BlockNr]format.TreeID, len(refs))
	for _, r := range refs {
		used[r.block] = r.tree
		if uint64(r.block) >= total {
			continue // reported by the walk as unreadable
		}
		a := allocAt[r.block]
		switch {
		case !allocOK:
		case a == nil:
			report(finding(ErrAllocMissing, r.tree, r.block, "block of tree %s has no alloc record", r.tree))
		case a.n != 1 || a.item.Flags != format.ExtentMeta:
			report(finding(ErrAllocKind, r.tree, r.block, "block of tree %s is recorded as a %d-block extent with flags %#x", r.tree, a.n, a.item.Flags))
		}
		found := false
		for _, o := range owners[r.block] {
			if !o.owner.IsData() && o.owner.Tree == r.tree {
				found = true
			}
		}
		if !found && rmapOK {
			report(finding(ErrRmapMissing, r.tree, r.block, "block of tree %s has no reverse mapping to it", r.tree))
		}
	}
	// Metadata reverse mappings whose tree does not use the block.
	for _, r := range rmaps {
		if r.owner.IsData() {
			continue
		}
		if t, ok := used[r.start]; (!ok || t != r.owner.Tree) && res.Complete && rmapOK {
			report(finding(ErrRmapOrphan, format.TreeRmap, r.start, "reverse mapping says tree %s owns block %d, but it does not use it", r.owner.Tree, r.start))
		}
	}
	// Metadata extents nothing uses.
	if res.Complete && allocOK {
		for _, a := range allocs {
			if a.item.Flags != format.ExtentMeta {
				continue
			}
			if _, ok := used[a.start]; !ok {
				report(finding(ErrAllocLeaked, format.TreeAlloc, a.start, "metadata block is allocated but no tree uses it"))
			}
		}
	}
	// Free and allocated extents tile the device exactly.
	var freeSum uint64
	for i, f := range frees {
		freeSum += f.n
		if i > 0 && uint64(frees[i-1].start)+frees[i-1].n == uint64(f.start) {
			report(finding(ErrFreeNotMerged, format.TreeFree, f.start, "free extent %d+%d adjoins the previous one", f.start, f.n))
		}
	}
	if !freeOK || !allocOK {
		return
	}
	if freeSum != s.v.super.FreeBlocks {
		report(finding(ErrSuperFreeCount, format.OwnerSuper, 0, "superblock counts %d free blocks, free-space tree holds %d", s.v.super.FreeBlocks, freeSum))
	}
	pos := uint64(0)
	ai, fi := 0, 0
	for ai < len(allocs) || fi < len(frees) {
		var start, n uint64
		isFree := false
		if fi < len(frees) && (ai >= len(allocs) || frees[fi].start <= allocs[ai].start) {
			start, n, isFree = uint64(frees[fi].start), frees[fi].n, true
			fi++
		} else {
			start, n = uint64(allocs[ai].start), allocs[ai].n
			ai++
		}
		switch {
		case start > pos:
			report(finding(ErrSpaceLost, format.TreeFree, format.BlockNr(pos), "blocks %d..%d are neither free nor allocated", pos, start-1))
		case start < pos && isFree:
			report(finding(ErrFreeOverlap, format.TreeFree, format.BlockNr(start), "free extent %d+%d overlaps allocated or free blocks below %d", start, n, pos))
		case start < pos:
			report(finding(ErrFreeOverlap, format.TreeAlloc, format.BlockNr(start), "allocated extent %d+%d overlaps free or allocated blocks below %d", start, n, pos))
		}
		pos = max(pos, start+n)
	}
	if pos < total {
		report(finding(ErrSpaceLost, format.TreeFree, format.BlockNr(pos), "blocks %d..%d are neither free nor allocated", pos, total-1))
	}
}

func cmpBlock(a, b format.BlockNr) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// crossCheckData compares file extent items with the rmap records of data
// extents, the alloc tree, and the checksum items.
func (s *Snapshot) crossCheckData(broken map[format.TreeID]bool, allocs []allocRec, rmaps []rmapRec, fexts []fileExt, csums map[format.BlockNr]uint64, report func(Finding)) {
	if broken[format.TreeExtent] {
		return
	}
	type ownerKey struct {
		start   format.BlockNr
		ino, fb uint64
	}
	items := make(map[ownerKey]format.FileExtent, len(fexts))
	for _, x := range fexts {
		items[ownerKey{x.fe.Start, x.ino, x.fb}] = x.fe
	}
	allocAt := make(map[format.BlockNr]allocRec, len(allocs))
	for _, a := range allocs {
		allocAt[a.start] = a
	}
	if !broken[format.TreeRmap] {
		have := make(map[ownerKey]bool, len(rmaps))
		for _, r := range rmaps {
			if !r.owner.IsData() {
				continue
			}
			k := ownerKey{r.start, r.owner.Inode, r.owner.Offset}
			have[k] = true
			fe, ok := items[k]
			switch {
			case !ok:
				report(finding(ErrRmapDataOwner, format.TreeRmap, r.start, "reverse mapping says inode %d block %d maps extent %d+%d, but no such file extent item exists", r.owner.Inode, r.owner.Offset, r.start, r.n))
			case r.m.Mapped() && (r.m.Offset != fe.Offset || r.m.Count != fe.Count):
				report(finding(ErrRmapMapping, format.TreeRmap, r.start, "reverse mapping says inode %d block %d maps blocks [%d,+%d) of extent %d+%d; its file extent item maps [%d,+%d)", r.owner.Inode, r.owner.Offset, r.m.Offset, r.m.Count, r.start, r.n, fe.Offset, fe.Count))
			}
		}
		for _, x := range fexts {
			if !have[ownerKey{x.fe.Start, x.ino, x.fb}] {
				report(finding(ErrExtentNoRmap, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which has no reverse mapping to it", x.ino, x.fb, x.fe.Start, x.fe.Len))
			}
		}
	}
	if !broken[format.TreeAlloc] {
		for _, x := range fexts {
			if a, ok := allocAt[x.fe.Start]; !ok || a.n != x.fe.Len || a.item.Flags != format.ExtentData {
				report(finding(ErrExtentNoAlloc, format.TreeExtent, x.fe.Start, "inode %d block %d maps extent %d+%d, which is not allocated as data", x.ino, x.fb, x.fe.Start, x.fe.Len))
			}
		}
	}
	if !broken[format.TreeCsum] && !broken[format.TreeAlloc] {
		for _, a := range allocs {
			if a.item.Flags != format.ExtentData {
				continue
			}
			if n, ok := csums[a.start]; !ok || n != a.n {
				report(finding(ErrCsumMissing, format.TreeCsum, a.start, "data extent %d+%d has no checksum item of %d entries", a.start, a.n, a.n))
			}
		}
		for b := range csums {
			if a, ok := allocAt[b]; !ok || a.item.Flags != format.ExtentData {
				report(finding(ErrCsumOrphan, format.TreeCsum, b, "checksum item for block %d, which starts no data extent", b))
			}
		}
	}
}

// The namespace: inode link counts against the directory entries naming
// them.

type nsInode struct {
	mode  uint32
	nlink uint32
	size  uint64
}

type nsDirent struct {
	dir   uint64
	index bool
	de    format.DirEntry
}

type namespace struct {
	inodes  map[uint64]nsInode
	deleted map[uint64]bool
	dirents []nsDirent
}

const (
	modeType = 0o170000
	modeDir  = 0o040000
)

// checkExtents reports file extent items mapping blocks past their file's
// size: the write that extends a file sets its size in the same
// transaction, and a truncate drops the blocks past the new size, so only
// a damaged item (one moved to another file block) or a damaged size
// shows it.
func (ns *namespace) checkExtents(fexts []fileExt, report func(Finding)) {
	for _, x := range fexts {
		in, ok := ns.inodes[x.ino]
		if !ok {
			continue
		}
		if end := (in.size + format.BlockSize - 1) / format.BlockSize; x.fb+x.fe.Count > end {
			report(finding(ErrExtentPastEOF, format.TreeExtent, x.fe.Start, "inode %d of %d bytes: the item at block %d maps blocks up to %d, past its last block %d", x.ino, in.size, x.fb, x.fb+x.fe.Count, end))
		}
	}
}

func (ns *namespace) check(report func(Finding)) {
	if len(ns.inodes) == 0 {
		return // no filesystem on this image (engine-only use)
	}
	links := map[uint64]uint32{}
	subdirs := map[uint64]uint32{}
	type twin struct {
		dir, ino, index uint64
		name            string
	}
	names := map[twin]int{}
	for _, d := range ns.dirents {
		t := twin{d.dir, d.de.Ino, d.de.Index, d.de.Name}
		if d.index {
			names[t]--
			continue
		}
		names[t]++
		parent, ok := ns.inodes[d.dir]
		if ok && parent.mode&modeType != modeDir {
			report(finding(ErrDirNotDir, format.TreeDir, 0, "entry %q under inode %d, which is not a directory", d.de.Name, d.dir))
		}
		in, ok := ns.inodes[d.de.Ino]
		if !ok {
			report(finding(ErrDirentDangling, format.TreeDir, 0, "entry %q in directory %d names inode %d, which does not exist", d.de.Name, d.dir, d.de.Ino))
			continue
		}
		if uint32(d.de.Type) != (in.mode&modeType)>>12 {
			report(finding(ErrDirentType, format.TreeDir, 0, "entry %q in directory %d says type %o, inode %d has mode %o", d.de.Name, d.dir, d.de.Type, d.de.Ino, in.mode))
		}
		links[d.de.Ino]++
		if in.mode&modeType == modeDir {
			subdirs[d.dir]++
		}
	}
	for t, n := range names {
		if n != 0 {
			report(finding(ErrDirentIndex, format.TreeDir, 0, "entry %q (inode %d) in directory %d is not paired with its index entry %d", t.name, t.ino, t.dir, t.index))
		}
	}
	for ino, in := range ns.inodes {
		want := links[ino]
		if in.mode&modeType == modeDir {
			want = 2 + subdirs[ino]
			if links[ino] == 0 && ino != rootIno {
				want = 0 // an unlinked directory still open
			}
		}
		if ns.deleted[ino] && links[ino] == 0 {
			want = 0
		}
		if in.nlink != want {
			report(finding(ErrNlink, format.TreeInode, 0, "inode %d has link count %d, the directory tree implies %d", ino, in.nlink, want))
		}
	}
}

// rootIno is the filesystem's root directory (engine/fs.RootIno).
const rootIno = 256
