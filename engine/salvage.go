package engine

import (
	"fmt"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Reading a block no readable parent points to.
//
// A walk verifies each node against its parent's pointer: the generation
// and level the parent expects. When the parent itself is unreadable its
// children are orphans — intact on disk, listed by the rmap as the tree's,
// but with no pointer to say what they should be. ReadOrphan verifies
// what can still be verified without one: magic, checksum, filesystem
// UUID, the block's own number, the owning tree, the layout and key order
// of the items, and a generation no newer than the snapshot's (a block a
// snapshot's tree owns was written at or before that generation, and is
// not reused while the snapshot is pinned). Whether the block belongs
// where the caller wants to put its items (its key range, whether another
// block holds the same keys) is the caller's to decide.

// ReadOrphan reads block b as a node of tree id at generation s without a
// parent pointer: it is verified as every node is, except that any level
// and any generation up to s's are accepted. A block that fails is a
// corruption error (format.AsCorrupt); the node returned is shared and
// must not be modified.
func (s *Snapshot) ReadOrphan(id format.TreeID, b format.BlockNr) (format.Node, error) {
	n, err := s.e.readBlockCached(id, eb.Ptr{Block: b}, -1, false, nil)
	if err != nil {
		return nil, err
	}
	if n.Gen() > s.Gen() {
		return nil, &format.CorruptError{Kind: format.KindStale, Tree: id, Block: b,
			Detail: fmt.Sprintf("generation %d, newer than the pinned generation %d", n.Gen(), s.Gen())}
	}
	return n, nil
}
