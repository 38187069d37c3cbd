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

// ioClass returns the calling thread's I/O priority class (ioprio_get).
func ioClass() (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(unix.Gettid()), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r) >> ioprioClassShift, nil
}

// TestLowPriority: fn runs on a thread at nice 19 in the idle I/O class,
// its error comes back, and the caller's thread keeps its priorities.
func TestLowPriority(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nice(t)
	beforeIO, err := ioClass()
	if err != nil {
		t.Fatal(err)
	}
	var inside, insideIO int
	var perr, ioerr error
	want := errors.New("from fn")
	err = lowPriority(func() error {
		var p int
		p, perr = unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		inside = 20 - p
		insideIO, ioerr = ioClass()
		return want
	})
	if perr != nil || ioerr != nil {
		t.Fatal(perr, ioerr)
	}
	if !errors.Is(err, want) {
		t.Errorf("lowPriority returned %v, want fn's error", err)
	}
	if inside != 19 {
		t.Errorf("fn ran at nice %d, want 19", inside)
	}
	if insideIO != ioprioClassIdle {
		t.Errorf("fn ran in I/O class %d, want idle (%d)", insideIO, ioprioClassIdle)
	}
	if after := nice(t); after != before {
		t.Errorf("caller's nice %d -> %d", before, after)
	}
	if after, _ := ioClass(); after != beforeIO {
		t.Errorf("caller's I/O class %d -> %d", beforeIO, after)
	}
}
