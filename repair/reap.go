package repair

import (
	"fmt"
	"slices"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Reaping the blocks a rebuild leaves unused (XFS's reap.c): the old
// tree's, once the swap has committed, and the reserved blocks the new
// tree did not use.
//
// Every such block is covered by a logged operation "free those of these
// blocks no tree reaches", logged before the swap (the reservation's,
// with the reservation; the old tree's, listed in ordinary commits before
// the exclusive section — the live tree's blocks then, which the
// operation leaves alone — and the few it gained since, in the exclusive
// section). A crash at any point therefore leaves them to the mount's
// logged_ops pass, which frees what no tree reaches.
//
// The reaping frees them in batches of reapBatch, one commit each (its
// updates of updateChunk, writers running between them), paced but for
// the last; and the set of operations shrinks as it goes: an operation is
// dropped in the update that frees the last of its blocks (or later), so
// a crash mid-reap leaves the mount only the operations whose blocks are
// not all freed yet, and the last commit leaves none. Dropping earlier is
// never unsafe: an operation's blocks are then freed, or in use by the
// new tree, in the same or an earlier commit.

// reapGroup is blocks to free and the logged operation that covers them
// (0: none), dropped once they are all freed.
type reapGroup struct {
	op     uint64
	blocks []format.BlockNr
}

// reap frees the groups' blocks, metadata blocks of tree id no tree
// reaches, group after group, in paced batches of commits, dropping each
// group's operation with its last block, and returns how many it freed.
func reap(e *engine.Engine, id format.TreeID, groups []reapGroup) (uint64, error) {
	return reapIn(e, id, groups, reapBatch)
}

// reapIn is reap in batches of batch blocks.
func reapIn(e *engine.Engine, id format.TreeID, groups []reapGroup, batch int) (uint64, error) {
	var all []format.BlockNr
	ends := make([]int, len(groups)) // ends[g]: where group g's blocks end in all
	for g, gr := range groups {
		all = append(all, gr.blocks...)
		ends[g] = len(all)
	}
	next := 0 // the first group whose operation is still logged
	for i := 0; ; i += batch {
		part := all[min(i, len(all)):min(len(all), i+batch)]
		last := i+batch >= len(all)
		// The last batch is committed without the rest that spaces the
		// batches, since nothing follows it.
		err := commitBatch(e, len(part), !last, func(tx *engine.Tx, from, to int) error {
			tx.FreeMeta(id, part[from:to])
			for ; next < len(groups) && ends[next] <= i+to; next++ {
				if op := groups[next].op; op != 0 {
					if err := tx.DropLoggedOp(op); err != nil {
						return fmt.Errorf("drop a logged operation of the reaping: %w", err)
					}
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("reap the %s tree's blocks: %w", id, err)
		}
		if last {
			break
		}
	}
	return uint64(len(all)), nil
}

// oldTree tracks the blocks of the tree a rebuild replaces, kept current
// from the live updates of the rmap (records of owner id), and the logged
// operations that will free them once the swap has committed.
//
// The rebuild lists them (logListed) before the exclusive section; from
// then on the blocks the tree gains are tracked apart, and the exclusive
// section logs those (logGained), so its work scales with the updates,
// not with the old tree. Not safe for concurrent use: the rebuild calls
// add and remove from its apply function, which the shadow serializes.
type oldTree struct {
	id     format.TreeID
	blocks map[format.BlockNr]bool
	gained map[format.BlockNr]bool // added since logListed (nil before)
	listed []format.BlockNr        // sorted
	late   []format.BlockNr        // sorted: gained and not listed
	ops    []oldOp
}

// oldOp is a logged operation covering a stretch of listed or late.
type oldOp struct {
	id     uint64
	blocks []format.BlockNr
}

func newOldTree(id format.TreeID, blocks []format.BlockNr) *oldTree {
	o := &oldTree{id: id, blocks: make(map[format.BlockNr]bool, len(blocks))}
	for _, b := range blocks {
		o.blocks[b] = true
	}
	return o
}

func (o *oldTree) add(b format.BlockNr) {
	o.blocks[b] = true
	if o.gained != nil {
		o.gained[b] = true
	}
}

func (o *oldTree) remove(b format.BlockNr) {
	delete(o.blocks, b)
	if o.gained != nil {
		delete(o.gained, b)
	}
}

// list returns the tracked blocks that are not the new tree's, sorted.
func (o *oldTree) list(newTree func(format.BlockNr) bool) []format.BlockNr {
	var out []format.BlockNr
	for b := range o.blocks {
		if !newTree(b) {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// logListed logs the old tree's blocks as they stand (less the new
// tree's: a tree recording its own blocks sees the reservation's too),
// in ordinary paced commits, one operation of at most opChunk blocks
// each, and starts tracking the blocks gained from here on. The shadow
// must be frozen: nothing else changes the set meanwhile.
func (o *oldTree) logListed(e *engine.Engine, newTree func(format.BlockNr) bool) error {
	o.listed = o.list(newTree)
	const opChunk = 64 * engine.LoggedOpPart
	for i := 0; i < len(o.listed); i += opChunk {
		part := o.listed[i:min(len(o.listed), i+opChunk)]
		err := commitPaced(e, func(tx *engine.Tx) error {
			op, err := tx.LogFreeUnreachable(o.id, part)
			o.ops = append(o.ops, oldOp{id: op, blocks: part})
			return err
		})
		if err != nil {
			return fmt.Errorf("log the reaping of the old %s tree: %w", o.id, err)
		}
	}
	o.gained = map[format.BlockNr]bool{}
	return nil
}

// logGained logs, in the exclusive section, the blocks the old tree
// gained since logListed and did not have then.
func (o *oldTree) logGained(x *engine.Exclusive, newTree func(format.BlockNr) bool) error {
	for b := range o.gained {
		if !inSorted(o.listed, b) && !newTree(b) {
			o.late = append(o.late, b)
		}
	}
	slices.Sort(o.late)
	if len(o.late) == 0 {
		return nil
	}
	op, err := x.LogFreeUnreachable(o.id, o.late)
	if err != nil {
		return err
	}
	o.ops = append(o.ops, oldOp{id: op, blocks: o.late})
	return nil
}

// opIDs returns the ids of the operations logged so far.
func (o *oldTree) opIDs() []uint64 {
	out := make([]uint64, len(o.ops))
	for i, op := range o.ops {
		out[i] = op.id
	}
	return out
}

// reapGroups returns the old tree's blocks, after the swap (nothing
// changes the set any more), grouped by the operations that cover them,
// and how many there are. Blocks no operation covers (none, when every
// change reached the set through the shadow) come last, in a group of
// their own.
func (o *oldTree) reapGroups(newTree func(format.BlockNr) bool) ([]reapGroup, uint64) {
	keep := func(b format.BlockNr) bool { return o.blocks[b] && !newTree(b) }
	var out []reapGroup
	var n uint64
	for _, op := range o.ops {
		g := reapGroup{op: op.id}
		for _, b := range op.blocks {
			if keep(b) {
				g.blocks = append(g.blocks, b)
			}
		}
		n += uint64(len(g.blocks))
		out = append(out, g)
	}
	var rest []format.BlockNr
	for b := range o.blocks {
		if keep(b) && !inSorted(o.listed, b) && !inSorted(o.late, b) {
			rest = append(rest, b)
		}
	}
	if len(rest) > 0 {
		slices.Sort(rest)
		out = append(out, reapGroup{blocks: rest})
		n += uint64(len(rest))
	}
	return out, n
}
