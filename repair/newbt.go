package repair

import (
	"context"
	"fmt"
	"iter"
	"maps"
	"slices"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// The new tree's blocks (the XFS newbt design), shared by every online
// rebuild: a reservation of blocks for a tree of a given record count and
// size, reserved in paced batches under logged operations that free them
// should a crash come before the swap; a staging store that hands them to
// the bulk loader and keeps the node images in an xfile until they are
// written; and the write of the staged nodes outside any transaction (the
// blocks are allocated and nothing points at them yet).
//
// For the free-space tree the reservation comes out of the very space the
// tree describes: a repairer of it must reserve, recount the records the
// reservation changed, and reserve again until the plan fits (allocating
// from the start of a free extent never adds a record, so the count
// shrinks or stays and the loop converges).

// inSorted reports whether b is in the sorted list.
func inSorted(list []format.BlockNr, b format.BlockNr) bool {
	_, ok := slices.BinarySearch(list, b)
	return ok
}

// reservation holds the blocks reserved for the new tree, and the logged
// operations that free them if the swap never happens (those that no tree
// reaches when the operation is completed).
type reservation struct {
	tree     format.TreeID // the tree the blocks are for (their owner)
	itemSize int           // the size of the tree's fixed-size records
	blocks   []format.BlockNr
	ops      []uint64
}

// upTo makes sure the reservation holds a tree of records records, the
// reserved blocks' own records included, with slack for the records
// writers add before the load starts (a 32nd); it reserves in batches, one
// commit each, so no single commit holds the writers back for long. pace,
// if set, is called before each batch with the blocks reserved so far and
// the number wanted, and may wait.
func (r *reservation) upTo(ctx context.Context, e *engine.Engine, records uint64, fill float64, pace func(done, want int)) error {
	plan, err := eb.PlanBulkFixed(records, r.itemSize, fill)
	for i := 0; err == nil && i < 4; i++ {
		plan, err = eb.PlanBulkFixed(records+plan.Blocks, r.itemSize, fill)
	}
	if err != nil {
		return err
	}
	// Topping up only below a lower mark: a few hundred records gained
	// since the first reservation fit in its slack.
	if len(r.blocks) >= int(plan.Blocks+max(16, plan.Blocks/128)) {
		return nil
	}
	want := int(plan.Blocks + max(16, plan.Blocks/32))
	for len(r.blocks) < want {
		if err := ctx.Err(); err != nil {
			return err
		}
		if pace != nil {
			pace(len(r.blocks), want)
		}
		k := min(reserveBatch, want-len(r.blocks))
		err := commitBatch(e, k, true, func(tx *engine.Tx, from, to int) error {
			got, err := tx.ReserveMeta(r.tree, to-from)
			if err != nil {
				return err
			}
			op, err := tx.LogFreeUnreachable(r.tree, got)
			if err != nil {
				return err
			}
			r.blocks = append(r.blocks, got...)
			r.ops = append(r.ops, op)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// writeStaged writes the staged nodes nodes returns to their blocks and
// flushes them: the rebuild carries its own writes rather than leaving
// hundreds of megabytes for a writer's fsync, or the next commit under the
// writer lock, to flush. The bulk write (behind) lets commits' write-outs
// and fsyncs go first; the catch-up's small writes do not wait, or the
// updates they follow would pile up meanwhile (at 1M, catch-up took 1.3 s
// instead of 0.1 s when they waited).
func writeStaged(e *engine.Engine, nodes func() ([]format.Node, error), behind bool) error {
	ns, err := nodes()
	if err != nil {
		return fmt.Errorf("staged nodes: %w", err)
	}
	if behind {
		err = e.WriteMetaBehind(ns)
	} else {
		err = e.WriteMeta(ns)
	}
	if err == nil {
		err = e.FlushMeta()
	}
	if err != nil {
		return fmt.Errorf("write the new tree: %w", err)
	}
	return nil
}

// treeRecords yields a tree's items in order; a read error lands in *err.
// The values are only valid during the yield (Build copies them).
func treeRecords(t *eb.Tree, err *error) iter.Seq2[format.Key, []byte] {
	return func(yield func(format.Key, []byte) bool) {
		*err = t.Ascend(format.Key{}, yield)
	}
}

// stageStore hands out the reserved blocks to the bulk loader, keeping the
// node images in an xfile (not the Go heap) until they are written.
type stageStore struct {
	f        *xfile.File
	fsid     format.FSID
	gen      format.Gen
	reserved []format.BlockNr
	used     int
	index    map[format.BlockNr]int // staged block -> slot
	freed    []int                  // slots given back
	dirty    map[int]bool           // slots changed since clean
}

func newStageStore(dir, name string, fsid format.FSID, gen format.Gen, reserved []format.BlockNr) (*stageStore, error) {
	f, err := xfile.New(xfile.Options{Dir: dir, Name: name, InitialSize: int64(len(reserved)) * format.BlockSize})
	if err != nil {
		return nil, err
	}
	return &stageStore{f: f, fsid: fsid, gen: gen, reserved: reserved, index: map[format.BlockNr]int{}, dirty: map[int]bool{}}, nil
}

func (s *stageStore) close() { s.f.Close() }

func (s *stageStore) node(i int) (format.Node, error) {
	b, err := s.f.Bytes(int64(i)*format.BlockSize, format.BlockSize)
	return format.Node(b), err
}

func (s *stageStore) Read(tree format.TreeID, p eb.Ptr, level int) (format.Node, error) {
	i, ok := s.index[p.Block]
	if !ok {
		return nil, fmt.Errorf("bulk load read of block %d it did not write", p.Block)
	}
	return s.node(i)
}

func (s *stageStore) Writable(tree format.TreeID, p eb.Ptr, level int) (format.Node, eb.Ptr, error) {
	n, err := s.Read(tree, p, level)
	if err == nil {
		s.dirty[s.index[p.Block]] = true
	}
	return n, p, err
}

func (s *stageStore) Alloc(tree format.TreeID, level int) (format.Node, eb.Ptr, error) {
	if n := len(s.freed); n > 0 {
		i := s.freed[n-1]
		s.freed = s.freed[:n-1]
		b := s.reserved[i]
		nd, err := s.node(i)
		if err != nil {
			return nil, eb.Ptr{}, err
		}
		format.InitNode(nd, s.fsid, b, s.gen, tree, level)
		s.index[b] = i
		s.dirty[i] = true
		return nd, eb.Ptr{Block: b, Gen: s.gen}, nil
	}
	if s.used >= len(s.reserved) {
		return nil, eb.Ptr{}, fmt.Errorf("bulk load needs more than the %d reserved blocks", len(s.reserved))
	}
	if err := s.f.Grow(int64(s.used+1) * format.BlockSize); err != nil {
		return nil, eb.Ptr{}, err
	}
	b := s.reserved[s.used]
	n, err := s.node(s.used)
	if err != nil {
		return nil, eb.Ptr{}, err
	}
	format.InitNode(n, s.fsid, b, s.gen, tree, level)
	s.index[b] = s.used
	s.dirty[s.used] = true
	s.used++
	return n, eb.Ptr{Block: b, Gen: s.gen}, nil
}

// Free gives a staged block back (catching up may merge nodes): it is
// used again before the reserve's unused tail.
func (s *stageStore) Free(_ format.TreeID, p eb.Ptr, _ int) error {
	i, ok := s.index[p.Block]
	if !ok {
		return fmt.Errorf("bulk load free of block %d it did not allocate", p.Block)
	}
	delete(s.index, p.Block)
	delete(s.dirty, i)
	s.freed = append(s.freed, i)
	return nil
}

// clean marks every staged node as written.
func (s *stageStore) clean() { clear(s.dirty) }

// dirtyNodes returns the staged nodes in use changed since clean, in slot
// order.
func (s *stageStore) dirtyNodes() ([]format.Node, error) {
	slots := slices.Sorted(maps.Keys(s.dirty))
	out := make([]format.Node, 0, len(slots))
	for _, i := range slots {
		n, err := s.node(i)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// nodes returns the staged nodes in use, in slot order.
func (s *stageStore) nodes() ([]format.Node, error) {
	out := make([]format.Node, 0, len(s.index))
	for i := 0; i < s.used; i++ {
		if _, live := s.index[s.reserved[i]]; !live {
			continue
		}
		n, err := s.node(i)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// unused returns the reserved blocks the tree does not use.
func (s *stageStore) unused() []format.BlockNr {
	out := slices.Clone(s.reserved[s.used:])
	for _, i := range s.freed {
		out = append(out, s.reserved[i])
	}
	return out
}
