package repair

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Incremental data scrubs: a scope limits the data scrub to some blocks
// of some files. The metadata check is always whole: it is the cheap part,
// and its cross-references need every record of one generation.
//
//   - Since: the blocks mapped by the file extent items in extent-tree
//     leaves written after a generation. Every block carries the
//     generation that wrote it, and a leaf is rewritten (copy on write)
//     whenever an item in it changes, so every extent mapped since is in
//     such a leaf; the items beside it in the leaf come along (a superset,
//     never a subset).
//   - Blocks: the blocks a previous run found bad (zpool scrub -e).

// dataScope is the part of the file data a scrub reads (nil: all of it).
type dataScope struct {
	files  map[uint64][]blockRange // by inode, sorted
	blocks uint64                  // how many blocks in all
	what   string                  // for the report
}

type blockRange struct{ first, n uint64 }

// has says whether file block fb of ino is in the scope.
func (s *dataScope) has(ino, fb uint64) bool {
	rs := s.files[ino]
	i, _ := slices.BinarySearchFunc(rs, fb, func(r blockRange, fb uint64) int {
		switch {
		case r.first+r.n <= fb:
			return -1
		case r.first > fb:
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].first <= fb && fb < rs[i].first+rs[i].n
}

func (s *dataScope) add(ino, first, n uint64) {
	s.files[ino] = append(s.files[ino], blockRange{first, n})
	s.blocks += n
}

// sortRanges sorts each file's ranges (they do not overlap: items of one
// file never do, and bad blocks are distinct).
func (s *dataScope) sortRanges() {
	for _, rs := range s.files {
		slices.SortFunc(rs, func(a, b blockRange) int { return cmp.Compare(a.first, b.first) })
	}
}

// scopeSince is the scope of the extents mapped since generation gen, as
// generation s records them.
func scopeSince(s *engine.Snapshot, gen format.Gen) (*dataScope, error) {
	sc := &dataScope{files: map[uint64][]blockRange{}, what: fmt.Sprintf("data written after generation %d", gen)}
	t, ok := s.ScanTree(format.TreeExtent)
	if !ok {
		return nil, fmt.Errorf("no file extent tree: %w", format.ErrCorrupt)
	}
	var derr error
	err := t.Check(eb.CheckVisitor{
		Node: func(n format.Node, _ eb.Ptr) {
			if !n.IsLeaf() || n.Gen() <= gen || derr != nil {
				return
			}
			for i := 0; i < n.NrItems(); i++ {
				k := n.Key(i)
				if k.Type != format.TypeFileExtent {
					continue
				}
				fe, err := format.DecodeFileExtent(n.Value(i))
				if err != nil {
					derr = err
					return
				}
				sc.add(k.Obj, k.Off, fe.Count)
			}
		},
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, err
	}
	sc.sortRanges()
	return sc, nil
}

// scopeBlocks is the scope of the given bad blocks.
func scopeBlocks(bad []engine.BadBlock) *dataScope {
	sc := &dataScope{files: map[uint64][]blockRange{}, what: fmt.Sprintf("the %d blocks the last run found bad", len(bad))}
	seen := map[[2]uint64]bool{}
	for _, b := range bad {
		k := [2]uint64{b.Ino, b.Offset / format.BlockSize}
		if !seen[k] {
			seen[k] = true
			sc.add(b.Ino, k[1], 1)
		}
	}
	sc.sortRanges()
	return sc
}
