package repair

import (
	"os"
	"testing"
)

// checkBoundary says whether a crash test checks flush boundary k of 0..n:
// every one, except under -short — the suite's race-detector pass, where
// the detector's tenfold slowdown made these tests most of its time —
// where it checks about a dozen, evenly spread, and the last. The suite's
// pass without the race detector checks every one (and so does
// SCRUBD_CRASH_ALL=1).
func checkBoundary(k, n int) bool {
	if !testing.Short() || os.Getenv("SCRUBD_CRASH_ALL") != "" {
		return true
	}
	return k%max(1, n/12) == 0 || k == n
}

// skipShort skips a single-goroutine test in the race-detector pass
// (-short): the detector has nothing to find in it, and the suite's full
// pass runs it.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("single-goroutine and slow under the race detector: runs in the full pass")
	}
}
