package repair

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// ioprio_set(2) arguments: the idle I/O class for one thread.
const (
	ioprioWhoProcess = 1
	ioprioClassIdle  = 3
	ioprioClassShift = 13
)

// lowPriority runs fn on an OS thread of its own at the lowest CPU priority
// (nice 19) and in the idle I/O class, the way operators run xfs_scrub or
// btrfs scrub (xfs_scrub's systemd unit sets Nice=19 and
// IOSchedulingClass=idle): when writers want the CPU or the disk the kernel
// gives it to them, and the work uses what is left. (The I/O class matters
// where the scheduler honours it, mq-deadline and BFQ; the new tree's
// writes, issued from this thread, are what it affects.)
// fn must not hold a lock writers wait for (a starved holder would stall
// them). The thread is not handed back to the Go scheduler: it exits with
// the goroutine, so its priority never leaks to other goroutines (and an
// unprivileged process could not raise it again).
func lowPriority(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Best effort: if the priority cannot be set, fn runs as usual.
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		_, _, _ = unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(unix.Gettid()), ioprioClassIdle<<ioprioClassShift)
		done <- fn()
	}()
	return <-done
}
