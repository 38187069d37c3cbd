package repair

import (
	"testing"
)

// skipShort skips a single-goroutine test in the race-detector pass
// (-short): the detector has nothing to find in it, and the suite's full
// pass runs it.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("single-goroutine and slow under the race detector: runs in the full pass")
	}
}
