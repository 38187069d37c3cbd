package repair

import (
	"cmp"
	"context"
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
//	inode.go       link counts against the directory entries
//	deleted.go     the deleted inodes (read by inode.go)
//	dir.go         directory entries against the inodes they name
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

// checkState is what the walk collects for the comparisons, and the
// indexes over it they share (built on first use).
type checkState struct {
	*engine.Checking
	total uint64
	maps  bool // format 1.2: files' rmap records carry their mapping

	allocs  []allocRec
	rmaps   []rmapRec
	frees   []freeRec
	fexts   []fileExt
	csums   map[format.BlockNr]uint64 // extent start → checksum count
	inodes  map[uint64]nsInode
	deleted map[uint64]bool
	dirents []nsDirent

	refs    []engine.MetaRef // sorted by block
	allocAt map[format.BlockNr]*allocRec
	items   map[fileExtKey]format.FileExtent
	owners  map[format.BlockNr][]rmapRec
	used    map[format.BlockNr]format.TreeID
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
	fe      format.FileExtent
}

// allocIndex returns the allocation records by their start.
func (st *checkState) allocIndex() map[format.BlockNr]*allocRec {
	if st.allocAt == nil {
		st.allocAt = make(map[format.BlockNr]*allocRec, len(st.allocs))
		for i := range st.allocs {
			st.allocAt[st.allocs[i].start] = &st.allocs[i]
		}
	}
	return st.allocAt
}

// ownerIndex returns the rmap records by their start.
func (st *checkState) ownerIndex() map[format.BlockNr][]rmapRec {
	if st.owners == nil {
		st.owners = make(map[format.BlockNr][]rmapRec, len(st.rmaps))
		for _, r := range st.rmaps {
			st.owners[r.start] = append(st.owners[r.start], r)
		}
	}
	return st.owners
}

// usedIndex returns the tree using each metadata block in use.
func (st *checkState) usedIndex() map[format.BlockNr]format.TreeID {
	if st.used == nil {
		st.used = make(map[format.BlockNr]format.TreeID, len(st.refs))
		for _, r := range st.refs {
			st.used[r.Block] = r.Tree
		}
	}
	return st.used
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
	st := &checkState{Checking: s.StartCheck(fn), total: sb.TotalBlocks,
		maps:   sb.Incompat&format.IncompatRmapMaps != 0,
		csums:  map[format.BlockNr]uint64{},
		inodes: map[uint64]nsInode{}, deleted: map[uint64]bool{}}
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
	if !st.Missing() {
		st.refs = slices.SortedStableFunc(slices.Values(st.Refs()), func(a, b engine.MetaRef) int { return cmp.Compare(a.Block, b.Block) })
		checkCrossLinks(st)
		for i := range opsTable {
			if ck := opsTable[i].Check; ck != nil && ck.cross != nil {
				ck.cross(st)
			}
		}
	}
	return st.Result(), nil
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
