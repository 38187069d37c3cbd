package btree

import (
	"github.com/scrubd/scrubd/engine/format"
)

type frame struct {
	n format.Node
	i int
}

// Ascend calls fn for every item with key >= from in increasing key order,
// until fn returns false. The value slice is valid only during fn, and fn
// must not modify the tree.
//
// Over a Store that is a Prefetcher, Ascend hands it the children of each
// interior node it goes down into (those from the one it walks first on),
// as Check does: the walk then reads neighbouring nodes in one read.
func (t *Tree) Ascend(from format.Key, fn func(k format.Key, v []byte) bool) error {
	var stack [format.MaxLevel + 1]frame
	pf, _ := t.Store.(Prefetcher)
	var kids []Ptr
	prefetch := func(n format.Node, from int) {
		lv := n.Level()
		if pf == nil || lv < 1 || lv > format.MaxLevel {
			return
		}
		kids = kids[:0]
		for i := from; i < n.NrItems(); i++ {
			b, g := n.Child(i)
			kids = append(kids, Ptr{b, g})
		}
		pf.Prefetch(t.ID, kids, lv-1)
	}
	d := 0
	p, level := t.Root, t.Level
	for {
		n, err := t.Store.Read(t.ID, p, level)
		if err != nil {
			return err
		}
		if n.IsLeaf() {
			i, _ := n.Search(from)
			stack[d] = frame{n, i}
			break
		}
		slot := n.ChildSlot(from)
		stack[d] = frame{n, slot}
		prefetch(n, slot)
		b, g := n.Child(slot)
		p, level, d = Ptr{b, g}, level-1, d+1
	}
	for {
		f := &stack[d]
		if f.n.IsLeaf() {
			for ; f.i < f.n.NrItems(); f.i++ {
				if !fn(f.n.Key(f.i), f.n.Value(f.i)) {
					return nil
				}
			}
		}
		// Climb to the first ancestor with a next child, then go down its
		// leftmost path.
		for {
			if d == 0 {
				return nil
			}
			d--
			stack[d].i++
			if stack[d].i < stack[d].n.NrItems() {
				break
			}
		}
		for !stack[d].n.IsLeaf() {
			b, g := stack[d].n.Child(stack[d].i)
			n, err := t.Store.Read(t.ID, Ptr{b, g}, stack[d].n.Level()-1)
			if err != nil {
				return err
			}
			d++
			stack[d] = frame{n, 0}
			if !n.IsLeaf() {
				prefetch(n, 0)
			}
		}
	}
}

// Descend calls fn for every item with key <= from in decreasing key order,
// until fn returns false. The same rules as for Ascend apply.
func (t *Tree) Descend(from format.Key, fn func(k format.Key, v []byte) bool) error {
	var stack [format.MaxLevel + 1]frame
	d := 0
	p, level := t.Root, t.Level
	for {
		n, err := t.Store.Read(t.ID, p, level)
		if err != nil {
			return err
		}
		if n.IsLeaf() {
			i, eq := n.Search(from)
			if !eq {
				i--
			}
			stack[d] = frame{n, i}
			break
		}
		slot := n.ChildSlot(from)
		stack[d] = frame{n, slot}
		b, g := n.Child(slot)
		p, level, d = Ptr{b, g}, level-1, d+1
	}
	for {
		f := &stack[d]
		if f.n.IsLeaf() {
			for ; f.i >= 0; f.i-- {
				if !fn(f.n.Key(f.i), f.n.Value(f.i)) {
					return nil
				}
			}
		}
		for {
			if d == 0 {
				return nil
			}
			d--
			stack[d].i--
			if stack[d].i >= 0 {
				break
			}
		}
		for !stack[d].n.IsLeaf() {
			b, g := stack[d].n.Child(stack[d].i)
			n, err := t.Store.Read(t.ID, Ptr{b, g}, stack[d].n.Level()-1)
			if err != nil {
				return err
			}
			d++
			last := n.NrItems() - 1
			stack[d] = frame{n, last}
		}
	}
}

// First returns the smallest item with key >= from, copied.
func (t *Tree) First(from format.Key) (format.Key, []byte, bool, error) {
	var k format.Key
	var v []byte
	found := false
	err := t.Ascend(from, func(kk format.Key, vv []byte) bool {
		k, v, found = kk, append([]byte(nil), vv...), true
		return false
	})
	return k, v, found, err
}

// Last returns the largest item with key <= from, copied.
func (t *Tree) Last(from format.Key) (format.Key, []byte, bool, error) {
	var k format.Key
	var v []byte
	found := false
	err := t.Descend(from, func(kk format.Key, vv []byte) bool {
		k, v, found = kk, append([]byte(nil), vv...), true
		return false
	})
	return k, v, found, err
}

// Blocks calls fn with the pointer and level of every block of the tree,
// parents before their children, reading only interior nodes (a leaf's
// address is in its parent). It stops early when fn returns false. A node
// that cannot be read ends the walk with its error.
func (t *Tree) Blocks(fn func(p Ptr, level int) bool) error {
	if !fn(t.Root, t.Level) {
		return nil
	}
	_, err := t.blocksBelow(t.Root, t.Level, fn)
	return err
}

func (t *Tree) blocksBelow(p Ptr, level int, fn func(p Ptr, level int) bool) (bool, error) {
	if level == 0 {
		return true, nil
	}
	n, err := t.Store.Read(t.ID, p, level)
	if err != nil {
		return false, err
	}
	// Copy the children out: the store may recycle n's buffer below.
	kids := make([]Ptr, n.NrItems())
	for i := range kids {
		b, g := n.Child(i)
		kids[i] = Ptr{Block: b, Gen: g}
	}
	for _, c := range kids {
		if !fn(c, level-1) {
			return false, nil
		}
	}
	if level == 1 {
		return true, nil
	}
	for _, c := range kids {
		if ok, err := t.blocksBelow(c, level-1, fn); !ok || err != nil {
			return ok, err
		}
	}
	return true, nil
}
