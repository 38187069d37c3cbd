package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// Recovery passes (the bcachefs design): mount runs an enumerated list of
// passes. A pass runs when it is always-on or when its bit is set in the
// superblock's recovery_passes_required; the bit is cleared, in the next
// commit, only after the pass succeeded. Pass ids are stable on disk: a pass
// keeps its id forever, new passes take new ids.

// RecoveryPass is one step mount can run.
type RecoveryPass struct {
	ID     uint
	Name   string
	Always bool // runs at every read-write mount
	// Marker: the bit is a state the mount reads (see degraded.go), not
	// work to do; it is not run, and only a repair clears it.
	Marker bool
	run    func(ctx context.Context, e *Engine) error
}

// Recovery pass ids (stable on disk).
const (
	// PassCheckAllocations re-verifies that the free-space, alloc and rmap
	// trees agree before the allocator trusts them.
	PassCheckAllocations uint = 0
	// PassReplayLog applies the fsync log to the committed generation.
	PassReplayLog uint = 1
	// PassDeletedInodes frees inodes unlinked while open (registered by the
	// filesystem layer through Options.DeletedInodes).
	PassDeletedInodes uint = 2
	// PassLoggedOps completes logged operations a crash interrupted (the
	// block reservations and reaping of online rebuilds).
	PassLoggedOps uint = 3
)

var recoveryPasses = []RecoveryPass{
	{ID: PassCheckAllocations, Name: "check_allocations", run: passCheckAllocations},
	{ID: PassReplayLog, Name: "replay_log", Always: true, run: func(_ context.Context, e *Engine) error { return passReplayLog(e) }},
	{ID: PassLoggedOps, Name: "logged_ops", Always: true, run: passLoggedOps},
	{ID: PassDeletedInodes, Name: "deleted_inodes", Always: true, run: passDeletedInodes},
	{ID: PassFreeUntrusted, Name: "free_untrusted", Marker: true},
	{ID: PassAllocUntrusted, Name: "alloc_untrusted", Marker: true},
	{ID: PassRmapUntrusted, Name: "rmap_untrusted", Marker: true},
	{ID: PassCsumUntrusted, Name: "csum_untrusted", Marker: true},
}

func passDeletedInodes(_ context.Context, e *Engine) error {
	if e.opts.DeletedInodes == nil {
		return nil
	}
	if err := e.Update(func(tx *Tx) error {
		tx.touched = true
		return e.opts.DeletedInodes(tx)
	}); err != nil {
		return err
	}
	return e.Sync()
}

// RecoveryPasses lists the passes this build knows, in run order.
func RecoveryPasses() []RecoveryPass { return recoveryPasses }

func (e *Engine) runRecovery() error {
	required := e.super.RecoveryPasses
	known := uint64(0)
	for _, p := range recoveryPasses {
		known |= 1 << p.ID
		if p.Marker || !p.Always && required&(1<<p.ID) == 0 {
			continue
		}
		start := time.Now()
		if err := p.run(context.Background(), e); err != nil {
			return fmt.Errorf("recovery pass %s: %w", p.Name, err)
		}
		e.mount.PassesRun = append(e.mount.PassesRun, p.Name)
		e.log.Info("recovery pass done", "pass", p.Name, "took", time.Since(start))
		if required&(1<<p.ID) != 0 {
			e.super.RecoveryPasses &^= 1 << p.ID
			e.txn.superDirty = true
		}
	}
	if unknown := required &^ known; unknown != 0 {
		return fmt.Errorf("superblock requires recovery passes %#x unknown to this build: %w", unknown, format.ErrCorrupt)
	}
	return nil
}

// RequirePasses sets passes to run at the next mount; it is persisted by the
// next commit.
func (e *Engine) RequirePasses(ids ...uint) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	for _, id := range ids {
		e.super.RecoveryPasses |= 1 << id
	}
	if e.txn != nil {
		e.txn.superDirty = true
	}
}

func passCheckAllocations(ctx context.Context, e *Engine) error {
	snap := &Snapshot{e: e, v: e.committed}
	var first *Finding
	n := 0
	_, err := snap.Check(ctx, func(f Finding) {
		if f.ID >= ErrAllocMissing && first == nil {
			ff := f
			first = &ff
		}
		if f.ID >= ErrAllocMissing {
			n++
		}
	})
	if err != nil {
		return err
	}
	if first != nil {
		return fmt.Errorf("%d allocation inconsistencies, first: %s: %w", n, first, format.ErrCorrupt)
	}
	return nil
}

// CountError records n occurrences of error id in the superblock's error
// section (persisted by the next commit). It is safe to call from inside
// Update and View.
func (e *Engine) CountError(id ErrorID, n uint64) {
	e.errMu.Lock()
	e.errCounts = append(e.errCounts, countedError{id: uint32(id), n: n, at: time.Now()})
	e.errMu.Unlock()
}

type countedError struct {
	id uint32
	n  uint64
	at time.Time
}

// takeErrorCounts moves counted errors into the superblock; wmu held.
func (e *Engine) takeErrorCounts() bool {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	for _, c := range e.errCounts {
		e.super.CountError(c.id, c.n, c.at)
	}
	had := len(e.errCounts) > 0
	e.errCounts = e.errCounts[:0]
	return had
}
