package repair

import (
	"context"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// A new tree for an online rebuild: its blocks reserved, its bulk load
// staged, committed or cancelled (XFS's newbt.c).
//
// The blocks are reserved in ordinary transactions, in batches (one commit
// each, its updates of updateChunk blocks), for the record count the
// bulk-load plan gives (eb.PlanBulkFixed: the exact shape of a tree of n
// fixed-size records at a fill factor), with slack for the records
// writers add before the load. Each batch logs, in the same transaction,
// an operation "free those of these blocks no tree reaches": a crash
// before the swap leaves them unreachable, and the mount's logged_ops
// pass frees them; after the swap the tree reaches those it uses and the
// operation leaves them alone. So the reservation never leaks, whatever
// happens.
//
// The bulk load builds the tree bottom-up into the reserved blocks, the
// node images staged in an xfile (stageStore), not the Go heap, and
// written to the device outside any transaction (writeStaged): the blocks
// are allocated and nothing points at them, so no reader sees them. Later
// changes to the staged tree (the delta the shadow gathered) go through
// the same store, which rewrites only the nodes they dirtied.
//
// Commit is the swap (in the exclusive section, see swapIn) followed by
// the reaping of the blocks the load did not use, together with the old
// tree's (reapGroups hands them to reap with the operations that cover
// them). Cancel, for a rebuild that fails before the swap, frees every
// reserved block and drops the operations at once.
//
// Where the blocks come from. For every tree but one they come from the
// allocator (Tx.ReserveMeta), and if the tree records its own blocks —
// the rmap tree (an owner record per block) and the allocation tree (an
// extent record per block) — the plan counts them as records too: a fixed
// point of records+blocks(records), reached in a few rounds because a
// block holds a hundred records. The free-space tree is the exception:
// its new blocks come out of the very free space it describes, so
// reserving changes what it must hold. Its repairer plugs in through
// newTreeOptions.Take, taking the blocks from the ends of the largest
// free extents of its shadow (and shortening those records, or dropping
// one that is used up, so the record count never grows), then planning
// again for the records left: the count of blocks needed only shrinks as
// records go, the reservation only grows, and each round reserves at
// least one block, so the loop ends — in practice after one or two rounds
// (XFS's xrep_abt_reserve_space plays the same game).

// newTreeOptions describe the tree a rebuild builds.
type newTreeOptions struct {
	Tree     format.TreeID
	ItemSize int     // every record's value size (the plan is exact for fixed sizes)
	Fill     float64 // bulk-load fill factor
	TempDir  string  // for the staging xfile
	Name     string  // for the staging xfile's name
	// SelfRecords: the tree holds a record for each of its own blocks
	// (rmap, alloc), so the reservation plans for those too.
	SelfRecords bool
	// Take, if set, supplies n blocks for the reservation instead of
	// Tx.ReserveMeta: the hook for the free-space tree, whose blocks come
	// out of the space it describes (see above). The blocks must be
	// allocated to the tree in tx, as ReserveMeta does.
	Take func(tx *engine.Tx, n int) ([]format.BlockNr, error)
}

// newTree is the tree being built: its reserved blocks, the logged
// operations that free them after a crash, and, once loaded, the staged
// tree.
type newTree struct {
	e    *engine.Engine
	opts newTreeOptions

	blocks []format.BlockNr // reserved, in order
	ops    []reserveOp      // the logged operations covering blocks
	sorted []format.BlockNr // blocks sorted, once the reservation is final

	stage *stageStore
	plan  *eb.BulkPlan
	tree  *eb.Tree // the staged tree, once loaded

	swapping bool // the swap was attempted: cancel must leave the blocks alone
}

// reserveOp is a logged operation covering blocks[from:to] of a
// reservation.
type reserveOp struct {
	id       uint64
	from, to int
}

func newNewTree(e *engine.Engine, opts newTreeOptions) *newTree {
	if opts.Take == nil {
		id := opts.Tree
		opts.Take = func(tx *engine.Tx, n int) ([]format.BlockNr, error) { return tx.ReserveMeta(id, n) }
	}
	return &newTree{e: e, opts: opts}
}

// planFor returns the bulk-load plan of records records, plus, for a tree
// holding its own blocks, the records of the plan's own blocks.
func (nt *newTree) planFor(records uint64) (*eb.BulkPlan, error) {
	plan, err := eb.PlanBulkFixed(records, nt.opts.ItemSize, nt.opts.Fill)
	for i := 0; nt.opts.SelfRecords && err == nil && i < 4; i++ {
		plan, err = eb.PlanBulkFixed(records+plan.Blocks, nt.opts.ItemSize, nt.opts.Fill)
	}
	return plan, err
}

// reserve makes sure the reservation holds a tree of records records (the
// reserved blocks' own records not counted: planFor adds them), with
// slack for the records writers add before the load starts (a 32nd); it
// reserves in batches, one commit each, so no single commit holds the
// writers back for long. pace, if set, is called before each batch with
// the blocks reserved so far and the number wanted, and may wait.
func (nt *newTree) reserve(ctx context.Context, records uint64, pace func(done, want int)) error {
	plan, err := nt.planFor(records)
	if err != nil {
		return err
	}
	// Topping up only below a lower mark: a few hundred records gained
	// since the first reservation fit in its slack.
	if len(nt.blocks) >= int(plan.Blocks+max(16, plan.Blocks/128)) {
		return nil
	}
	return nt.reserveTo(ctx, int(plan.Blocks+max(16, plan.Blocks/32)), pace)
}

// reserveTo reserves blocks until want are reserved, in batches.
func (nt *newTree) reserveTo(ctx context.Context, want int, pace func(done, want int)) error {
	for len(nt.blocks) < want {
		if err := ctx.Err(); err != nil {
			return err
		}
		if pace != nil {
			pace(len(nt.blocks), want)
		}
		k := min(reserveBatch, want-len(nt.blocks))
		err := commitBatch(nt.e, k, true, func(tx *engine.Tx, from, to int) error {
			got, err := nt.opts.Take(tx, to-from)
			if err != nil {
				return err
			}
			op, err := tx.LogFreeUnreachable(nt.opts.Tree, got)
			if err != nil {
				return err
			}
			nt.ops = append(nt.ops, reserveOp{id: op, from: len(nt.blocks), to: len(nt.blocks) + len(got)})
			nt.blocks = append(nt.blocks, got...)
			return nil
		})
		if err != nil {
			return fmt.Errorf("reserve blocks for the new %s tree: %w", nt.opts.Tree, err)
		}
	}
	return nil
}

// topUp tops the reservation up to a tree of the records the shadow holds
// (normally nothing: it was reserved during the scan). For a tree holding
// its own blocks the shadow already holds the reserved blocks' records,
// which planFor adds itself.
func (nt *newTree) topUp(ctx context.Context, shadowItems uint64) error {
	n := shadowItems
	if nt.opts.SelfRecords {
		n -= min(n, uint64(len(nt.blocks)))
	}
	return nt.reserve(ctx, n, nil)
}

// reserveAlongside runs scan (at the lowest CPU priority) while the
// reservation for expect records is made beside it, in batches that keep
// pace with the scan's progress (the records it counts in progress), at
// most one ahead, rather than back to back: the reservation mostly waits
// (its delayed refs are applied in slices that rest while writers wait,
// its commits are written out) and the scan mostly computes. (At 10M
// extents, back to back, writers ran at 37% of idle through the scan.)
// What the scan finds beyond expect is reserved after it (topUp), what is
// left over is freed at the reaping.
func (nt *newTree) reserveAlongside(ctx context.Context, expect uint64, scan func(progress *atomic.Uint64) error) error {
	rctx, stopReserving := context.WithCancel(ctx)
	defer stopReserving()
	var progress atomic.Uint64
	scanDone := make(chan struct{})
	keepPace := func(done, want int) {
		for uint64(done)*max(expect, 1) > uint64(want)*progress.Load() {
			select {
			case <-scanDone:
				return
			case <-rctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	reserving := make(chan error, 1)
	go func() { reserving <- nt.reserve(rctx, expect, keepPace) }()
	err := lowPriority(func() error { return scan(&progress) })
	close(scanDone)
	if err != nil {
		stopReserving()
		<-reserving
		return err
	}
	return <-reserving
}

// spareFor makes sure the staged tree has room for events more updates
// before they are applied to it (catch-up): writers that keep adding
// records while a rebuild catches up can need more blocks than the
// reservation's slack — an update in a full leaf splits it, so a stream
// of inserts can take a new block per handful of records. It assumes the
// worst of that (a new block per 16 updates, and 16 blocks besides) and
// reserves the difference in ordinary transactions, covered by logged
// operations like the rest; what goes unused is reaped with it.
func (nt *newTree) spareFor(ctx context.Context, events uint64) error {
	spare := len(nt.blocks) - nt.stage.used + len(nt.stage.freed)
	need := int(events/16) + 16
	if spare >= need {
		return nil
	}
	if err := nt.reserveTo(ctx, len(nt.blocks)+need-spare, nil); err != nil {
		return err
	}
	nt.stage.reserved = nt.blocks
	nt.sorted = slices.Sorted(slices.Values(nt.blocks))
	return nil
}

// reserved reports whether b is one of the reserved blocks (after load).
func (nt *newTree) reserved(b format.BlockNr) bool { return inSorted(nt.sorted, b) }

// load bulk-loads records records (recs, in key order) into the reserved
// blocks, the nodes stamped with generation gen, staged in an xfile. The
// reservation is final from here on.
func (nt *newTree) load(records uint64, gen format.Gen, recs iter.Seq2[format.Key, []byte]) error {
	id := nt.opts.Tree
	plan, err := eb.PlanBulkFixed(records, nt.opts.ItemSize, nt.opts.Fill)
	if err != nil {
		return err
	}
	if plan.Blocks > uint64(len(nt.blocks)) {
		return fmt.Errorf("the %s tree outgrew its reservation (%d records need %d blocks, %d reserved); run the repair again", id, records, plan.Blocks, len(nt.blocks))
	}
	nt.plan = plan
	// Sorted lists searched rather than sets of 100k blocks at 10M
	// extents (the rebuild's heap alone went from 28.5 to 27.3-27.6 MiB).
	nt.sorted = slices.Sorted(slices.Values(nt.blocks))
	nt.stage, err = newStageStore(nt.opts.TempDir, nt.opts.Name+" bulk load", nt.e.FSID(), gen, nt.blocks)
	if err != nil {
		return err
	}
	nt.tree, err = plan.Build(nt.stage, id, recs, func(level int) (format.Node, eb.Ptr, error) {
		return nt.stage.Alloc(id, level)
	})
	if err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	return nil
}

// writeStaged writes the staged nodes — all of them, or (dirtyOnly) those
// changed since the last write — to their blocks and flushes them: the
// rebuild carries its own writes rather than leaving hundreds of
// megabytes for a writer's fsync, or the next commit under the writer
// lock, to flush. The bulk write (all) lets commits' write-outs and
// fsyncs go first; the catch-up's small writes do not wait, or the
// updates they follow would pile up meanwhile (at 1M, catch-up took 1.3 s
// instead of 0.1 s when they waited).
func (nt *newTree) writeStaged(dirtyOnly bool) error {
	nodes := nt.stage.nodes
	if dirtyOnly {
		nodes = nt.stage.dirtyNodes
	}
	ns, err := nodes()
	if err != nil {
		return fmt.Errorf("staged %s nodes: %w", nt.opts.Tree, err)
	}
	if dirtyOnly {
		err = nt.e.WriteMeta(ns)
	} else {
		err = nt.e.WriteMetaBehind(ns)
	}
	if err == nil {
		err = nt.e.FlushMeta()
	}
	if err != nil {
		return fmt.Errorf("write the new %s tree: %w", nt.opts.Tree, err)
	}
	nt.stage.clean()
	return nil
}

// reapGroups returns, for the reaping after the swap, the reserved blocks
// the tree does not use, with the reservation's operations that cover
// them (an operation whose blocks the tree uses entirely comes with none:
// it is dropped at once). The reservation is committed with them.
func (nt *newTree) reapGroups() []reapGroup {
	unused := nt.stage.unusedSlots()
	out := make([]reapGroup, 0, len(nt.ops))
	for _, op := range nt.ops {
		g := reapGroup{op: op.id}
		for i := op.from; i < op.to; i++ {
			if unused(i) {
				g.blocks = append(g.blocks, nt.blocks[i])
			}
		}
		out = append(out, g)
	}
	return out
}

// cancel gives the reservation back when the rebuild fails before the
// swap: one batch of commits frees every reserved block and drops the
// operations (and extra, operations the rebuild logged besides, such as
// the old tree's reaping). Once the swap was attempted it does nothing:
// whether the swap committed is then for the mount's logged_ops pass to
// find out. Best effort: if the engine cannot commit, the logged
// operations free the blocks at the next mount.
func (nt *newTree) cancel(extra ...uint64) {
	if nt.stage != nil {
		nt.stage.close()
		nt.stage = nil
	}
	if nt.swapping || len(nt.ops) == 0 && len(extra) == 0 {
		return
	}
	groups := []reapGroup{{blocks: nt.blocks}}
	for _, op := range nt.ops {
		groups = append(groups, reapGroup{op: op.id})
	}
	for _, op := range extra {
		groups = append(groups, reapGroup{op: op})
	}
	if _, err := reap(nt.e, nt.opts.Tree, groups); err == nil {
		nt.blocks, nt.ops = nil, nil
	}
}

// close frees the staging xfile.
func (nt *newTree) close() {
	if nt.stage != nil {
		nt.stage.close()
		nt.stage = nil
	}
}

// bulkLoad freezes the shadow and bulk-loads it into the new tree's
// reserved blocks, then writes them (phase "write"), at the lowest CPU
// priority.
func bulkLoad[E any](res *RebuildResult, sh *shadow[E], nt *newTree) error {
	records, gen, err := sh.freeze(nt.e)
	if err != nil {
		return err
	}
	return lowPriority(func() error {
		var readErr error
		if err := nt.load(records, gen, treeRecords(sh.tree, &readErr)); err != nil {
			return err
		}
		if readErr != nil {
			return fmt.Errorf("bulk load: %w", readErr)
		}
		res.phase("write")
		return nt.writeStaged(false)
	})
}

// swapSteps are a structure's own steps in the exclusive section of its
// swap.
type swapSteps struct {
	// Stopped runs once the shadow's subscription has ended, before the
	// new tree is touched: every change so far has been published.
	Stopped func(x *engine.Exclusive)
	// Then runs after the last of the delta reached the new tree (such as
	// logging the reaping of blocks the old tree gained).
	Then func(x *engine.Exclusive) error
}

// swapIn is the short exclusive section of a rebuild: it ends the
// shadow's subscription (every change has been published), makes the
// staged tree the live one and the structure healthy (for a space tree
// the engine ran without, maintained by the engine again: every change
// from here on is one the shadow never saw, including the delayed refs
// this very section queues), applies the last of the delta to it as the
// swap's transaction sees it, runs the structure's own steps, and commits
// with the rest.
func swapIn[E any](e *engine.Engine, res *RebuildResult, sh *shadow[E], nt *newTree, st engine.Structure, steps swapSteps) error {
	id := nt.opts.Tree
	nt.swapping = true
	err := e.RunExclusive(func(x *engine.Exclusive) error {
		n, err := sh.stop()
		if err != nil {
			return err
		}
		res.Events += n
		if steps.Stopped != nil {
			steps.Stopped(x)
		}
		x.ReplaceTree(id, nt.tree.Root, nt.tree.Level, nt.tree.Items)
		e.MarkRepaired(st, x.Gen())
		t, _ := x.ReadTree(id)
		if err := sh.applyPending(t); err != nil {
			return fmt.Errorf("apply live updates to the new tree: %w", err)
		}
		if steps.Then != nil {
			if err := steps.Then(x); err != nil {
				return err
			}
		}
		res.Gen = x.Gen()
		res.ExclusivePause = x.Held()
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s rebuild: %w", id, err)
	}
	return nil
}

// catchUpStaged applies the delta to the staged tree, outside any lock,
// rewriting the nodes that changed, until few updates are left for the
// exclusive section, and returns how many it applied. Each round first
// commits what writers queued, so its updates reach the delta now rather
// than in the exclusive section's commit. Done when few are left, or when
// a round no longer halves them: a busy writer queues as many updates per
// round as a round takes (thousands a second), and the exclusive section
// applies that many in a few milliseconds.
func catchUpStaged[E any](ctx context.Context, e *engine.Engine, sh *shadow[E], nt *newTree) (uint64, error) {
	var events uint64
	prev := -1
	for round := 0; round < 8; round++ {
		if err := e.Sync(); err != nil {
			return events, err
		}
		if err := nt.spareFor(ctx, sh.pending()); err != nil {
			return events, err
		}
		n, err := sh.drainTo(nt.tree)
		if err != nil {
			return events, fmt.Errorf("catch up on the staged tree: %w", err)
		}
		if err := nt.writeStaged(true); err != nil {
			return events, err
		}
		events += uint64(n)
		if n < 256 || prev >= 0 && n > prev/2 {
			break
		}
		prev = n
	}
	return events, nil
}

// inSorted reports whether b is in the sorted list.
func inSorted(list []format.BlockNr, b format.BlockNr) bool {
	_, ok := slices.BinarySearch(list, b)
	return ok
}

// treeRecords yields a tree's items in order; a read error lands in *err.
// The values are only valid during the yield (Build copies them).
func treeRecords(t *eb.Tree, err *error) iter.Seq2[format.Key, []byte] {
	return func(yield func(format.Key, []byte) bool) {
		*err = t.Ascend(format.Key{}, yield)
	}
}

// stageStore hands out the reserved blocks to the bulk loader, keeping the
// node images in an xfile (not the Go heap) until they are written. It
// serves any tree: the tree id comes with each call.
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

// unusedSlots returns a predicate: whether slot i of the reservation holds
// no node of the tree (past the used tail, or given back).
func (s *stageStore) unusedSlots() func(i int) bool {
	freed := slices.Sorted(slices.Values(s.freed))
	return func(i int) bool {
		if i >= s.used {
			return true
		}
		_, ok := slices.BinarySearch(freed, i)
		return ok
	}
}

// Records of varying size (csum records of 4–896 bytes, directory
// entries of 20–274, inode items with symlink targets) are loaded by
// bytes: the three helpers below replace the fixed-size planning of
// rebuild[E] for the rebuilds that run their phases themselves.

// topUpByBytes freezes the shadow and plans its bulk load by bytes (for
// records of varying size: a plan for one fixed size would be wrong or
// wasteful), reserving what the plan needs beyond the reservation made
// alongside the scan, in ordinary paced commits. It returns the plan and
// the generation to stamp the nodes with, committed after those.
func topUpByBytes[E any](ctx context.Context, e *engine.Engine, sh *shadow[E], nt *newTree) (*eb.BulkPlan, format.Gen, error) {
	records, _, err := sh.freeze(e)
	if err != nil {
		return nil, 0, err
	}
	var plan *eb.BulkPlan
	if err := lowPriority(func() error {
		var readErr error
		p, err := eb.PlanBulk(treeRecords(sh.tree, &readErr), nt.opts.Fill)
		if err == nil {
			err = readErr
		}
		plan = p
		return err
	}); err != nil {
		return nil, 0, fmt.Errorf("plan the %s tree's bulk load: %w", nt.opts.Tree, err)
	}
	if plan.Records != records {
		return nil, 0, fmt.Errorf("the frozen %s shadow holds %d records, its plan %d (internal error)", nt.opts.Tree, records, plan.Records)
	}
	if want := int(plan.Blocks); want > len(nt.blocks) {
		if err := nt.reserveTo(ctx, want+max(16, want/32), nil); err != nil {
			return nil, 0, err
		}
	}
	snap := e.Pin()
	defer snap.Release()
	return plan, snap.Gen(), nil
}

// loadPlanned bulk-loads the frozen shadow into the new tree's reserved
// blocks as planned, the nodes stamped with generation gen, staged in an
// xfile, then writes them (phase "write"), at the lowest CPU priority.
func loadPlanned[E any](res *RebuildResult, sh *shadow[E], nt *newTree, plan *eb.BulkPlan, gen format.Gen) error {
	nt.plan = plan
	nt.sorted = slices.Sorted(slices.Values(nt.blocks))
	var err error
	if nt.stage, err = newStageStore(nt.opts.TempDir, nt.opts.Name+" bulk load", nt.e.FSID(), gen, nt.blocks); err != nil {
		return err
	}
	return lowPriority(func() error {
		var readErr error
		tree, err := plan.Build(nt.stage, nt.opts.Tree, treeRecords(sh.tree, &readErr), func(level int) (format.Node, eb.Ptr, error) {
			return nt.stage.Alloc(nt.opts.Tree, level)
		})
		if err == nil {
			err = readErr
		}
		if err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
		nt.tree = tree
		res.phase("write")
		return nt.writeStaged(false)
	})
}

// catchUpSpare is how many unused reserved blocks a catch-up round keeps
// before each event applied to the staged tree (an event puts two items,
// and one insert splits at most a leaf and each level above it, and grows
// a root), and catchUpBatch how many events' worth it reserves when they
// run low.
const (
	catchUpSpare = 2 * (format.MaxLevel + 2)
	catchUpBatch = 256
)

// catchUpReserving applies the delta to the staged tree in rounds, as
// catchUpStaged does, reserving more whenever the spare blocks run low:
// inserts of records of up to a few hundred bytes split leaves far more
// often than the fixed-size records the kit's estimate is made for.
func catchUpReserving[E any](ctx context.Context, e *engine.Engine, sh *shadow[E], nt *newTree, apply func(*eb.Tree, E) error) (uint64, error) {
	var events uint64
	prev := -1
	for round := 0; round < 8; round++ {
		if err := e.Sync(); err != nil {
			return events, err
		}
		n, err := sh.drain(func(a *xfile.Array) error {
			return sh.q.codec.each(a, func(ev E) error {
				if len(nt.blocks)-nt.stage.used+len(nt.stage.freed) < catchUpSpare {
					// Commits the reservation: the hooks it fires append
					// to the queue's other array.
					if err := nt.spareFor(ctx, 16*catchUpBatch); err != nil {
						return err
					}
				}
				return apply(nt.tree, ev)
			})
		})
		if err != nil {
			return events, fmt.Errorf("catch up on the staged tree: %w", err)
		}
		if err := nt.writeStaged(true); err != nil {
			return events, err
		}
		events += uint64(n)
		if n < 256 || prev >= 0 && n > prev/2 {
			break
		}
		prev = n
	}
	return events, nil
}
