package repair

import (
	"errors"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// nice returns the calling thread's nice value (the raw getpriority system
// call returns 20 - nice).
func nice(t *testing.T) int {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return 20 - p
}

// TestLowPriority: fn runs on a thread at nice 19, its error comes back,
// and the caller's thread keeps its priority.
func TestLowPriority(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nice(t)
	var inside int
	var perr error
	want := errors.New("from fn")
	err := lowPriority(func() error {
		var p int
		p, perr = unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		inside = 20 - p
		return want
	})
	if perr != nil {
		t.Fatal(perr)
	}
	if !errors.Is(err, want) {
		t.Errorf("lowPriority returned %v, want fn's error", err)
	}
	if inside != 19 {
		t.Errorf("fn ran at nice %d, want 19", inside)
	}
	if after := nice(t); after != before {
		t.Errorf("caller's nice %d -> %d", before, after)
	}
}
