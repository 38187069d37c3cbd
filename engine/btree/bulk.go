package btree

// Bulk loading: building a tree bottom-up from sorted records
//
// Online repair collects the records of a damaged tree (in an xfile), then
// writes a whole new tree at once, as XFS's btree bulk loader does. Inserting
// the records one by one would work, but leaves nodes half full, touches
// every node many times and cannot say up front how many blocks it needs.
// On the image the new tree's blocks must be reserved, and must have their
// allocation and rmap records, before the tree is written. So loading has
// two phases:
//
//  1. Plan (PlanBulk, or PlanBulkFixed for fixed-size values, which needs
//     only the record count) computes the exact shape of the tree: the
//     number of nodes on every level, and so in total (BulkPlan.Blocks).
//  2. The caller reserves exactly that many blocks, then Build streams the
//     records again and writes them into nodes it obtains from the caller's
//     alloc function, one call per node, exactly Blocks calls. Build fails
//     if the stream does not match the plan (count, value sizes, key order),
//     and never asks for a block the plan did not count.
//
// A tree whose own blocks have records in it (rmap, allocation, free space)
// changes its record count by reserving: plan, reserve, add the records of
// the reserved blocks, and plan again until the block count stops growing;
// then give back the reservations the final plan does not use. With
// PlanBulkFixed a plan costs O(levels), so the loop is free.
//
// # Shape
//
// Build writes all levels in one pass, keeping one open node per level: a
// leaf is filled with records; when it is complete, a pointer to it (its
// first key, its block and generation) is appended to the open node one
// level up, which is complete after its planned number of pointers, and so
// on up to the root. Memory is O(levels); the records are read once.
//
// Node sizes follow the fill factor (0 < fill <= 1, of a node's capacity),
// with one constraint the tree relies on: no node but the root may be
// "underfull" (see underfull in btree.go: a leaf using under a quarter of
// its bytes, an interior node with under a quarter of the pointers), because
// Delete repairs only the nodes it empties below that bound, one level at a
// time. So a fill under about a quarter is raised to what keeps nodes above
// it.
//
//   - Interior levels and leaves of fixed-size records are planned by count,
//     as XFS does: n items on a level go into k = ceil(n/target) nodes, each
//     getting n/k or n/k+1, so the last node is never left nearly empty. If
//     n/k would be underfull, k shrinks to n/min, which still fits: min is a
//     quarter of the capacity.
//   - Leaves of variable-size records are planned by bytes: a leaf is closed
//     before the record that would take it past fill*Capacity, but never
//     before it holds a quarter (so every closed leaf is healthy, and none
//     overflows: under a quarter plus one largest item fits). Only the last
//     leaf can end underfull; then the last two leaves are re-cut: merged if
//     they fit in one, else split where their bytes balance (both halves then
//     hold at least (Capacity-maxItem)/2, over a quarter). The plan records
//     where the re-cut starts and where it splits, so Build reproduces the
//     same cuts without looking ahead.
//
// # Why the result passes Check
//
// Records arrive in strictly increasing key order (Build verifies), and fill
// leaves left to right, so leaves are ordered and the keys within each node
// increase. The pointer to a child carries the child's first key: it is <=
// every key of the child, and, since the next child starts with a larger
// key, > every key of the previous child, which is exactly the parent-range
// rule. Every node at level l is allocated at level l, and the single node of
// the top level is the root, so levels are consistent; no node but an empty
// tree's root leaf is empty; and the root records the number of records
// written.

import (
	"errors"
	"fmt"
	"iter"
	"math"

	"github.com/scrubd/scrubd/engine/format"
)

// ErrPlanMismatch is returned by Build when the records or the nodes it is
// given differ from what the plan was computed for.
var ErrPlanMismatch = errors.New("btree: bulk load does not match its plan")

// ErrUnsorted is returned by PlanBulk and Build for records whose keys are
// not strictly increasing.
var ErrUnsorted = errors.New("btree: bulk load records not in increasing key order")

// Minimum healthy node sizes: anything below is underfull (see underfull).
const (
	minLeafBytes = format.Capacity / 4
	minPtrs      = format.MaxPtrs / 4
)

// BulkAlloc returns a new empty node at level for the tree being loaded,
// formatted as Store.Alloc formats it (format.InitNode with the tree's
// owner and the level), and its pointer. The node must stay valid and
// writable until Build returns.
type BulkAlloc func(level int) (format.Node, Ptr, error)

// BulkPlan is the exact shape of a bulk-loaded tree. Make one with PlanBulk
// or PlanBulkFixed.
type BulkPlan struct {
	Records    uint64   // records the tree holds
	ValueBytes uint64   // total bytes of their values
	Fill       float64  // the fill factor asked for
	Levels     []uint64 // Levels[l] is the number of nodes at level l; the top level has one, the root
	Blocks     uint64   // the sum of Levels: the nodes Build allocates

	valueSize  int      // fixed value size, or -1: leaves are cut by bytes
	leafTarget int      // variable-size leaves: bytes to fill a leaf to
	tailStart  uint64   // variable-size leaves: first record of the re-cut last two leaves, or noTail
	tailSplit  uint64   // ... and the first record of the last leaf (== Records: merged into one)
	shapes     []uint64 // shapes[l]: items on level l, distributed evenly over Levels[l] nodes
}

const noTail = math.MaxUint64

// Level returns the level of the root (0: the root is a leaf).
func (p *BulkPlan) Level() int { return len(p.Levels) - 1 }

func (p *BulkPlan) String() string {
	return fmt.Sprintf("bulk plan: %d records (%d value bytes) at fill %.2f: %d blocks, levels %v", p.Records, p.ValueBytes, p.Fill, p.Blocks, p.Levels)
}

func checkFill(fill float64) error {
	if !(fill > 0 && fill <= 1) {
		return fmt.Errorf("btree: bulk load fill %v not in (0, 1]", fill)
	}
	return nil
}

// PlanBulkFixed plans a tree of n records whose values are all valueSize
// bytes long, at the given fill factor (0 < fill <= 1). It does not need
// the records themselves. Records with shorter values fit the plan too
// (their leaves are then less full than fill): it is exact for fixed sizes
// and an upper bound for values of at most valueSize bytes.
func PlanBulkFixed(n uint64, valueSize int, fill float64) (*BulkPlan, error) {
	if err := checkFill(fill); err != nil {
		return nil, err
	}
	if valueSize < 0 || valueSize > format.MaxValueSize {
		return nil, fmt.Errorf("btree: bulk load value size %d: %w", valueSize, ErrValueTooLarge)
	}
	p := &BulkPlan{Records: n, ValueBytes: n * uint64(valueSize), Fill: fill, valueSize: valueSize, tailStart: noTail}
	item := format.ItemSize(valueSize)
	capItems := format.Capacity / item
	leaves := evenNodes(n, target(fill, capItems), ceilDiv(minLeafBytes, item), uint64(capItems))
	return p, p.addLevels(leaves)
}

// PlanBulk plans a tree of the records recs yields, at the given fill factor
// (0 < fill <= 1). It reads the stream once; Build reads it again and must
// see the same records.
func PlanBulk(recs iter.Seq2[format.Key, []byte], fill float64) (*BulkPlan, error) {
	if err := checkFill(fill); err != nil {
		return nil, err
	}
	p := &BulkPlan{Fill: fill, valueSize: -1, tailStart: noTail}
	p.leafTarget = max(1, int(fill*format.Capacity))
	var (
		cur, prev           []int // item sizes of the open and the previous leaf
		curStart, prevStart uint64
		used, prevUsed      int
		leaves              uint64
		last                format.Key
		n                   uint64
	)
	for k, v := range recs {
		if n > 0 && !last.Less(k) {
			return nil, fmt.Errorf("record %d: key %s after %s: %w", n, k, last, ErrUnsorted)
		}
		if len(v) > format.MaxValueSize {
			return nil, fmt.Errorf("record %d: %d-byte value: %w", n, len(v), ErrValueTooLarge)
		}
		last = k
		s := format.ItemSize(len(v))
		if p.closesBefore(used, s) {
			prev, cur = cur, prev[:0]
			prevStart, prevUsed = curStart, used
			curStart, used = n, 0
			leaves++
		}
		cur = append(cur, s)
		used += s
		n++
		p.ValueBytes += uint64(len(v))
	}
	p.Records = n
	leaves++ // the open leaf, or the empty root
	if leaves >= 2 && used < minLeafBytes {
		// Re-cut the last two leaves (see the top of the file).
		p.tailStart = prevStart
		both := prevUsed + used
		if both <= format.Capacity {
			p.tailSplit = n
			leaves--
		} else {
			sizes := append(prev, cur...)
			best, m, left := math.MaxInt, 0, 0
			for j := 1; j < len(sizes); j++ {
				left += sizes[j-1]
				if w := max(left, both-left); w < best {
					best, m = w, j
				}
			}
			if best > format.Capacity || both-best < minLeafBytes {
				panic(fmt.Sprintf("btree: bulk plan cannot re-cut %d + %d bytes", prevUsed, used))
			}
			p.tailSplit = prevStart + uint64(m)
		}
	}
	return p, p.addLevels(leaves)
}

// closesBefore reports whether a variable-size leaf holding used bytes is
// closed before an item of size s.
func (p *BulkPlan) closesBefore(used, s int) bool {
	return used >= minLeafBytes && used+s > p.leafTarget
}

// addLevels records the leaf count and plans the interior levels above it.
func (p *BulkPlan) addLevels(leaves uint64) error {
	p.Levels = []uint64{leaves}
	p.shapes = []uint64{p.Records}
	ptrTarget := max(2, target(p.Fill, format.MaxPtrs))
	for n := leaves; n > 1; {
		if len(p.Levels) > format.MaxLevel {
			return fmt.Errorf("btree: bulk load of %d records needs more than %d levels", p.Records, format.MaxLevel)
		}
		k := evenNodes(n, ptrTarget, minPtrs, format.MaxPtrs)
		p.Levels = append(p.Levels, k)
		p.shapes = append(p.shapes, n)
		n = k
	}
	p.Blocks = 0
	for _, c := range p.Levels {
		p.Blocks += c
	}
	return nil
}

// target is the number of items fill makes of a node holding capacity.
func target(fill float64, capacity int) int { return max(1, int(fill*float64(capacity))) }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// evenNodes returns how many nodes n items take with about target items per
// node, each node getting n/k or n/k+1 items, no node (if there are several)
// fewer than min, and none more than capacity.
func evenNodes(n uint64, target, min int, capacity uint64) uint64 {
	if n == 0 {
		return 1
	}
	k := (n + uint64(target) - 1) / uint64(target)
	if k > 1 && n/k < uint64(min) {
		k = max(1, n/uint64(min))
	}
	if need := (n + capacity - 1) / capacity; k < need {
		// Cannot happen: min is at most a quarter of capacity.
		panic(fmt.Sprintf("btree: bulk plan puts %d items in %d nodes of %d", n, k, capacity))
	}
	return k
}

// share returns how many items node i of level l gets: the items spread
// evenly, the first ones taking the remainder.
func (p *BulkPlan) share(l int, i uint64) int {
	n, k := p.shapes[l], p.Levels[l]
	s := n / k
	if i < n%k {
		s++
	}
	return int(s)
}

// bulkLevel is the open node of one level during Build.
type bulkLevel struct {
	n    format.Node
	p    Ptr
	want int    // items this node gets (count-planned levels)
	done uint64 // nodes of this level completed
}

// Build writes the tree planned by p for the records recs yields, which
// must be the records the plan was made from, into nodes obtained from
// alloc (s.Alloc for tree if alloc is nil), and returns it as a Tree on s.
// It calls alloc exactly p.Blocks times, and returns an error wrapping
// ErrPlanMismatch instead of exceeding the plan. On error, the nodes already
// allocated are the caller's to free.
func (p *BulkPlan) Build(s Store, tree format.TreeID, recs iter.Seq2[format.Key, []byte], alloc BulkAlloc) (*Tree, error) {
	if alloc == nil {
		alloc = func(level int) (format.Node, Ptr, error) { return s.Alloc(tree, level) }
	}
	b := bulkBuilder{plan: p, tree: tree, alloc: alloc, lv: make([]bulkLevel, len(p.Levels))}
	var (
		last   format.Key
		n      uint64
		used   int // bytes in the open leaf
		vbytes uint64
	)
	for k, v := range recs {
		if n >= p.Records {
			return nil, b.errf("more than the planned %d records: %w", p.Records, ErrPlanMismatch)
		}
		if n > 0 && !last.Less(k) {
			return nil, b.errf("record %d: key %s after %s: %w", n, k, last, ErrUnsorted)
		}
		last = k
		if len(v) > format.MaxValueSize || (p.valueSize >= 0 && len(v) > p.valueSize) {
			return nil, b.errf("record %d: %d-byte value, plan has %d: %w", n, len(v), p.valueSize, ErrPlanMismatch)
		}
		s := format.ItemSize(len(v))
		leaf := &b.lv[0]
		if leaf.n != nil {
			var full bool
			switch {
			case p.valueSize >= 0:
				full = leaf.n.NrItems() >= leaf.want
			case n >= p.tailStart:
				full = n == p.tailStart || n == p.tailSplit
			default:
				full = p.closesBefore(used, s)
			}
			if full {
				if err := b.finish(0); err != nil {
					return nil, err
				}
			}
		}
		if leaf.n == nil {
			if err := b.open(0); err != nil {
				return nil, err
			}
			used = 0
		}
		if leaf.n.LeafFree() < s {
			return nil, b.errf("record %d: leaf %d is full: %w", n, leaf.p.Block, ErrPlanMismatch)
		}
		copy(leaf.n.InsertItem(leaf.n.NrItems(), k, len(v)), v)
		used += s
		vbytes += uint64(len(v))
		n++
	}
	if n != p.Records || (p.valueSize < 0 && vbytes != p.ValueBytes) {
		return nil, b.errf("%d records of %d value bytes, planned %d of %d: %w", n, vbytes, p.Records, p.ValueBytes, ErrPlanMismatch)
	}
	if n == 0 {
		if err := b.open(0); err != nil {
			return nil, err
		}
	}
	if err := b.finish(0); err != nil {
		return nil, err
	}
	for l, lv := range b.lv {
		if lv.n != nil || lv.done != p.Levels[l] {
			return nil, b.errf("level %d: %d nodes written, planned %d: %w", l, lv.done, p.Levels[l], ErrPlanMismatch)
		}
	}
	if b.allocs != p.Blocks {
		return nil, b.errf("%d nodes allocated, planned %d: %w", b.allocs, p.Blocks, ErrPlanMismatch)
	}
	return Open(s, tree, b.root, p.Level(), p.Records), nil
}

type bulkBuilder struct {
	plan   *BulkPlan
	tree   format.TreeID
	alloc  BulkAlloc
	lv     []bulkLevel
	allocs uint64
	root   Ptr
}

func (b *bulkBuilder) errf(f string, args ...any) error {
	return fmt.Errorf("bulk load tree %s: "+f, append([]any{b.tree}, args...)...)
}

// open starts the next node of level l.
func (b *bulkBuilder) open(l int) error {
	lv := &b.lv[l]
	if lv.done >= b.plan.Levels[l] || b.allocs >= b.plan.Blocks {
		return b.errf("level %d needs more than the planned %d nodes: %w", l, b.plan.Levels[l], ErrPlanMismatch)
	}
	n, p, err := b.alloc(l)
	if err != nil {
		return b.errf("allocate node %d of level %d: %w", lv.done, l, err)
	}
	b.allocs++
	if len(n) != format.BlockSize || n.Level() != l || n.NrItems() != 0 || n.Owner() != b.tree {
		return b.errf("allocated block %d is not an empty level %d node of the tree (%d bytes, level %d, %d items, owner %s): %w",
			p.Block, l, len(n), n.Level(), n.NrItems(), n.Owner(), ErrPlanMismatch)
	}
	lv.n, lv.p = n, p
	if l > 0 || b.plan.valueSize >= 0 {
		lv.want = b.plan.share(l, lv.done)
	}
	return nil
}

// finish completes the open node of level l and hands a pointer to it to
// level l+1, completing that one too if it got all its children.
func (b *bulkBuilder) finish(l int) error {
	for ; ; l++ {
		lv := &b.lv[l]
		n, p := lv.n, lv.p
		if (l > 0 || b.plan.valueSize >= 0) && n.NrItems() != lv.want {
			return b.errf("level %d node %d has %d items, planned %d: %w", l, lv.done, n.NrItems(), lv.want, ErrPlanMismatch)
		}
		lv.n = nil
		lv.done++
		if l == len(b.lv)-1 {
			b.root = p
			return nil
		}
		up := &b.lv[l+1]
		if up.n == nil {
			if err := b.open(l + 1); err != nil {
				return err
			}
		}
		if up.n.NrItems() >= format.MaxPtrs {
			return b.errf("level %d node %d is full: %w", l+1, up.done, ErrPlanMismatch)
		}
		up.n.InsertPtr(up.n.NrItems(), n.Key(0), p.Block, p.Gen)
		if up.n.NrItems() < up.want {
			return nil
		}
	}
}
