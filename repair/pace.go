package repair

import (
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Pacing and timing shared by every online rebuild.
//
// A rebuild runs beside the writers it protects, so it takes what they
// leave: the scan and the bulk load run at the lowest CPU priority
// (lowPriority) and sleep a share of their time (throttle); every change
// it makes goes through ordinary transactions in updates of at most
// updateChunk items, writers running between them (commitBatch), and its
// commits are spaced by a rest (commitPaced). The numbers below were
// measured on the rmap rebuild (docs/benchmarks.md); the other rebuilds
// share them because what bounds them — how long an update holds the
// writer lock, how much a commit writes out — does not depend on the tree.
//
// RebuildResult is what every rebuild reports, with the time and the
// longest writer-lock hold of each of its phases.

// RebuildOptions configure an online rebuild.
type RebuildOptions struct {
	TempDir string  // directory for the xfiles; "" means anonymous memory
	Fill    float64 // bulk-load fill factor; 0 means 0.9
	// Yield is the share of the scan's time spent sleeping, leaving the
	// CPU to writers: 0 means DefaultYield, negative means none.
	Yield float64
}

// withDefaults fills in the zero options.
func (o RebuildOptions) withDefaults() RebuildOptions {
	if o.Fill == 0 {
		o.Fill = 0.9
	}
	if o.Yield == 0 {
		o.Yield = DefaultYield
	}
	return o
}

// scanThrottle is the throttle for a scan under these options.
func (o RebuildOptions) scanThrottle() *throttle { return &throttle{yield: min(o.Yield, 0.9)} }

// DefaultYield lets the scan use about 80% of one core's time (it also runs
// at the lowest CPU priority).
const DefaultYield = 0.2

// throttle sleeps for yield/(1-yield) of the time worked since the last
// sleep, once at least yieldQuantum has been worked: fewer, longer sleeps,
// because every wake-up of a low-priority thread on a busy machine costs
// far more than the sleep asked for (with 1 ms slices, a yield of 0.2
// doubled the scan's time instead of adding a quarter).
type throttle struct {
	yield float64
	since time.Time
	n     int
}

const yieldQuantum = 20 * time.Millisecond

func (t *throttle) tick() {
	if t.yield <= 0 {
		return
	}
	if t.n++; t.n%256 != 0 {
		return
	}
	if t.since.IsZero() {
		t.since = time.Now()
		return
	}
	worked := time.Since(t.since)
	if worked < yieldQuantum {
		return
	}
	time.Sleep(time.Duration(float64(worked) * t.yield / (1 - t.yield)))
	t.since = time.Now()
}

// Batch sizes of the reservation and the reaping: each batch is one
// commit. Its delayed refs are applied in slices that writers run between,
// and its blocks are queued in updates of updateChunk, so what bounds a
// batch is the commit's write-out, which writers' fsyncs contend with;
// fewer, larger batches write the alloc, rmap and free-space leaves they
// share fewer times (at 10M extents, when the reservation still followed
// the scan, 2048 → 8192 took it from 8.4 s to 3.0 s and the reaping from
// 3.6 s to 2.5 s). Alongside the scan the same holds: at 10M, paced
// batches of 4096 ran the rebuild in 47 s with the writer at 8,266 ops/s,
// batches of 8192 in 42 s at 11,589 ops/s (every commit copies the
// writer's tree paths anew).
const (
	reserveBatch = 8192
	reapBatch    = 8192
)

// maxPace bounds the rest commitPaced leaves writers after a commit.
const maxPace = 50 * time.Millisecond

// updateChunk bounds how many items of a batch one update handles: an
// update holds writers out. One that reserved 8192 blocks held them 10-34
// ms (the longest writer operation of a 1M rebuild, once the reservation
// ran alongside the scan); with 1024, reservation updates were still the
// longest holds of the scan phase, 27-41 ms, when the scheduler or the GC
// stretched them; with 256 none of three 1M runs or a 10M run had one over
// 25 ms (the holds timed by engine.HoldWatch).
const updateChunk = 256

// commitPaced runs fn in an update and commits, then rests a quarter as
// long as that took (at most maxPace). The batch holds writers out while
// it queues its updates and while the commit is prepared; the slices in
// which its delayed refs are applied rest on their own when writers wait,
// and writers' fsyncs go on during its write-out, so the rest only spaces
// the batches. (Before fsyncs could append during a write-out, a rest half
// as long as the batch kept writers at 45-57% of idle through the
// reservation at 1M; a full-length one at 75-80%, in twice the time.)
func commitPaced(e *engine.Engine, fn func(tx *engine.Tx) error) error {
	return commitBatch(e, 1, true, func(tx *engine.Tx, _, _ int) error { return fn(tx) })
}

// commitBatch runs fn on the items [from, to) of a batch of n, at most
// updateChunk at a time, each part in an update of its own (writers run
// between them; a commit may fall between them too, so each part must
// stand on its own), then commits. Paced, it then rests as commitPaced
// does.
func commitBatch(e *engine.Engine, n int, paced bool, fn func(tx *engine.Tx, from, to int) error) error {
	t := time.Now()
	for from := 0; ; from += updateChunk {
		to := min(n, from+updateChunk)
		if err := e.Update(func(tx *engine.Tx) error { return fn(tx, from, to) }); err != nil {
			return err
		}
		if to >= n {
			break
		}
	}
	if err := e.Sync(); err != nil {
		return err
	}
	if paced {
		time.Sleep(min(time.Since(t)/4, maxPace))
	}
	return nil
}

// RebuildResult describes an online rebuild of one tree.
type RebuildResult struct {
	ScanGen        format.Gen    // the pinned generation scanned
	Gen            format.Gen    // the generation that committed the new tree
	Records        uint64        // records in the new tree when loaded
	Events         uint64        // hook events applied to the shadow
	NewBlocks      uint64        // blocks of the new tree
	OldBlocks      uint64        // blocks of the old tree reaped
	XfileBytes     int64         // size of the shadow's xfile
	Duration       time.Duration // whole rebuild
	ExclusivePause time.Duration // writers excluded
	// LongestHold is the longest hold of the engine's writer lock while
	// the rebuild ran, whoever held it (the rebuild's updates and
	// commits, the writers' own, the exclusive section's two holds): the
	// longest any writer could have waited for it.
	LongestHold time.Duration
	Phases      []PhaseTime // where the time went, in order
	// Unverified (the csum rebuild) are the data extents whose
	// checksums no readable record kept: computed again from the data
	// on disk, never verified against what was written.
	Unverified []UnverifiedRange
	// Salvaged counts the items of intact leaves below a damaged
	// interior node the rebuild kept exactly (salvage.go).
	Salvaged Salvaged

	clock *phaseClock // while the rebuild runs
}

// PhaseTime is one phase of a rebuild: its start (from the rebuild's
// start), its duration and the longest writer-lock hold in it.
type PhaseTime struct {
	Name        string
	Start       time.Duration
	Took        time.Duration
	LongestHold time.Duration
}

// phaseClock times the running phase of a rebuild.
type phaseClock struct {
	e     *engine.Engine
	start time.Time
	holds *engine.HoldWatch // the running phase's
}

// startRebuild starts timing a rebuild on e with its first phase. The
// caller defers stop, which ends the timing if an error ended the rebuild.
func startRebuild(e *engine.Engine, first string) *RebuildResult {
	r := &RebuildResult{clock: &phaseClock{e: e, start: time.Now()}}
	r.phase(first)
	return r
}

// phase closes the phase running since the last call and names the next
// ("" for none: the rebuild is done, its duration set).
func (r *RebuildResult) phase(next string) {
	c := r.clock
	now := time.Since(c.start)
	if n := len(r.Phases); n > 0 && c.holds != nil {
		p := &r.Phases[n-1]
		p.Took = now - p.Start
		p.LongestHold = c.holds.Stop()
		c.holds = nil
		r.LongestHold = max(r.LongestHold, p.LongestHold)
	}
	if next != "" {
		r.Phases = append(r.Phases, PhaseTime{Name: next, Start: now})
		c.holds = c.e.WatchHolds()
		return
	}
	r.Duration = now
	r.clock = nil
}

// stop stops the running phase's hold watch if an error ended the
// rebuild before its last phase.
func (r *RebuildResult) stop() {
	if r.clock != nil && r.clock.holds != nil {
		r.clock.holds.Stop()
		r.clock.holds = nil
	}
}
