package btree

import (
	"errors"
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// Problem is one structural defect of a tree, found by Check.
type Problem struct {
	Tree   format.TreeID
	Block  format.BlockNr
	Kind   format.Kind
	Detail string
}

func (p Problem) String() string {
	return fmt.Sprintf("tree %s block %d: %s: %s", p.Tree, p.Block, p.Kind, p.Detail)
}

// CheckVisitor receives what Check sees. Any field may be nil.
type CheckVisitor struct {
	// Node is called for every node that read and verified cleanly.
	Node func(n format.Node, p Ptr)
	// Block is called for every block the tree references, readable or not,
	// with the level its parent implies.
	Block func(p Ptr, level int)
	// Item is called for every leaf item in key order of readable leaves.
	Item func(k format.Key, v []byte)
	// Problem is called for every defect.
	Problem func(Problem)
}

// Check walks the whole tree and reports every defect it can see without
// stopping at the first: unreadable or misplaced blocks (bad checksum, magic,
// owner, generation, level, layout), keys out of order or outside the range
// the parent gives them, children written by a later generation than their
// parent, empty non-root leaves, and an item count that differs from the
// root's. Only operational (non-corruption) errors end the walk early.
func (t *Tree) Check(v CheckVisitor) error {
	c := checker{t: t, v: v}
	c.pf, _ = t.Store.(Prefetcher)
	if err := c.walk(t.Root, t.Level, nil, nil, true); err != nil {
		return err
	}
	if c.complete && c.items != t.Items {
		c.problem(t.Root.Block, format.KindItemCount, "root records %d items, tree holds %d", t.Items, c.items)
	}
	return nil
}

type checker struct {
	t        *Tree
	v        CheckVisitor
	items    uint64
	complete bool
	pf       Prefetcher
	kids     [format.MaxLevel + 1][]Ptr // per level: the children handed to pf
}

// Prefetcher is a Store that can read a node's children ahead, in as few
// device reads as their placement allows (runs of neighbouring blocks in
// one read), before Check walks them one by one. A Read of a child is
// then served from that read, verified as any other. Check calls
// Prefetch with the children of each interior node just before walking
// them; the buffer it fills for a level may be reused at the next
// Prefetch of the same level, when every node read from it is done with.
// Prefetch reports nothing: a child it could not read is read (and its
// error reported) by Read as without it.
type Prefetcher interface {
	Prefetch(tree format.TreeID, kids []Ptr, level int)
}

func (c *checker) problem(b format.BlockNr, kind format.Kind, f string, args ...any) {
	c.complete = false
	if c.v.Problem != nil {
		c.v.Problem(Problem{Tree: c.t.ID, Block: b, Kind: kind, Detail: fmt.Sprintf(f, args...)})
	}
}

// walk checks the subtree at p whose keys must lie in [lo, hi) (nil: open).
func (c *checker) walk(p Ptr, level int, lo, hi *format.Key, root bool) error {
	if root {
		c.complete = true
	}
	if c.v.Block != nil {
		c.v.Block(p, level)
	}
	n, err := c.t.Store.Read(c.t.ID, p, level)
	if err != nil {
		if ce, ok := format.AsCorrupt(err); ok {
			c.problem(p.Block, ce.Kind, "%s", ce.Detail)
			return nil
		}
		if errors.Is(err, format.ErrCorrupt) {
			c.problem(p.Block, format.KindBadLayout, "%v", err)
			return nil
		}
		return fmt.Errorf("check tree %s block %d: %w", c.t.ID, p.Block, err)
	}
	if c.v.Node != nil {
		c.v.Node(n, p)
	}
	cnt := n.NrItems()
	if cnt > 0 {
		first, last := n.Key(0), n.Key(cnt-1)
		if lo != nil && first.Less(*lo) {
			c.problem(p.Block, format.KindKeyOrder, "first key %s below parent's bound %s", first, *lo)
		}
		if hi != nil && !last.Less(*hi) {
			c.problem(p.Block, format.KindKeyOrder, "last key %s not below next parent key %s", last, *hi)
		}
	}
	if n.IsLeaf() {
		if cnt == 0 && !root {
			c.problem(p.Block, format.KindBadLayout, "empty leaf below the root")
		}
		c.items += uint64(cnt)
		if c.v.Item != nil {
			for i := 0; i < cnt; i++ {
				c.v.Item(n.Key(i), n.Value(i))
			}
		}
		return nil
	}
	if c.pf != nil && level > 0 && level <= format.MaxLevel {
		kids := c.kids[level][:0]
		for i := 0; i < cnt; i++ {
			b, g := n.Child(i)
			kids = append(kids, Ptr{b, g})
		}
		c.kids[level] = kids
		c.pf.Prefetch(c.t.ID, kids, level-1)
	}
	for i := 0; i < cnt; i++ {
		b, g := n.Child(i)
		if g > n.Gen() {
			c.problem(p.Block, format.KindStale, "child %d (block %d) has generation %d, newer than the node's %d", i, b, g, n.Gen())
		}
		k := n.Key(i)
		var next *format.Key
		if i+1 < cnt {
			nk := n.Key(i + 1)
			next = &nk
		} else {
			next = hi
		}
		if err := c.walk(Ptr{b, g}, level-1, &k, next, false); err != nil {
			return err
		}
	}
	return nil
}
