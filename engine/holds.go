package engine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// writerLock is the writer lock (wmu): a reader/writer lock whose
// exclusive holds are timed, since a hold is what other writers wait
// behind. Stats reports the longest; a HoldWatch the longest over a span of
// its own (a rebuild's). Views share it (RLock): they only look up the
// running transaction's trees, which nothing changes while they hold it,
// and the B-tree lookups, the dirty index and the block cache are safe for
// concurrent readers. Shared holds are not timed: a view holds it only
// while it looks things up (a data read does its device read and checksum
// check after it released it, under a ReadHold). A writer waiting for it
// holds new views out (sync.RWMutex), so readers cannot starve writers.
type writerLock struct {
	mu      sync.RWMutex
	since   time.Time // when the exclusive holder took it; guarded by mu
	holds   durations
	watchMu sync.Mutex                   // serializes changes to watches
	watches atomic.Pointer[[]*HoldWatch] // read by every Unlock
}

func (l *writerLock) Lock() {
	l.mu.Lock()
	l.since = time.Now()
}

// RLock takes the lock shared (a view).
func (l *writerLock) RLock() { l.mu.RLock() }

// RUnlock releases a shared hold.
func (l *writerLock) RUnlock() { l.mu.RUnlock() }

func (l *writerLock) Unlock() {
	d := time.Since(l.since)
	l.holds.record(d)
	if ws := l.watches.Load(); ws != nil {
		for _, w := range *ws {
			w.holds.record(d)
		}
	}
	l.mu.Unlock()
}

// HoldWatch records the longest writer-lock hold from its start to Stop.
type HoldWatch struct {
	l     *writerLock
	holds durations
}

// WatchHolds starts a HoldWatch: every hold that ends before Stop counts,
// whoever held the lock (a writer's update, a commit being prepared, an
// exclusive section, a batch of delayed refs).
func (e *Engine) WatchHolds() *HoldWatch {
	w := &HoldWatch{l: &e.wmu}
	w.l.watchMu.Lock()
	defer w.l.watchMu.Unlock()
	var ws []*HoldWatch
	if old := w.l.watches.Load(); old != nil {
		ws = append(ws, *old...)
	}
	ws = append(ws, w)
	w.l.watches.Store(&ws)
	return w
}

// Stop ends the watch and returns the longest hold it saw.
func (w *HoldWatch) Stop() time.Duration {
	w.l.watchMu.Lock()
	defer w.l.watchMu.Unlock()
	if old := w.l.watches.Load(); old != nil {
		ws := make([]*HoldWatch, 0, len(*old))
		for _, x := range *old {
			if x != w {
				ws = append(ws, x)
			}
		}
		w.l.watches.Store(&ws)
	}
	_, longest := w.holds.get()
	return longest
}

// Reads out of the writer lock.
//
// A data read looks up, in a view, where the file's blocks are on the
// device and their checksums, then reads the device and checks the
// checksums after it released the writer lock, so that readers do not
// wait behind one another's device reads (nor writers behind them). The
// blocks it looked up must not be reused meanwhile: a writer may drop
// them (an overwrite, a truncate), a commit make the drop durable, and
// another write take the blocks for its data, and the reader would read
// those bytes. A ReadHold, taken in the view, keeps them: it pins the
// generation before the running one, as a Snapshot pins its own, so that
// what the running transaction (or a later one) frees stays pending until
// the hold is released; and while any hold is taken, extents that the
// running transaction allocated and frees again — which return to the
// allocator at once otherwise — wait in the pending list too, as freed by
// the running generation (releaseNew), as do the data extents an fsync log
// record kept until the commit that made the log obsolete (writeOut).
// Holds are short (one read request), so at most a commit's worth of
// freed blocks waits a little longer; nothing waits while no read is out
// of the lock.

// readHolds counts the ReadHolds taken, by the generation they pin.
type readHolds struct {
	n    atomic.Int64 // holds taken, not released
	mu   sync.Mutex
	gens map[format.Gen]int
}

// oldest returns the oldest generation a hold pins, if any.
func (r *readHolds) oldest() (format.Gen, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var g format.Gen
	ok := false
	for x := range r.gens {
		if !ok || x < g {
			g, ok = x, true
		}
	}
	return g, ok
}

// ReadHold keeps the blocks of the running transaction's trees (as a view
// saw them when it took the hold) from being reused until Release, and
// the device open. See Tx.HoldBlocks.
type ReadHold struct {
	e        *Engine
	gen      format.Gen
	released atomic.Bool
}

// HoldBlocks takes a ReadHold: in a view (or an update), before the writer
// lock is released, so that the blocks the caller looked up are still
// referenced. The caller reads them after the view returned and releases
// the hold at once (a hold delays the reuse of every block freed
// meanwhile).
func (tx *Tx) HoldBlocks() *ReadHold {
	e := tx.e
	g := e.txn.gen - 1
	e.reads.mu.Lock()
	if e.reads.gens == nil {
		e.reads.gens = map[format.Gen]int{}
	}
	e.reads.gens[g]++
	e.reads.mu.Unlock()
	e.reads.n.Add(1)
	// Close waits for it before closing the device; it cannot be waiting
	// yet (the running transaction exists: Close has not taken the writer
	// lock).
	e.flushing.RLock()
	return &ReadHold{e: e, gen: g}
}

// Release drops the hold; blocks only it kept become reusable. Releasing
// twice is harmless.
func (h *ReadHold) Release() {
	if h == nil || h.released.Swap(true) {
		return
	}
	e := h.e
	defer e.flushing.RUnlock()
	e.reads.mu.Lock()
	last := false
	if e.reads.gens[h.gen]--; e.reads.gens[h.gen] <= 0 {
		delete(e.reads.gens, h.gen)
		last = true
	}
	e.reads.mu.Unlock()
	e.reads.n.Add(-1)
	if last && e.alloc.pendingBlocks() > 0 {
		e.releaseFreed()
	}
}

// releaseNew returns to the allocator an extent the running transaction
// allocated and no longer references: at once, unless a ReadHold is taken
// (a read out of the writer lock may have looked it up): then it waits
// in the pending list as freed by the running generation. Called with wmu
// held exclusively, so no hold can be taken meanwhile.
func (e *Engine) releaseNew(start format.BlockNr, n uint64) {
	if e.reads.n.Load() > 0 {
		e.alloc.deferFree(e.txn.gen, []extent{{start, n}})
		return
	}
	e.alloc.release(start, n)
}

// releaseLogged returns the blocks a durable commit made obsolete in the
// fsync log (gen is that commit's): at once unless a ReadHold is taken
// (a logged data extent may be being read), then through the pending
// list, which releaseFreed empties as the holds go.
func (e *Engine) releaseLogged(gen format.Gen, xs []extent) {
	if e.reads.n.Load() > 0 {
		e.alloc.deferFree(gen, xs)
		return
	}
	for _, x := range xs {
		e.alloc.release(x.start, x.n)
	}
}
