package engine

import (
	"sync"
	"sync/atomic"
	"time"
)

// writerLock is the writer lock (wmu): a mutex that times each hold, since
// a hold is what other writers wait behind. Stats reports the longest; a
// HoldWatch the longest over a span of its own (a rebuild's).
type writerLock struct {
	mu      sync.Mutex
	since   time.Time // when the holder took it; guarded by mu
	holds   durations
	watchMu sync.Mutex                   // serializes changes to watches
	watches atomic.Pointer[[]*HoldWatch] // read by every Unlock
}

func (l *writerLock) Lock() {
	l.mu.Lock()
	l.since = time.Now()
}

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
