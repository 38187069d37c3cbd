package btree

import (
	"errors"
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// Ptr points at a node: its block and the generation that wrote it.
type Ptr struct {
	Block format.BlockNr
	Gen   format.Gen
}

// Store hosts the nodes of B-trees. The image store is copy-on-write: Writable
// on a committed node returns a copy in a new block and releases the old one.
// The xfile store updates in place: Writable returns the node itself.
//
// A node returned by any method stays valid (its bytes stay addressable) until
// the tree operation that obtained it returns, whatever else the operation
// allocates in between.
type Store interface {
	// Read returns the node at p, verified to belong to tree at level. The
	// caller must not modify it.
	Read(tree format.TreeID, p Ptr, level int) (format.Node, error)
	// Writable returns a node the caller may modify holding the content of the
	// node at p, and its pointer, which differs from p if the store copied it.
	Writable(tree format.TreeID, p Ptr, level int) (format.Node, Ptr, error)
	// Alloc returns a new empty node of tree at level.
	Alloc(tree format.TreeID, level int) (format.Node, Ptr, error)
	// Free releases the node at p, which the tree no longer references.
	Free(tree format.TreeID, p Ptr, level int) error
}

// Guard is implemented by a store that must see every change before it
// is made: Insert, Put, Update and Delete call BeforeChange with the key
// first, and fail with its error before they change anything. The store
// may change other keys of the tree meanwhile (the filesystem copies a
// snapshot's inode before its source changes: engine/fs/snapshot.go).
type Guard interface {
	BeforeChange(tree format.TreeID, k format.Key) error
}

func (t *Tree) guard(k format.Key) error {
	if g, ok := t.Store.(Guard); ok {
		return g.BeforeChange(t.ID, k)
	}
	return nil
}

// ErrValueTooLarge is returned for values over format.MaxValueSize.
var ErrValueTooLarge = errors.New("btree: value too large")

// ErrExists and ErrNotFound report a key that is, or is not, in the tree.
var (
	ErrExists   = errors.New("btree: key exists")
	ErrNotFound = errors.New("btree: key not found")
)

// Tree is one B-tree: a root pointer and the store that holds its nodes. Its
// fields are the tree's whole state; callers persist them (a root item). A
// Tree is not safe for concurrent modification; concurrent readers of a
// committed tree each use their own Tree value over a read-only view.
type Tree struct {
	Store Store
	ID    format.TreeID
	Root  Ptr
	Level int
	Items uint64

	path [format.MaxLevel + 2]pathElem
}

type pathElem struct {
	n    format.Node
	p    Ptr
	slot int // child slot taken (interior) or item index (leaf)
}

// Create makes an empty tree (one empty leaf) in s.
func Create(s Store, id format.TreeID) (*Tree, error) {
	_, p, err := s.Alloc(id, 0)
	if err != nil {
		return nil, fmt.Errorf("create tree %s: %w", id, err)
	}
	return &Tree{Store: s, ID: id, Root: p}, nil
}

// Open returns a Tree for an existing root.
func Open(s Store, id format.TreeID, root Ptr, level int, items uint64) *Tree {
	return &Tree{Store: s, ID: id, Root: root, Level: level, Items: items}
}

// Get returns a copy of the value stored under k, appended to dst.
func (t *Tree) Get(k format.Key, dst []byte) ([]byte, bool, error) {
	var out []byte
	found, err := t.Lookup(k, func(v []byte) { out = append(dst, v...) })
	return out, found, err
}

// Lookup calls fn with the value under k, if any. The slice is valid only
// during fn.
func (t *Tree) Lookup(k format.Key, fn func(v []byte)) (bool, error) {
	p, level := t.Root, t.Level
	for {
		n, err := t.Store.Read(t.ID, p, level)
		if err != nil {
			return false, err
		}
		if n.IsLeaf() {
			i, eq := n.Search(k)
			if eq {
				fn(n.Value(i))
			}
			return eq, nil
		}
		b, g := n.Child(n.ChildSlot(k))
		p, level = Ptr{b, g}, level-1
	}
}

// Insert adds k → v; it fails with ErrExists if k is present.
func (t *Tree) Insert(k format.Key, v []byte) error { return t.put(k, v, false) }

// Put adds or replaces k → v.
func (t *Tree) Put(k format.Key, v []byte) error { return t.put(k, v, true) }

func (t *Tree) put(k format.Key, v []byte, replace bool) error {
	if len(v) > format.MaxValueSize {
		return ErrValueTooLarge
	}
	if err := t.guard(k); err != nil {
		return err
	}
	depth, err := t.cowPath(k, true)
	if err != nil {
		return err
	}
	leaf := t.path[depth].n
	i, eq := leaf.Search(k)
	if eq {
		if !replace {
			return ErrExists
		}
		if old := leaf.Value(i); len(old) == len(v) {
			copy(old, v)
			return nil
		}
		leaf.DeleteItem(i)
		t.Items--
	}
	t.path[depth].slot = i
	if leaf.LeafFree() >= format.ItemSize(len(v)) {
		copy(leaf.InsertItem(i, k, len(v)), v)
		t.Items++
		return nil
	}
	if err := t.splitLeafInsert(depth, k, v); err != nil {
		return err
	}
	t.Items++
	return nil
}

// Update calls fn with the value under k in place, in a writable node; fn may
// change the bytes but not the length. It reports ErrNotFound.
func (t *Tree) Update(k format.Key, fn func(v []byte)) error {
	if err := t.guard(k); err != nil {
		return err
	}
	found := false
	if _, err := t.Lookup(k, func([]byte) { found = true }); err != nil {
		return err
	}
	if !found {
		return ErrNotFound
	}
	depth, err := t.cowPath(k, false)
	if err != nil {
		return err
	}
	leaf := t.path[depth].n
	i, eq := leaf.Search(k)
	if !eq {
		return ErrNotFound
	}
	fn(leaf.Value(i))
	return nil
}

// Delete removes k and reports whether it was present.
func (t *Tree) Delete(k format.Key) (bool, error) {
	if err := t.guard(k); err != nil {
		return false, err
	}
	found := false
	if _, err := t.Lookup(k, func([]byte) { found = true }); err != nil || !found {
		return false, err
	}
	depth, err := t.cowPath(k, false)
	if err != nil {
		return false, err
	}
	leaf := t.path[depth].n
	i, eq := leaf.Search(k)
	if !eq {
		return false, nil
	}
	leaf.DeleteItem(i)
	t.Items--
	return true, t.rebalance(depth)
}

// cowPath makes the path from the root to the leaf for k writable and
// records it in t.path; it returns the leaf's depth. For inserts it splits
// full interior nodes on the way down, so a leaf split always finds room in
// its parent, and lowers first keys that k will undercut.
func (t *Tree) cowPath(k format.Key, insert bool) (int, error) {
	n, p, err := t.Store.Writable(t.ID, t.Root, t.Level)
	if err != nil {
		return 0, err
	}
	t.Root = p
	t.path[0] = pathElem{n: n, p: p}
	if insert && !n.IsLeaf() && n.NrItems() >= format.MaxPtrs {
		if err := t.growRoot(); err != nil {
			return 0, err
		}
	}
	depth := len(t.path) - 1
	for d := 0; ; d++ {
		if d >= depth {
			return 0, fmt.Errorf("btree %s: deeper than %d levels", t.ID, format.MaxLevel)
		}
		n := t.path[d].n
		if n.IsLeaf() {
			return d, nil
		}
		if insert && n.NrItems() >= format.MaxPtrs {
			// Only non-root nodes get here: growRoot handled the root.
			if err := t.splitInterior(d, k); err != nil {
				return 0, err
			}
			n = t.path[d].n
		}
		slot := n.ChildSlot(k)
		if insert && slot == 0 && k.Less(n.Key(0)) {
			n.SetKey(0, k)
		}
		b, g := n.Child(slot)
		c, cp, err := t.Store.Writable(t.ID, Ptr{b, g}, n.Level()-1)
		if err != nil {
			return 0, err
		}
		if cp != (Ptr{b, g}) {
			n.SetChild(slot, cp.Block, cp.Gen)
		}
		t.path[d].slot = slot
		t.path[d+1] = pathElem{n: c, p: cp}
	}
}

// growRoot puts a new root above the current one, which becomes its only
// child. t.path[0] holds the old root and shifts down to t.path[1].
func (t *Tree) growRoot() error {
	old := t.path[0]
	if t.Level+1 > format.MaxLevel {
		return fmt.Errorf("btree %s: would exceed %d levels", t.ID, format.MaxLevel)
	}
	n, p, err := t.Store.Alloc(t.ID, t.Level+1)
	if err != nil {
		return err
	}
	n.InsertPtr(0, firstKey(old.n), old.p.Block, old.p.Gen)
	t.Root, t.Level = p, t.Level+1
	copy(t.path[1:], t.path[:len(t.path)-1])
	t.path[0] = pathElem{n: n, p: p, slot: 0}
	return nil
}

func firstKey(n format.Node) format.Key {
	if n.NrItems() == 0 {
		return format.Key{}
	}
	return n.Key(0)
}

// splitInterior splits the full interior node at depth d (d > 0) in two and
// leaves in t.path[d] the half whose range holds k.
func (t *Tree) splitInterior(d int, k format.Key) error {
	parent := t.path[d-1]
	n := t.path[d].n
	r, rp, err := t.Store.Alloc(t.ID, n.Level())
	if err != nil {
		return err
	}
	c := n.NrItems()
	half := c / 2
	for i := half; i < c; i++ {
		b, g := n.Child(i)
		r.InsertPtr(i-half, n.Key(i), b, g)
	}
	n.TruncateItems(half)
	parent.n.InsertPtr(parent.slot+1, r.Key(0), rp.Block, rp.Gen)
	if !k.Less(r.Key(0)) {
		t.path[d-1].slot++
		t.path[d] = pathElem{n: r, p: rp}
	}
	return nil
}

// splitLeafInsert splits the leaf at depth d, which lacks room for k → v at
// index t.path[d].slot, and inserts the item into the proper half.
func (t *Tree) splitLeafInsert(d int, k format.Key, v []byte) error {
	if d == 0 {
		if err := t.growRoot(); err != nil {
			return err
		}
		d = 1
	}
	leaf := t.path[d].n
	pos := t.path[d].slot
	c := leaf.NrItems()
	size := func(j int) int { // virtual item j of the c+1 items
		switch {
		case j < pos:
			return format.ItemSize(len(leaf.Value(j)))
		case j == pos:
			return format.ItemSize(len(v))
		default:
			return format.ItemSize(len(leaf.Value(j - 1)))
		}
	}
	total := 0
	for j := 0; j <= c; j++ {
		total += size(j)
	}
	// Split before virtual item m, choosing the m in [1, c] that best
	// balances the halves.
	m, left, best := 1, 0, -1
	for j := 1; j <= c; j++ {
		left += size(j - 1)
		worst := max(left, total-left)
		if best < 0 || worst < best {
			m, best = j, worst
		}
	}
	if pos == c && total-size(c) <= format.Capacity {
		// Appending past the last item (sequential inserts): keep this
		// leaf full and start the next one, as btrfs does, instead of
		// leaving a trail of half-empty leaves.
		m = c
		best = total - size(c)
	}
	if best > format.Capacity {
		return fmt.Errorf("btree %s: cannot split leaf %d for a %d-byte value", t.ID, t.path[d].p.Block, len(v))
	}
	r, rp, err := t.Store.Alloc(t.ID, 0)
	if err != nil {
		return err
	}
	from := m // first original item that moves right
	if m > pos {
		from = m - 1
	}
	for i := from; i < c; i++ {
		val := leaf.Value(i)
		copy(r.InsertItem(r.NrItems(), leaf.Key(i), len(val)), val)
	}
	leaf.TruncateItems(from)
	if m <= pos {
		copy(r.InsertItem(pos-m, k, len(v)), v)
	} else {
		copy(leaf.InsertItem(pos, k, len(v)), v)
	}
	parent := t.path[d-1]
	if m > pos && pos == 0 && k.Less(parent.n.Key(parent.slot)) {
		// k is the left leaf's new first key. cowPath lowers the
		// parent's key for inserts below it, but a root that was a leaf
		// got its parent (growRoot) only now, keyed by its old first key.
		parent.n.SetKey(parent.slot, k)
	}
	parent.n.InsertPtr(parent.slot+1, r.Key(0), rp.Block, rp.Gen)
	return nil
}

func underfull(n format.Node) bool {
	if n.IsLeaf() {
		return n.LeafUsed() < format.Capacity/4
	}
	return n.NrItems() < format.MaxPtrs/4
}

// rebalance fixes underfull nodes from the leaf at depth d upwards by merging
// with or borrowing from a sibling, then collapses a root with one child.
func (t *Tree) rebalance(d int) error {
	for ; d > 0; d-- {
		n := t.path[d].n
		if !underfull(n) {
			break
		}
		parent := t.path[d-1].n
		slot := t.path[d-1].slot
		if parent.NrItems() < 2 {
			continue
		}
		ls, rs := slot-1, slot
		if slot == 0 {
			ls, rs = 0, 1
		}
		l, err := t.writableChild(parent, ls)
		if err != nil {
			return err
		}
		r, err := t.writableChild(parent, rs)
		if err != nil {
			return err
		}
		if fitsTogether(l, r) {
			if err := t.mergeInto(l, r); err != nil {
				return err
			}
			rb, rg := parent.Child(rs)
			parent.DeletePtr(rs)
			if err := t.Store.Free(t.ID, Ptr{rb, rg}, r.Level()); err != nil {
				return err
			}
		} else {
			redistribute(l, r)
			parent.SetKey(rs, r.Key(0))
		}
	}
	for t.Level > 0 {
		root, err := t.Store.Read(t.ID, t.Root, t.Level)
		if err != nil {
			return err
		}
		if root.NrItems() != 1 {
			break
		}
		b, g := root.Child(0)
		if err := t.Store.Free(t.ID, t.Root, t.Level); err != nil {
			return err
		}
		t.Root, t.Level = Ptr{b, g}, t.Level-1
	}
	return nil
}

func (t *Tree) writableChild(parent format.Node, slot int) (format.Node, error) {
	b, g := parent.Child(slot)
	c, cp, err := t.Store.Writable(t.ID, Ptr{b, g}, parent.Level()-1)
	if err != nil {
		return nil, err
	}
	if cp != (Ptr{b, g}) {
		parent.SetChild(slot, cp.Block, cp.Gen)
	}
	return c, nil
}

func fitsTogether(l, r format.Node) bool {
	if l.IsLeaf() {
		return l.LeafUsed()+r.LeafUsed() <= format.Capacity
	}
	return l.NrItems()+r.NrItems() <= format.MaxPtrs
}

// mergeInto appends all of r's items to l.
func (t *Tree) mergeInto(l, r format.Node) error {
	c := r.NrItems()
	for i := 0; i < c; i++ {
		appendItem(l, r, i)
	}
	return nil
}

func appendItem(dst, src format.Node, i int) { insertItemFrom(dst, dst.NrItems(), src, i) }

func insertItemFrom(dst format.Node, at int, src format.Node, i int) {
	if src.IsLeaf() {
		v := src.Value(i)
		copy(dst.InsertItem(at, src.Key(i), len(v)), v)
		return
	}
	b, g := src.Child(i)
	dst.InsertPtr(at, src.Key(i), b, g)
}

func deleteItem(n format.Node, i int) {
	if n.IsLeaf() {
		n.DeleteItem(i)
	} else {
		n.DeletePtr(i)
	}
}

func weight(n format.Node) int {
	if n.IsLeaf() {
		return n.LeafUsed()
	}
	return n.NrItems() * format.PtrSize
}

func itemWeight(n format.Node, i int) int {
	if n.IsLeaf() {
		return format.ItemSize(len(n.Value(i)))
	}
	return format.PtrSize
}

// redistribute moves items between siblings l and r (which together do not
// fit in one node) until they are about equally full.
func redistribute(l, r format.Node) {
	for weight(l) > weight(r) {
		last := l.NrItems() - 1
		w := itemWeight(l, last)
		if weight(r)+w >= weight(l) || l.NrItems() <= 1 {
			break
		}
		insertItemFrom(r, 0, l, last)
		deleteItem(l, last)
	}
	for weight(r) > weight(l) {
		w := itemWeight(r, 0)
		if weight(l)+w >= weight(r) || r.NrItems() <= 1 {
			break
		}
		appendItem(l, r, 0)
		deleteItem(r, 0)
	}
}
