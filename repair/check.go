package repair

import (
	"cmp"
	"context"
	"os"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// The self-check: the engine's generic walk of every tree (blocks,
// headers, layout, key order, item counts) with each structure's checker
// (the ops table's Check column, one file per structure beside its
// repairer) fed the items of its trees, then the comparisons across
// trees. Every structure's rules live in its file:
//
//	superblock.go  the copies against the one in use
//	log.go         the fsync log's chain (offline only)
//	root.go        root items
//	alloc.go       allocation records against the blocks in use and the rmap
//	rmap.go        reverse mappings against the allocations, the blocks in
//	               use and the file extents
//	free.go        free extents against the allocations: together they tile
//	               the device
//	extent.go      file extents against the rmap, the allocations and sizes
//	csum.go        checksum items against the data extents
//	inode.go       link counts against the directory entries, block
//	               counts against the file extents
//	deleted.go     the deleted inodes (read by inode.go)
//	dir.go         directory entries against the inodes they name
//	subvol.go      subvolumes against their roots, inodes and UUIDs
//
// A comparison runs only when every tree it reads was walked without
// damage: damage is reported once, by the walk, not again as a thousand
// mismatches.

// The engine runs this check wherever it needs one (the check_allocations
// recovery pass, Snapshot.Check, CheckImage): the package registers it.
func init() { engine.RegisterCheck(CheckTicked) }

// checker is a structure's part of the check.
type checker struct {
	// before runs ahead of the walk (checks that read no tree).
	before func(st *checkState)
	// items receive the items of the structure's trees during the walk.
	items map[format.TreeID]func(st *checkState, root format.BlockNr, k format.Key, val []byte)
	// cross runs after the walk, when no tree every image has is missing.
	cross func(st *checkState)
}

// checkState is what the walk collects for the comparisons: streams of
// records in xfile arrays (checkjoin.go), compared by merge joins.
type checkState struct {
	*engine.Checking
	total uint64
	maps  bool // format 1.2: files' rmap records carry their mapping

	tempDir string // for the arrays' xfiles ("": anonymous memory)
	err     error  // the first operational error (scratch space)
	arrays  []closer

	allocs  *recArr[allocRec] // by start (the walk's order)
	rmaps   *recArr[rmapRec]  // by start, then sorted by (start, inode, offset, tree)
	frees   *recArr[freeRec]
	fexts   *recArr[fileExt] // by (inode, block), then sorted by (start, inode, block, seq)
	csums   *recArr[csumRec] // by start
	inodes  *recArr[nsInode] // by inode
	deleted *recArr[uint64]  // sorted by inode
	names   *recArr[nsName]  // entries by name: by directory, then sorted by inode
	twins   *recArr[nsTwin]  // entries and index twins, sorted for pairing
	nameBuf *nameFile
	sortBuf []byte // the sorts' heap buffer (sortBy)

	lastFext fileExt    // the extent tree's previous item (when nfexts > 0)
	link     linkCursor // the symlink whose target is being walked (inode_repair.go)
	nfexts   uint64
	// pastEOF: the file extent items past their file's size (seq: the
	// size), found before fexts is sorted by extent.
	pastEOF *recArr[fileExt]
	// fileBlocks: per file, the blocks its extent items map (by inode,
	// the walk's order); curBlocks is the file being walked (when
	// blocksOpen), added once the walk moves past it.
	fileBlocks *recArr[fileBlocks]
	curBlocks  fileBlocks
	blocksOpen bool
	// extentItemsLost: the walk of the extent tree found fewer items
	// than its nodes count (a wrong item count does not make a tree
	// broken): some file's sum may lack an item.
	extentItemsLost bool

	xattr  xattrState  // xattr.go
	subvol subvolState // subvol.go
	snap   snapState   // snapshot.go

	refs []engine.MetaRef // sorted by block
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

type freeRec struct {
	start format.BlockNr
	n     uint64
}

type fileExt struct {
	ino, fb uint64
	seq     uint64 // place in the walk: of two items of one key, the later counts
	fe      format.FileExtent
}

func newCheckState(c *engine.Checking, sb *format.Super) *checkState {
	st := &checkState{Checking: c, total: sb.TotalBlocks, maps: sb.Incompat&format.IncompatRmapMaps != 0, tempDir: os.TempDir()}
	st.allocs = newRecArr(st, "alloc records", allocCodec)
	st.rmaps = newRecArr(st, "rmap records", rmapCodec)
	st.frees = newRecArr(st, "free extents", freeCodec)
	st.fexts = newRecArr(st, "file extents", fextCodec)
	st.pastEOF = newRecArr(st, "file extents past EOF", fextCodec)
	st.fileBlocks = newRecArr(st, "file block counts", fileBlocksCodec)
	st.csums = newRecArr(st, "checksum items", csumCodec)
	st.inodes = newRecArr(st, "inodes", inodeCodec)
	st.deleted = newRecArr(st, "deleted inodes", u64Codec)
	st.names = newRecArr(st, "entries", nameCodec)
	st.twins = newRecArr(st, "entry twins", twinCodec)
	st.nameBuf = &nameFile{st: st}
	st.arrays = append(st.arrays, st.nameBuf)
	return st
}

// dropAll leaves the scratch space to the kernel until it is read again.
func (st *checkState) dropAll() {
	for _, a := range st.arrays {
		a.dropAll()
	}
}

// close frees the check's scratch space.
func (st *checkState) close() {
	for _, a := range st.arrays {
		a.close()
	}
}

// allocSeeker looks allocation records up by start (the last of a start,
// as the walk met them).
func (st *checkState) allocSeeker() *seeker[allocRec, format.BlockNr] {
	return newSeeker(st.allocs, func(a allocRec) format.BlockNr { return a.start }, cmpBlock)
}

// sortedRmaps returns the rmap records sorted by (start, inode, offset,
// tree): by start as the walk met them, files' records in the order of
// the file extent items they name.
func (st *checkState) sortedRmaps() *recArr[rmapRec] {
	st.rmaps.sortBy(32, nil)
	return st.rmaps
}

// rmapSeeker looks the rmap records up by start.
func (st *checkState) rmapSeeker() *seeker[rmapRec, format.BlockNr] {
	return newSeeker(st.sortedRmaps(), func(r rmapRec) format.BlockNr { return r.start }, cmpBlock)
}

// usedBy returns the tree using metadata block b (the last of the sorted
// refs naming it), if any.
func (st *checkState) usedBy(b format.BlockNr) (format.TreeID, bool) {
	i, _ := slices.BinarySearchFunc(st.refs, b+1, func(r engine.MetaRef, b format.BlockNr) int { return cmp.Compare(r.Block, b) })
	if i > 0 && st.refs[i-1].Block == b {
		return st.refs[i-1].Tree, true
	}
	return 0, false
}

// Check runs the full self-check on the snapshot's generation and streams
// every finding to fn. It returns an error only for operational failure
// (an unreadable device, cancellation).
func Check(ctx context.Context, s *engine.Snapshot, fn func(engine.Finding)) (*engine.CheckResult, error) {
	return CheckTicked(ctx, s, fn, nil)
}

// CheckTicked is Check calling tick after every item it walks, from the
// checking goroutine: for progress reports and pausing (a tick may block;
// the snapshot stays pinned meanwhile). Snapshot.ItemCount is how many
// ticks a check of an undamaged image makes.
func CheckTicked(ctx context.Context, s *engine.Snapshot, fn func(engine.Finding), tick func()) (*engine.CheckResult, error) {
	sb := s.Super()
	var st *checkState
	st = newCheckState(s.StartCheck(func(f engine.Finding) {
		if f.ID == engine.ErrTreeItemCount && f.Tree == format.TreeExtent {
			st.extentItemsLost = true
		}
		fn(f)
	}), &sb)
	defer st.close()
	items := map[format.TreeID]engine.ItemChecker{}
	for i := range opsTable {
		ck := opsTable[i].Check
		if ck == nil {
			continue
		}
		if ck.before != nil {
			ck.before(st)
		}
		for id, f := range ck.items {
			items[id] = func(root format.BlockNr, k format.Key, val []byte) { f(st, root, k, val) }
		}
	}
	if err := st.WalkTrees(ctx, items, tick); err != nil {
		return st.Result(), err
	}
	if st.err != nil {
		return st.Result(), st.err
	}
	if !st.Missing() {
		st.refs = slices.SortedStableFunc(slices.Values(st.Refs()), func(a, b engine.MetaRef) int { return cmp.Compare(a.Block, b.Block) })
		checkCrossLinks(st)
		for i := range opsTable {
			if ck := opsTable[i].Check; ck != nil && ck.cross != nil {
				ck.cross(st)
				st.dropAll()
			}
		}
	}
	return st.Result(), st.err
}

// checkCrossLinks reports tree blocks in use twice: by two trees, or
// twice by one.
func checkCrossLinks(st *checkState) {
	for i := 1; i < len(st.refs); i++ {
		if a, b := st.refs[i-1], st.refs[i]; b.Block == a.Block {
			st.Reportf(engine.ErrBlockCrossLink, b.Tree, b.Block, "block referenced by tree %s and tree %s", a.Tree, b.Tree)
		}
	}
}
