package engine

import (
	"testing"
	"time"
)

// A watch sees the holds that end while it runs, whoever holds the lock,
// and none before it starts or after it stops; Stats keeps the longest
// since mount. (The long holds are far longer than the short ones, so a
// slow machine stretching the short ones does not fail the test.)
func TestWriterHoldWatch(t *testing.T) {
	e, _ := newTestEngine(t, Options{CommitInterval: -1})
	hold := func(d time.Duration) {
		if err := e.Update(func(tx *Tx) error { time.Sleep(d); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	const long = 200 * time.Millisecond
	hold(long)
	w := e.WatchHolds()
	other := e.WatchHolds()
	hold(5 * time.Millisecond)
	if got := other.Stop(); got < 5*time.Millisecond || got >= long {
		t.Fatalf("second watch saw a longest hold of %v, want [5ms, %v)", got, long)
	}
	hold(10 * time.Millisecond)
	if got := w.Stop(); got < 10*time.Millisecond || got >= long {
		t.Fatalf("watch saw a longest hold of %v, want [10ms, %v): the hold before it started must not count", got, long)
	}
	hold(long)
	if got := w.Stop(); got >= long {
		t.Fatalf("stopped watch saw a hold of %v after it stopped", got)
	}
	if st := e.Stats(); st.WriterHoldMax < long {
		t.Fatalf("Stats.WriterHoldMax %v, want at least %v", st.WriterHoldMax, long)
	}
}
