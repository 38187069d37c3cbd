package repair

import (
	"context"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
)

// The phases every online rebuild runs, on the kit (shadow.go, newbt.go,
// reap.go, pace.go): a repairer supplies what is its own — which events
// it follows and how they change its records, how a pinned generation
// implies its records, and where the old tree's blocks are — in a
// rebuildSpec, and rebuild runs
//
//	subscribe → scan (with the reservation alongside) → top-up → load
//	→ catch-up → swap → reap
//
// with the guarantees the kit gives each step: a crash anywhere leaves
// the old tree or the new one and leaks nothing; a failure before the
// swap gives the reservation back; writers run throughout except for the
// exclusive section of the swap.

// rebuildSpec is one structure's part of an online rebuild.
type rebuildSpec[E any] struct {
	Name      string // in xfile names and errors
	Tree      format.TreeID
	Structure engine.Structure
	ItemSize  int
	// SelfRecords: the tree holds a record for each of its own blocks.
	SelfRecords bool
	// VarSize: records vary in size (ItemSize is a guess for the
	// reservation alongside the scan): the load is planned by bytes over
	// the frozen shadow and a catch-up round reserves as it goes
	// (topUpByBytes, loadPlanned, catchUpReserving).
	VarSize bool

	Codec eventCodec[E]
	Gen   func(E) format.Gen
	Chain func(e *engine.Engine) *hooks.Chain[E]
	// Apply applies an event to the shadow, the staged tree or the new
	// tree (the shadow serializes the calls).
	Apply func(t *eb.Tree, ev E) error

	// Expect is how many records the scan will likely find (the
	// reservation made alongside the scan plans for it).
	Expect func(s *engine.Snapshot) uint64
	// Scan puts the records generation s implies into shadow (counting
	// them in progress, pausing with th) and returns the old tree's
	// blocks. It runs at the lowest CPU priority; s is released after.
	Scan func(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error)
	// Old, if set, receives the old tree's blocks before any event is
	// applied (for a tree whose events report its own blocks: rmap).
	Old func(o *oldTree)

	// Swap holds the structure's own steps in the exclusive section.
	Swap swapSteps
}

// treeItems is a rebuildSpec.Expect: the item count of tree id at the
// scanned generation.
func treeItems(id format.TreeID) func(*engine.Snapshot) uint64 {
	return func(s *engine.Snapshot) uint64 {
		if t, ok := s.ScanTree(id); ok {
			return t.Items
		}
		return 0
	}
}

// rebuild runs the phases of an online rebuild of spec's structure.
func rebuild[E any](ctx context.Context, e *engine.Engine, opts RebuildOptions, spec rebuildSpec[E]) (_ *RebuildResult, err error) {
	opts = opts.withDefaults()
	res := startRebuild(e, "subscribe")
	defer res.stop()
	sh, err := newShadow(opts.TempDir, spec.Name, spec.Tree, spec.Codec, spec.Gen, spec.Apply)
	if err != nil {
		return nil, err
	}
	defer sh.close()
	snap, err := sh.subscribe(e, spec.Chain(e))
	if err != nil {
		return nil, err
	}
	res.ScanGen = snap.Gen()

	res.phase("scan")
	nt := newNewTree(e, newTreeOptions{Tree: spec.Tree, ItemSize: spec.ItemSize,
		Fill: opts.Fill, TempDir: opts.TempDir, Name: spec.Name, SelfRecords: spec.SelfRecords})
	var old *oldTree
	defer func() {
		if err != nil {
			var ops []uint64
			if old != nil {
				ops = old.opIDs()
			}
			nt.cancel(ops...)
		}
		nt.close()
	}()
	var oldBlocks []format.BlockNr
	err = nt.reserveAlongside(ctx, spec.Expect(snap), func(progress *atomic.Uint64) (err error) {
		defer snap.Release()
		oldBlocks, err = spec.Scan(ctx, snap, sh.tree, opts.scanThrottle(), progress)
		return err
	})
	if err != nil {
		return nil, err
	}
	old = newOldTree(spec.Tree, oldBlocks)
	if spec.Old != nil {
		spec.Old(old)
	}

	res.phase("top-up")
	if err := sh.catchUp(); err != nil {
		return nil, err
	}
	if spec.VarSize {
		plan, gen, err := topUpByBytes(ctx, e, sh, nt)
		if err != nil {
			return nil, err
		}
		res.phase("load")
		if err := loadPlanned(res, sh, nt, plan, gen); err != nil {
			return nil, err
		}
	} else {
		if err := nt.topUp(ctx, sh.items()); err != nil {
			return nil, err
		}
		res.phase("load")
		if err := bulkLoad(res, sh, nt); err != nil {
			return nil, err
		}
	}
	if err := old.logListed(e, nt.reserved); err != nil {
		return nil, err
	}

	res.phase("catch-up")
	catchUp := catchUpStaged[E]
	if spec.VarSize {
		catchUp = func(ctx context.Context, e *engine.Engine, sh *shadow[E], nt *newTree) (uint64, error) {
			return catchUpReserving(ctx, e, sh, nt, spec.Apply)
		}
	}
	n, err := catchUp(ctx, e, sh, nt)
	res.Events += n
	if err != nil {
		return nil, err
	}

	res.phase("swap")
	then := spec.Swap.Then
	err = swapIn(e, res, sh, nt, spec.Structure, swapSteps{
		Stopped: spec.Swap.Stopped,
		Then: func(x *engine.Exclusive) error {
			if then != nil {
				if err := then(x); err != nil {
					return err
				}
			}
			return old.logGained(x, nt.reserved)
		},
	})
	if err != nil {
		return nil, err
	}

	res.phase("reap")
	groups, nOld := old.reapGroups(nt.reserved)
	if _, err := reap(e, spec.Tree, append(nt.reapGroups(), groups...)); err != nil {
		return nil, err
	}
	res.Records, res.NewBlocks, res.OldBlocks = nt.tree.Items, nt.plan.Blocks, nOld
	res.XfileBytes = sh.xfileBytes()
	res.phase("")
	return res, nil
}

// firstProblem keeps the first problem a tree walk reports (those of kind
// skip ignored, when skip is set).
type firstProblem struct {
	p    *eb.Problem
	skip *format.Kind
}

func (f *firstProblem) note(p eb.Problem) {
	if f.p == nil && (f.skip == nil || p.Kind != *f.skip) {
		pp := p
		f.p = &pp
	}
}

// degrade marks s sick and no longer maintained by the engine, before a
// rebuild subscribes: from the next commit on the old tree stands still
// (its blocks are those of the pinned generation) and the engine answers
// from the other trees (engine/degraded.go). A rebuild that fails leaves
// it so, persisted; the next repair tries again.
func degrade(e *engine.Engine, s engine.Structure) {
	pin := e.Pin()
	e.MarkSick(s, pin.Gen(), engine.ErrTreeUntrusted)
	pin.Release()
}
