package btree

import (
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// MemStore is a Store on the Go heap, for tests and as the reference the
// other stores are compared with. With CoW set it behaves like the image
// store: a node written before the last Commit is copied to a new block on
// Writable and the old block is freed; otherwise it updates in place. Every
// Read verifies the node as the image store does.
type MemStore struct {
	FSID   format.FSID
	CoW    bool
	Gen    format.Gen
	blocks map[format.BlockNr]format.Node
	dirty  map[format.BlockNr]bool
	next   format.BlockNr
	Frees  int
	Allocs int
}

// NewMemStore returns an empty store; generation starts at 1.
func NewMemStore(cow bool) *MemStore {
	return &MemStore{CoW: cow, Gen: 1, blocks: map[format.BlockNr]format.Node{}, dirty: map[format.BlockNr]bool{}, next: 1}
}

// Commit ends a generation: every node becomes clean (copy-on-write again).
func (s *MemStore) Commit() {
	for b := range s.dirty {
		s.blocks[b].Seal()
	}
	clear(s.dirty)
	s.Gen++
}

// Len returns the number of live nodes.
func (s *MemStore) Len() int { return len(s.blocks) }

// Block returns a live node's bytes, for tests that corrupt them.
func (s *MemStore) Block(b format.BlockNr) format.Node { return s.blocks[b] }

func (s *MemStore) Read(tree format.TreeID, p Ptr, level int) (format.Node, error) {
	n, ok := s.blocks[p.Block]
	if !ok {
		return nil, &format.CorruptError{Kind: format.KindShortRead, Tree: tree, Block: p.Block, Detail: "no such block"}
	}
	if s.dirty[p.Block] {
		n.Seal()
	}
	if err := format.VerifyNode(n, format.Expect{FSID: s.FSID, Block: p.Block, Tree: tree, Gen: p.Gen, Level: level}); err != nil {
		return nil, err
	}
	return n, nil
}

func (s *MemStore) Writable(tree format.TreeID, p Ptr, level int) (format.Node, Ptr, error) {
	n, err := s.Read(tree, p, level)
	if err != nil {
		return nil, Ptr{}, err
	}
	if !s.CoW {
		s.dirty[p.Block] = true // modified in place: re-seal before the next verify
		return n, p, nil
	}
	if s.dirty[p.Block] {
		return n, p, nil
	}
	c, cp, err := s.Alloc(tree, level)
	if err != nil {
		return nil, Ptr{}, err
	}
	copy(c, n)
	c.SetBlock(cp.Block)
	c.SetGen(cp.Gen)
	return c, cp, s.Free(tree, p, level)
}

func (s *MemStore) Alloc(tree format.TreeID, level int) (format.Node, Ptr, error) {
	b := s.next
	s.next++
	n := format.InitNode(make([]byte, format.BlockSize), s.FSID, b, s.Gen, tree, level)
	s.blocks[b] = n
	s.dirty[b] = true
	s.Allocs++
	return n, Ptr{Block: b, Gen: s.Gen}, nil
}

func (s *MemStore) Free(tree format.TreeID, p Ptr, level int) error {
	if _, ok := s.blocks[p.Block]; !ok {
		return fmt.Errorf("memstore: free of unknown block %d", p.Block)
	}
	delete(s.blocks, p.Block)
	delete(s.dirty, p.Block)
	s.Frees++
	return nil
}
