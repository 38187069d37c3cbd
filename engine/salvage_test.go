package engine

import (
	"errors"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
)

// TestReadOrphan: a node read without its parent's pointer is verified
// as far as it can be — its owner, its own block number, a generation no
// newer than the snapshot's — and any level is accepted.
func TestReadOrphan(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	s := e.Pin()
	defer s.Release()
	ri, ok := s.Root(format.TreeRmap)
	if !ok {
		t.Fatal("no rmap tree")
	}
	root := ri.Root.Block
	n, err := s.ReadOrphan(format.TreeRmap, root)
	if err != nil || n.Block() != root || n.Owner() != format.TreeRmap {
		t.Fatalf("the rmap root: %v", err)
	}
	kind := func(err error) format.Kind {
		if ce, ok := format.AsCorrupt(err); ok {
			return ce.Kind
		}
		return ""
	}
	if _, err := s.ReadOrphan(format.TreeInode, root); kind(err) != format.KindWrongOwner {
		t.Errorf("another tree's block: %v", err)
	}
	if _, err := s.ReadOrphan(format.TreeRmap, format.BlockNr(testBlocks+5)); !errors.Is(err, format.ErrCorrupt) {
		t.Errorf("a block beyond the device: %v", err)
	}

	// A copy of the root sealed with a newer generation, in a free block.
	free := format.BlockNr(testBlocks / 2)
	buf := make([]byte, format.BlockSize)
	if err := s.ReadRaw(free, buf); err != nil || slices.ContainsFunc(buf, func(b byte) bool { return b != 0 }) {
		t.Fatalf("block %d is not free: %v", free, err)
	}
	cp := format.Node(slices.Clone(n))
	cp.SetBlock(free)
	cp.SetGen(s.Gen() + 1)
	cp.Seal()
	if _, err := dev.WriteAt(cp, int64(free)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	defer dev.WriteAt(buf, int64(free)*format.BlockSize) // free again
	if _, err := s.ReadOrphan(format.TreeRmap, free); kind(err) != format.KindStale {
		t.Errorf("a block newer than the snapshot: %v", err)
	}
	cp.SetGen(s.Gen())
	cp.Seal()
	if _, err := dev.WriteAt(cp, int64(free)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ReadOrphan(format.TreeRmap, free); err != nil || got.Block() != free {
		t.Errorf("a sound copy: %v", err)
	}
	cp.SetBlock(free + 1)
	cp.Seal()
	if _, err := dev.WriteAt(cp, int64(free)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadOrphan(format.TreeRmap, free); kind(err) != format.KindMisdirected {
		t.Errorf("a block naming another number: %v", err)
	}
}
