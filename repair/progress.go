package repair

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
)

// Progress of a scrub, and its pause and cancel switches.
//
// Work is counted in units: one per metadata item the check walks, one per
// 4 KiB block of file data the data scrub reads. The total is known before
// each part starts (the items the root tree records, the blocks of the
// regular files' sizes), so the percentage is done/total of the first
// pass over the filesystem — the check, and with --data the data scrub.
// Repairs and the checks after them come after 100%: the phase says what
// runs then. A pause takes effect at the next unit of work, phase
// boundary (each repair is a phase) or the end of the first pass: a
// repair that has started runs to its end, and a paused run does not
// finish until resumed. Once the run's work has ended — its first pass
// done with nothing to repair after it, or the run returned — there is
// nothing left for a pause to hold: Pause and Cancel refuse (Ended says
// so, and with what outcome), and a pause taken just before is dropped,
// so a run that finished its work never ends paused. Done never exceeds the total (a file that grew meanwhile is
// not counted past it) and never goes backwards, so neither does the
// percentage.
//
// Bytes counts what was read (metadata blocks and file data), for the
// rate.
//
// A ScrubControl is safe for concurrent use: the scrub ticks it from its
// goroutine, any other reads it, pauses, resumes or cancels.
type ScrubControl struct {
	mu      sync.Mutex
	resumed *sync.Cond
	phase   string
	done    uint64
	total   uint64
	bytes   uint64
	started time.Time
	// parts are the parts of the pass running side by side (the check
	// and the data scrub), whose names the phase joins (partStart).
	parts    []string
	paused   bool
	pausedAt time.Time
	pausedD  time.Duration // time spent paused so far
	// The current phase's start: its time (less pauses before it) and
	// the units done then, for the phase's own rate.
	phaseAt   time.Duration
	phaseDone uint64
	cancel    context.CancelFunc
	now       func() time.Time
	// ended: the run's work has ended (no pause point follows); outcome
	// is its report's status, "interrupted" or "failed" once the run
	// returned ("" before).
	ended   bool
	outcome string
	// afterWork, if set (tests), is called right after the first pass's
	// last unit of work, with the run held there until it returns.
	afterWork func()
	// partStarted, if set (tests), is called after each partStart with
	// the parts then running, the part held there until it returns.
	partStarted func(parts []string)

	// Pacing of the data scrub (SetRate).
	rate      Rate
	tokens    float64   // bytes that may be read now
	refilled  time.Time // when tokens was last refilled
	busySeen  uint64    // the activity counter last seen
	busyUntil time.Time // foreground activity seen: back off until then
	throttled time.Duration
}

// Rate limits the data a scrub reads.
type Rate struct {
	// BytesPerSec caps the rate (0: no cap).
	BytesPerSec float64
	// Auto backs off while Activity moves: the scrub then reads at most
	// AutoFloor bytes a second (so it still finishes), and at full speed
	// (or BytesPerSec) once Activity has stood still for AutoQuiet.
	Auto     bool
	Activity func() uint64
}

// Adaptive mode's parameters.
const (
	AutoFloor = 8 << 20                // bytes a second while programs write
	AutoQuiet = 200 * time.Millisecond // how long the activity must stand still
	rateBurst = 256 << 10              // bytes read at once before pacing starts
)

// ParseRate parses a rate: "" (no limit), "auto" (adaptive), a rate of
// bytes a second ("200M", "1.5GiB", "200MB/s": SI or binary units, as
// go-humanize reads them), or "auto," and a rate (adaptive, capped).
func ParseRate(s string) (Rate, error) {
	var r Rate
	s = strings.TrimSpace(s)
	if s == "" {
		return r, nil
	}
	if rest, ok := strings.CutPrefix(s, "auto"); ok {
		r.Auto = true
		s = strings.TrimSpace(strings.TrimPrefix(rest, ","))
		if s == "" {
			return r, nil
		}
	}
	n, err := humanize.ParseBytes(strings.TrimSuffix(s, "/s"))
	if err != nil || n == 0 {
		return Rate{}, fmt.Errorf("rate %q: want auto, a rate such as 200M (bytes a second), or auto,200M", s)
	}
	r.BytesPerSec = float64(n)
	return r, nil
}

// SetRate sets the rate limit of the run's data scrub.
func (c *ScrubControl) SetRate(r Rate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rate = r
	c.tokens, c.refilled = rateBurst, c.now()
}

// pace sleeps as long as reading n more bytes needs to keep to the rate.
func (c *ScrubControl) pace(n uint64) {
	if c == nil || n == 0 {
		return
	}
	c.mu.Lock()
	r := c.rate
	if r.BytesPerSec == 0 && !r.Auto {
		c.mu.Unlock()
		return
	}
	now := c.now()
	limit := r.BytesPerSec
	if r.Auto && r.Activity != nil {
		if a := r.Activity(); a != c.busySeen {
			c.busySeen, c.busyUntil = a, now.Add(AutoQuiet)
		}
		if now.Before(c.busyUntil) && (limit == 0 || limit > AutoFloor) {
			limit = AutoFloor
		}
	}
	if limit == 0 {
		c.mu.Unlock()
		return
	}
	c.tokens = min(rateBurst, c.tokens+now.Sub(c.refilled).Seconds()*limit)
	c.refilled = now
	c.tokens -= float64(n)
	var wait time.Duration
	if c.tokens < 0 {
		wait = time.Duration(-c.tokens / limit * float64(time.Second))
		c.throttled += wait
	}
	c.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}

// NewScrubControl returns a control for one scrub run; cancel, if set, is
// what Cancel calls (the run's context).
func NewScrubControl(cancel context.CancelFunc) *ScrubControl {
	c := &ScrubControl{cancel: cancel, now: time.Now}
	c.resumed = sync.NewCond(&c.mu)
	c.started = c.now()
	return c
}

// ScrubProgress is a snapshot of a run's progress.
type ScrubProgress struct {
	Phase   string  `json:"phase"`
	Paused  bool    `json:"paused"`
	Done    uint64  `json:"done"`
	Total   uint64  `json:"total"`
	Percent float64 `json:"percent"`
	// ETAS is the estimated seconds left of the first pass (-1 while
	// unknown: too early to say, or paused).
	ETAS       float64 `json:"eta_s"`
	RateBytesS float64 `json:"rate_bytes_s"`
	BytesRead  uint64  `json:"bytes_read"`
	ElapsedS   float64 `json:"elapsed_s"`
	PausedForS float64 `json:"paused_for_s"`
	// ThrottledS is the time the rate limit made the run wait.
	ThrottledS float64 `json:"throttled_s"`
	// Rate is the limit: "" (none), "auto", a rate in bytes a second,
	// or "auto" with a cap ("auto, 200 MiB/s").
	RateLimit string `json:"rate_limit,omitempty"`
	// WorkEnded: the run's work has ended (it is making or recording its
	// report); it can no longer be paused or cancelled.
	WorkEnded   bool   `json:"work_ended,omitempty"`
	UnitsDetail string `json:"units"`
}

// unitsDetail says what done and total count.
const unitsDetail = "metadata items checked plus 4 KiB blocks of file data read"

// phaseStart begins a part of the first pass that adds n units (or, n 0,
// a phase after it).
func (c *ScrubControl) phaseStart(name string, n uint64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	for c.paused { // a paused run starts no phase: each is a point where a pause takes effect
		c.resumed.Wait()
	}
	c.phase, c.parts = name, nil
	c.total += n
	c.phaseAt, c.phaseDone = c.activeLocked(c.now()), c.done
	c.mu.Unlock()
}

// partStart begins a part of the pass that may run beside another (the
// check and the data scrub of one pass): the phase names every part
// running, in alphabetical order joined by " and " ("check and data",
// "recheck and recheck data"), or the part alone, as phaseStart would.
// Like phaseStart it is a point where a pause takes effect. partEnd ends
// the part: the phase then names those still running (the last one's name
// stays once none is). Each change of the parts restarts the phase's own
// rate, which the estimate uses.
func (c *ScrubControl) partStart(name string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	for c.paused {
		c.resumed.Wait()
	}
	c.parts = append(c.parts, name)
	c.partsChangedLocked()
	hook, parts := c.partStarted, slices.Clone(c.parts)
	c.mu.Unlock()
	if hook != nil {
		hook(parts)
	}
}

// partEnd ends the part partStart began.
func (c *ScrubControl) partEnd(name string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if i := slices.Index(c.parts, name); i >= 0 {
		c.parts = slices.Delete(c.parts, i, i+1)
		if len(c.parts) > 0 {
			c.partsChangedLocked()
		}
	}
	c.mu.Unlock()
}

func (c *ScrubControl) partsChangedLocked() {
	names := slices.Sorted(slices.Values(c.parts))
	c.phase = strings.Join(names, " and ")
	c.phaseAt, c.phaseDone = c.activeLocked(c.now()), c.done
}

// finishPass marks the first pass complete: done = total. With final
// (nothing is repaired after it) the run's work has ended there: in the
// same step, so that no pause is taken after the last point that could
// hold it. A run cancelled before that step (ctx) ends there instead,
// with ctx's error: a Cancel either comes first and interrupts the run,
// or comes after and is refused.
func (c *ScrubControl) finishPass(ctx context.Context, final bool) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	for c.paused { // nor ends its first pass
		c.resumed.Wait()
	}
	if err := ctx.Err(); err != nil {
		c.mu.Unlock()
		return err
	}
	c.done = c.total
	if final {
		c.ended = true
	}
	hook := c.afterWork
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	return nil
}

// end marks the run returned with rep and err (Scrub's), its outcome the
// report's status, "interrupted" or "failed". A pause taken after the
// run's last pause point (there was nothing left to hold) is dropped:
// the run ends not paused.
func (c *ScrubControl) end(rep *Report, err error) {
	if c == nil {
		return
	}
	outcome := "failed"
	switch {
	case rep != nil && rep.Interrupted:
		outcome = "interrupted"
	case rep != nil && err == nil:
		outcome = rep.Status
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused {
		c.paused = false
		c.pausedD += c.now().Sub(c.pausedAt)
		c.resumed.Broadcast()
	}
	c.ended, c.outcome = true, outcome
}

// Ended reports whether the run's work has ended (Pause, Resume and
// Cancel then refuse), and its outcome once the run has returned: its
// report's status ("clean", "corrected", ...), "interrupted" or "failed"
// ("" while the run is still making its report).
func (c *ScrubControl) Ended() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended, c.outcome
}

// tick counts one unit of work done and bytes read, waiting first while
// the run is paused (the unit it counts is then done after the pause).
func (c *ScrubControl) tick(bytes uint64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	for c.paused {
		c.resumed.Wait()
	}
	if c.done < c.total {
		c.done++
	}
	c.bytes += bytes
	c.mu.Unlock()
}

// addBytes counts bytes read without a unit of work.
func (c *ScrubControl) addBytes(n uint64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.bytes += n
	c.mu.Unlock()
}

// String describes the limit ("" for none).
func (r Rate) String() string {
	var s string
	if r.BytesPerSec > 0 {
		s = fmt.Sprintf("%.0f bytes/s", r.BytesPerSec)
	}
	if r.Auto {
		if s != "" {
			return "auto, at most " + s
		}
		return "auto"
	}
	return s
}

// Pause makes the run stop at its next unit of work until Resume. It
// reports false if the run was paused already, or its work has ended
// (Ended tells which).
func (c *ScrubControl) Pause() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused || c.ended {
		return false
	}
	c.paused, c.pausedAt = true, c.now()
	return true
}

// Resume lets a paused run go on. It reports false if it was not paused.
func (c *ScrubControl) Resume() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.paused {
		return false
	}
	c.paused = false
	c.pausedD += c.now().Sub(c.pausedAt)
	c.resumed.Broadcast()
	return true
}

// Cancel stops the run (resuming it first if paused): it returns its
// partial report, marked interrupted. It reports false, and cancels
// nothing, if the run's work has ended: its outcome stands.
func (c *ScrubControl) Cancel() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	if c.paused {
		c.paused = false
		c.pausedD += c.now().Sub(c.pausedAt)
		c.resumed.Broadcast()
	}
	if c.cancel != nil {
		c.cancel() // under mu: finishPass sees it, or Cancel sees the work ended
	}
	return true
}

// activeLocked is the time the run has been working (not paused) at now.
func (c *ScrubControl) activeLocked(now time.Time) time.Duration {
	paused := c.pausedD
	if c.paused {
		paused += now.Sub(c.pausedAt)
	}
	return now.Sub(c.started) - paused
}

// Progress returns the run's progress now.
func (c *ScrubControl) Progress() ScrubProgress {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	paused := c.pausedD
	if c.paused {
		paused += now.Sub(c.pausedAt)
	}
	active := now.Sub(c.started) - paused
	p := ScrubProgress{Phase: c.phase, Paused: c.paused, Done: c.done, Total: c.total,
		BytesRead: c.bytes, ElapsedS: now.Sub(c.started).Seconds(), PausedForS: paused.Seconds(),
		ETAS: -1, UnitsDetail: unitsDetail, ThrottledS: c.throttled.Seconds(), RateLimit: c.rate.String(),
		WorkEnded: c.ended}
	if c.total > 0 {
		p.Percent = 100 * float64(c.done) / float64(c.total)
	}
	if active > 0 {
		p.RateBytesS = float64(c.bytes) / active.Seconds()
	}
	// The estimate: the units left at the current phase's own rate (a
	// metadata item and a block of file data cost very different times;
	// the units left are mostly of the current phase's kind, all of them
	// in the data scrub, which is last), or the whole run's while the
	// phase is too young to say. Said once a twentieth of the work is
	// done (earlier figures mostly measure start-up).
	if !c.paused && c.total > 0 && c.done*20 >= c.total && c.done > 0 {
		rate := float64(c.done) / active.Seconds()
		if pd, pt := c.done-c.phaseDone, (active - c.phaseAt).Seconds(); pd*50 >= c.total && pt > 0 {
			rate = float64(pd) / pt
		}
		p.ETAS = float64(c.total-c.done) / rate
	}
	return p
}
