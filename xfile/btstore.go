package xfile

// Why a BTreeStore is a correct btree.Store
//
// The B-tree (engine/btree) asks four things of a store: Read a node it
// points at, make one Writable, Alloc a new one, Free one it dropped. On an
// xfile every node is a 4 KiB block of the mapping, block b at byte offset
// b*BlockSize, and all four are cheap:
//
//   - Writable returns the very node Read returns, with the same pointer:
//     the store updates in place and has a single, constant generation, so
//     the tree never has to rewrite a parent's child pointer.
//   - Read returns a slice of the mapping, never a copy. The B-tree requires
//     a node to stay valid until the operation that obtained it returns,
//     whatever else it allocates; Alloc may grow (remap) the file, but the
//     File keeps every old view mapped until Close (see file.go), so a slice
//     taken before a remap still addresses the same page-cache pages.
//   - Every block in use has its pages reserved (Alloc fetches it with
//     Bytes), so writing through a node never faults; Read touches only
//     blocks the in-use bitmap lists, so it never faults a punched hole in.
//   - Freed blocks go on a free list and are reused by Alloc. When many are
//     free, their storage goes back to the system with Discard (a punched
//     hole); a reused punched block is fetched with Bytes again, which
//     reserves its pages anew. The most recently freed blocks are never
//     punched, so no block freed by the tree operation in progress loses its
//     pages while the tree may still hold its slice: one operation frees at
//     most a node per level plus a collapsed root or two, far fewer than
//     keepResident.
//
// Verification: the xfile is private, trusted memory, not a disk, so Read
// checks only what catches a wrong pointer (the tree's or the store's bug):
// magic, block number, owner tree, level, generation and the item count
// bound. It does not compute the crc32c, which would cost more than the
// B-tree search itself (it reads all 4 KiB), and nodes are never sealed, so
// their checksum fields are stale: a node copied to disk must be sealed
// there (the bulk loader writes fresh nodes, which the image store seals at
// commit). Read also pulls a leaf's keys into the CPU cache at once (warm),
// which is what makes inserts into a tree larger than the caches fast.
//
// Memory: the Go heap holds only the in-use bitmap (1 bit per block) and the
// free lists (8 bytes per free block), so a tree of 10M records costs tens
// of kilobytes of heap and its nodes live in the page cache.

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// BTreeGen is the generation of every node and pointer in a BTreeStore.
const BTreeGen format.Gen = 1

const (
	// keepResident is how many of the most recently freed blocks are never
	// punched: they are the likeliest to be reused, and the tree operation
	// in progress may still hold their slices.
	keepResident = 64
	// punchMin is the fewest free blocks (besides keepResident) worth
	// punching in one batch.
	punchMin = 1024
	// punchShift: punch also waits until the free blocks exceed in-use>>3,
	// so a tree that shrinks and grows again reuses backed blocks cheaply.
	punchShift = 3
)

// nodeMagic is the node magic, read from a node format.InitNode formats.
var nodeMagic = binary.LittleEndian.Uint32(format.InitNode(make([]byte, format.BlockSize), format.FSID{}, 0, 0, 0, 0))

// BTreeStore is a btree.Store whose nodes live in a File: the in-memory
// B-tree of online repair (the "xfbtree" of XFS). It updates nodes in place,
// with one generation (BTreeGen); block b lives at byte offset
// b*format.BlockSize, and block 0 is never used, so a zero Ptr is never
// valid. Several trees (different tree ids) may share one store.
//
// Like File, a BTreeStore is not safe for concurrent use, with one
// exception: Read (so lookups and iteration) may run in several goroutines
// at once while nothing allocates, frees or closes.
type BTreeStore struct {
	f     *File
	fsid  format.FSID
	next  format.BlockNr // first never-used block
	inUse []uint64       // bitmap over blocks [0, next)
	count uint64         // blocks in use

	free    []format.BlockNr // released, storage kept; most recent last
	punched []format.BlockNr // released, storage given back; descending

	allocs, frees, punches uint64

	punchMin   int // tests lower these to exercise punching
	punchShift uint
}

// BTreeStats describes a BTreeStore.
type BTreeStats struct {
	Blocks   uint64 // nodes in use
	Free     uint64 // released blocks whose storage is kept for reuse
	Punched  uint64 // released blocks whose storage was given back
	Extent   uint64 // blocks ever used: the file's extent is (Extent+1)*BlockSize
	Allocs   uint64 // Alloc calls that succeeded
	Frees    uint64 // Free calls that succeeded
	Discards uint64 // Discard calls (hole punches) made
	File     Stats  // the File's mapping and allocated storage
}

// NewBTreeStore creates an empty store on a new File made with opts.
func NewBTreeStore(opts Options) (*BTreeStore, error) {
	if opts.Name == "" {
		opts.Name = "btree"
	}
	f, err := New(opts)
	if err != nil {
		return nil, err
	}
	return &BTreeStore{f: f, next: 1, punchMin: punchMin, punchShift: punchShift}, nil
}

// CreateTree makes an empty tree with id in the store.
func (s *BTreeStore) CreateTree(id format.TreeID) (*btree.Tree, error) {
	return btree.Create(s, id)
}

// Len returns the number of nodes in use.
func (s *BTreeStore) Len() int { return int(s.count) }

// Stats reports the store's block counts and the File's memory.
func (s *BTreeStore) Stats() (BTreeStats, error) {
	fs, err := s.f.Stat()
	if err != nil {
		return BTreeStats{}, err
	}
	return BTreeStats{
		Blocks:   s.count,
		Free:     uint64(len(s.free)),
		Punched:  uint64(len(s.punched)),
		Extent:   uint64(s.next) - 1,
		Allocs:   s.allocs,
		Frees:    s.frees,
		Discards: s.punches,
		File:     fs,
	}, nil
}

// Close frees the File and everything in it. Nodes must not be used
// afterwards. Close is idempotent.
func (s *BTreeStore) Close() error {
	s.inUse, s.free, s.punched, s.count = nil, nil, nil, 0
	return s.f.Close()
}

func (s *BTreeStore) used(b format.BlockNr) bool {
	return b < s.next && s.inUse[b/64]&(1<<(b%64)) != 0
}

func (s *BTreeStore) setUsed(b format.BlockNr, on bool) {
	if on {
		s.inUse[b/64] |= 1 << (b % 64)
	} else {
		s.inUse[b/64] &^= 1 << (b % 64)
	}
}

func (s *BTreeStore) corrupt(kind format.Kind, tree format.TreeID, b format.BlockNr, f string, args ...any) error {
	return &format.CorruptError{Kind: kind, Tree: tree, Block: b, Detail: fmt.Sprintf(f, args...)}
}

// Read returns the node at p, a slice of the mapping, after checking its
// header (not its checksum: see the top of this file). A level below zero
// means "any level".
func (s *BTreeStore) Read(tree format.TreeID, p btree.Ptr, level int) (format.Node, error) {
	n, err := s.node(tree, p, level)
	if err == nil && n.IsLeaf() {
		_ = warm(n)
	}
	return n, err
}

// node returns the node at p after checking its header.
func (s *BTreeStore) node(tree format.TreeID, p btree.Ptr, level int) (format.Node, error) {
	if s.f.osf == nil {
		return nil, ErrClosed
	}
	b := p.Block
	if !s.used(b) {
		return nil, s.corrupt(format.KindShortRead, tree, b, "no such block in xfile btree store (extent %d)", s.next-1)
	}
	off := int64(b) * format.BlockSize
	n := format.Node(s.f.mem[off : off+format.BlockSize : off+format.BlockSize])
	switch {
	case binary.LittleEndian.Uint32(n) != nodeMagic:
		return nil, s.corrupt(format.KindBadMagic, tree, b, "magic %q", []byte(n[0:4]))
	case n.Block() != b:
		return nil, s.corrupt(format.KindMisdirected, tree, b, "header says block %d", n.Block())
	case n.Owner() != tree:
		return nil, s.corrupt(format.KindWrongOwner, tree, b, "header says owner %s", n.Owner())
	case p.Gen != BTreeGen || n.Gen() != BTreeGen:
		return nil, s.corrupt(format.KindStale, tree, b, "generation %d, pointer says %d, store uses %d", n.Gen(), p.Gen, BTreeGen)
	case level >= 0 && n.Level() != level:
		return nil, s.corrupt(format.KindBadLevel, tree, b, "level %d, expected %d", n.Level(), level)
	case n.IsLeaf() && n.NrItems() > format.MaxLeafItems,
		!n.IsLeaf() && (n.NrItems() > format.MaxPtrs || n.Level() > format.MaxLevel):
		return nil, s.corrupt(format.KindBadLayout, tree, b, "level %d node with %d items", n.Level(), n.NrItems())
	}
	return n, nil
}

// warm loads one byte of every cache line of a leaf's item headers and
// returns their OR, which callers ignore. The loads are independent, so the
// CPU has them in flight together: the keys arrive in about one memory
// latency instead of one per step of the binary search that follows. On a
// tree much larger than the CPU caches those misses are most of an insert's
// time (10M random rmap inserts: about 490k/s without, 750k/s with).
// Interior nodes are not warmed: the upper levels stay cached, and warming
// them measured slower. It is not inlined, so that the compiler cannot drop
// the unused loads.
//
//go:noinline
func warm(n format.Node) byte {
	end := format.HeaderSize + n.NrItems()*format.LeafItemSize
	var x byte
	for o := format.HeaderSize; o < end; o += 64 {
		x |= n[o]
	}
	return x
}

// Writable returns the node at p itself: the store updates in place.
func (s *BTreeStore) Writable(tree format.TreeID, p btree.Ptr, level int) (format.Node, btree.Ptr, error) {
	n, err := s.Read(tree, p, level)
	if err != nil {
		return nil, btree.Ptr{}, err
	}
	return n, p, nil
}

// Alloc returns a new empty node of tree at level, reusing a released block
// if there is one (the most recently freed first, then the lowest punched
// one), else extending the file. The error wraps ErrNoSpace if the file
// cannot grow or its pages cannot be backed.
func (s *BTreeStore) Alloc(tree format.TreeID, level int) (format.Node, btree.Ptr, error) {
	if s.f.osf == nil {
		return nil, btree.Ptr{}, ErrClosed
	}
	if level < 0 || level > format.MaxLevel {
		return nil, btree.Ptr{}, fmt.Errorf("%s: alloc at level %d: %w", s.f.name, level, ErrRange)
	}
	var b format.BlockNr
	switch {
	case len(s.free) > 0:
		b = s.free[len(s.free)-1]
	case len(s.punched) > 0:
		b = s.punched[len(s.punched)-1]
	default:
		b = s.next
		if uint64(b) >= MaxSize/format.BlockSize {
			return nil, btree.Ptr{}, fmt.Errorf("%s: alloc block %d: %w", s.f.name, b, ErrNoSpace)
		}
	}
	off := int64(b) * format.BlockSize
	if end := off + format.BlockSize; end > s.f.Size() {
		if err := s.f.Grow(end); err != nil {
			return nil, btree.Ptr{}, err
		}
	}
	mem, err := s.f.Bytes(off, format.BlockSize) // reserves the pages
	if err != nil {
		return nil, btree.Ptr{}, err
	}
	// Commit the choice only now that the block is backed.
	switch {
	case len(s.free) > 0:
		s.free = s.free[:len(s.free)-1]
	case len(s.punched) > 0:
		s.punched = s.punched[:len(s.punched)-1]
	default:
		s.next++
		if need := int(s.next+63) / 64; need > len(s.inUse) {
			s.inUse = append(s.inUse, make([]uint64, need-len(s.inUse))...)
		}
	}
	s.setUsed(b, true)
	s.count++
	s.allocs++
	n := format.InitNode(mem, s.fsid, b, BTreeGen, tree, level)
	return n, btree.Ptr{Block: b, Gen: BTreeGen}, nil
}

// Free releases the node at p. Freeing a block that is not in use is an
// error (a double free), as is one that belongs to another tree or level.
func (s *BTreeStore) Free(tree format.TreeID, p btree.Ptr, level int) error {
	if _, err := s.node(tree, p, level); err != nil {
		return fmt.Errorf("%s: free: %w", s.f.name, err)
	}
	b := p.Block
	s.setUsed(b, false)
	// Clear the magic so a stale pointer to a reused-later block cannot
	// pass for the old node by accident before it is reused.
	off := int64(b) * format.BlockSize
	clear(s.f.mem[off : off+4])
	s.count--
	s.frees++
	s.free = append(s.free, b)
	if len(s.free) >= keepResident+max(s.punchMin, int(s.count>>s.punchShift)) {
		// Best effort: the block is free whether or not its storage goes
		// back now, and failing here would abort the tree operation
		// halfway. Blocks that could not be punched stay on the free list,
		// valid and reusable; Trim reports the error.
		_ = s.punch(len(s.free) - keepResident)
	}
	return nil
}

// Trim gives the storage of every free block back to the system. Call it
// between tree operations (never from inside one), e.g. when a tree was
// dropped and the store will stay idle.
func (s *BTreeStore) Trim() error {
	if s.f.osf == nil {
		return ErrClosed
	}
	return s.punch(len(s.free))
}

// punch discards the oldest k blocks of the free list, coalescing adjacent
// blocks into one hole, and moves them to the punched list.
func (s *BTreeStore) punch(k int) error {
	if k <= 0 {
		return nil
	}
	batch := slices.Clone(s.free[:k])
	slices.Sort(batch)
	for i := 0; i < len(batch); {
		j := i + 1
		for j < len(batch) && batch[j] == batch[j-1]+1 {
			j++
		}
		off := int64(batch[i]) * format.BlockSize
		if err := s.f.Discard(off, int64(j-i)*format.BlockSize); err != nil {
			return err // the blocks stay on the free list, still valid
		}
		s.punches++
		i = j
	}
	s.free = append(s.free[:0], s.free[k:]...)
	s.punched = append(s.punched, batch...)
	// Descending, so Alloc pops the lowest: reusing low blocks first keeps
	// the reservation File.Bytes makes ahead of a reused block useful.
	slices.SortFunc(s.punched, func(a, b format.BlockNr) int { return cmp.Compare(b, a) })
	return nil
}

var _ btree.Store = (*BTreeStore)(nil)
