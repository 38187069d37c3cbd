package repair

import (
	"context"
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Salvage: the leaves below a damaged interior node.
//
// A rebuild scans the old tree with a walk that skips what it cannot
// read. When the damage is an interior node, the walk loses every leaf
// below it — yet those leaves are usually intact on disk, and the rmap
// (an input every tree rebuild verifies) lists them among the blocks the
// tree owns at the pinned generation. Salvage reads them back, so that
// the items in them are kept exactly instead of being reconstructed
// (guessed inode fields, checksums recomputed from the data and listed
// unverified): a rebuild never costs information that still exists on
// the image.
//
// Why it is safe to trust an orphaned block:
//
//   - Only blocks the rmap lists as the tree's at the pinned generation,
//     and that no pointer the walk followed names, are read: a block a
//     pointer names but that does not verify against it is the damage
//     itself (a stale or misdirected copy), never salvaged. A block
//     listed nowhere (an old copy, a stray write, a forged header in
//     free space) is never looked at. The rmap is an input the rebuilds
//     verify before using it.
//   - Each is verified as a node of that tree (engine Snapshot.ReadOrphan:
//     checksum, filesystem UUID, its own block number, owner, layout and
//     key order, a generation no newer than the pinned one). Only the
//     parent's expectations — level and exact generation — cannot be
//     checked, the parent being the damage.
//   - The walk's copy wins. Every key range a readable leaf of the walk
//     covers (from its first key to its last) is the walk's: a salvaged
//     item inside one is dropped, so a wrong pointer that makes a leaf
//     reachable twice, or a stale leaf, cannot add or replace an item the
//     walk read. Between salvaged leaves that claim one key, the newer
//     generation wins (then the lower block number, to be deterministic).
//
// No recursion: an orphaned interior node is not followed, since every
// block below it that the tree owns is in the rmap's list and is read
// from there, once. So each listed block is read at most once, whatever
// pointers (loops included) the orphaned nodes hold, and the cost is one
// read per block the walk missed. The salvage runs only when the walk
// met damage: with a clean walk, every item was read already.

// Salvaged counts what a rebuild's salvage kept.
type Salvaged struct {
	Items  uint64 // items of orphaned leaves kept
	Leaves uint64 // orphaned leaves they came from
}

// salvagedChanges describes a salvage for the report ("" when nothing was
// salvaged).
func salvagedChanges(s Salvaged) []string {
	if s.Items == 0 {
		return nil
	}
	return []string{fmt.Sprintf("salvaged %d items from %d leaves below the damaged node", s.Items, s.Leaves)}
}

// walkTrace records what a walk of a tree met: the blocks a pointer
// named (readable or not: one that is not is the damage itself, and its
// parent's pointer says it should be something else — a stale or
// misdirected copy is never salvaged), the key range of each readable
// leaf, and whether it met any damage. Its visitor wraps the walk's own.
type walkTrace struct {
	reached map[format.BlockNr]bool
	ranges  []keyRange
	damaged bool
}

// keyRange is a closed range of keys.
type keyRange struct{ lo, hi format.Key }

func newWalkTrace() *walkTrace { return &walkTrace{reached: map[format.BlockNr]bool{}} }

// visitor returns v with Node and Problem wrapped to record the walk.
func (w *walkTrace) visitor(v eb.CheckVisitor) eb.CheckVisitor {
	block, node, problem := v.Block, v.Node, v.Problem
	v.Block = func(p eb.Ptr, level int) {
		w.reached[p.Block] = true
		if block != nil {
			block(p, level)
		}
	}
	v.Node = func(n format.Node, p eb.Ptr) {
		if n.IsLeaf() && n.NrItems() > 0 {
			w.ranges = append(w.ranges, keyRange{n.Key(0), n.Key(n.NrItems() - 1)})
		}
		if node != nil {
			node(n, p)
		}
	}
	v.Problem = func(p eb.Problem) {
		w.damaged = true
		if problem != nil {
			problem(p)
		}
	}
	return v
}

// covered returns a test of whether a key lies in a range a walked leaf
// covers. It sorts and merges the ranges (a damaged tree's leaves may
// overlap or come out of order).
func (w *walkTrace) covered() func(format.Key) bool {
	rs := slices.Clone(w.ranges)
	slices.SortFunc(rs, func(a, b keyRange) int { return a.lo.Compare(b.lo) })
	merged := rs[:0]
	for _, r := range rs {
		if m := len(merged); m > 0 && r.lo.Compare(merged[m-1].hi) <= 0 {
			if r.hi.Compare(merged[m-1].hi) > 0 {
				merged[m-1].hi = r.hi
			}
			continue
		}
		merged = append(merged, r)
	}
	return func(k format.Key) bool {
		// The last range starting at or below k.
		i, _ := slices.BinarySearchFunc(merged, k, func(r keyRange, k format.Key) int {
			if r.lo.Compare(k) <= 0 {
				return -1
			}
			return 1
		})
		return i > 0 && k.Compare(merged[i-1].hi) <= 0
	}
}

// salvage reads the blocks of tree id that the rmap lists (owned) at
// generation s and no pointer the walk w followed named, and calls fn, in key order
// within each leaf, for every item of an orphaned leaf that verifies
// whose key no walked leaf covers and no other salvaged leaf gave; fn
// says whether it kept the item (the caller validates the value). A
// block that does not verify is skipped; an operational error (or fn's)
// ends the salvage.
func salvage(ctx context.Context, s *engine.Snapshot, id format.TreeID, owned []format.BlockNr, w *walkTrace, fn func(k format.Key, v []byte) (bool, error)) (Salvaged, error) {
	var out Salvaged
	if !w.damaged {
		return out, nil
	}
	var leaves []format.Node
	seenBlock := map[format.BlockNr]bool{}
	for i, b := range owned {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return out, err
			}
		}
		if w.reached[b] || seenBlock[b] {
			continue
		}
		seenBlock[b] = true
		n, err := s.ReadOrphan(id, b)
		if err != nil {
			if _, ok := format.AsCorrupt(err); ok {
				continue // the damage itself, or not the tree's
			}
			return out, fmt.Errorf("salvage tree %s block %d: %w", id, b, err)
		}
		if n.IsLeaf() && n.NrItems() > 0 {
			leaves = append(leaves, n)
		}
	}
	if len(leaves) == 0 {
		return out, nil
	}
	slices.SortFunc(leaves, func(a, b format.Node) int {
		if a.Gen() != b.Gen() {
			return -cmpU64(uint64(a.Gen()), uint64(b.Gen()))
		}
		return cmpU64(uint64(a.Block()), uint64(b.Block()))
	})
	walked := w.covered()
	given := map[format.Key]bool{}
	for _, n := range leaves {
		kept := false
		for i := range n.NrItems() {
			k := n.Key(i)
			if walked(k) || given[k] {
				continue
			}
			given[k] = true
			ok, err := fn(k, n.Value(i))
			if err != nil {
				return out, err
			}
			if ok {
				out.Items++
				kept = true
			}
		}
		if kept {
			out.Leaves++
		}
	}
	return out, nil
}

// rmapTreeBlocks returns the blocks the rmap of s lists as tree id's: the
// tree's blocks at s, a subtree whose pointer was lost included.
func rmapTreeBlocks(ctx context.Context, s *engine.Snapshot, id format.TreeID) ([]format.BlockNr, error) {
	var out []format.BlockNr
	err := walkRmap(ctx, s, "the "+id.String()+" tree", func(start format.BlockNr, o format.Owner, _ format.RmapItem) error {
		if !o.IsData() && o.Tree == id {
			out = append(out, start)
		}
		return nil
	})
	return out, err
}
