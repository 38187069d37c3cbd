package repair

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// lowPriority runs fn on an OS thread of its own at the lowest CPU priority
// (nice 19), the way operators run xfs_scrub or btrfs scrub: when writers
// want the CPU the kernel gives it to them, and the work uses what is left.
// Its I/O class stays as it is: the thread writes the new tree into the
// image writers fsync, and an fsync that must wait for idle-class writes
// of the same file behind its own class's requests is a priority inversion
// (one 10M-extent run with the idle class had a 710 ms writer operation).
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
		done <- fn()
	}()
	return <-done
}
