package repair

import (
	"time"

	"github.com/scrubd/scrubd/engine"
)

// Pacing, shared by every online rebuild: a scan that yields the CPU to
// writers (throttle), and commits in batches of short updates that rest
// between them (commitBatch, commitPaced), so writers keep running while a
// rebuild reserves, loads and reaps.

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
