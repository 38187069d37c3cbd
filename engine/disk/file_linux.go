package disk

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdatasync flushes file data and the metadata needed to read it back,
// retrying if a signal interrupts it.
func fdatasync(f *os.File) error {
	return retryEINTR(f, "fdatasync", unix.Fdatasync)
}

// retryEINTR runs call on f's descriptor, again as long as a signal
// interrupts it, and names the system call in its error.
func retryEINTR(f *os.File, name string, call func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for {
			serr = call(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &os.SyscallError{Syscall: name, Err: serr}
	}
	return nil
}

// blockDeviceSize asks the kernel for the size of a block device
// (BLKGETSIZE64), falling back to seeking to the end.
func blockDeviceSize(f *os.File) (int64, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var size uint64
	var errno unix.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	})
	if err == nil && errno == 0 && size <= 1<<63-1 {
		return int64(size), nil
	}
	return seekEndSize(f)
}

// lockFile takes a non-blocking flock on f: exclusive for read-write use,
// shared for read-only, so two processes never write one image at once and
// no one reads an image another process is writing through a mount.
func lockFile(f *os.File, exclusive bool) error {
	how := unix.LOCK_SH | unix.LOCK_NB
	if exclusive {
		how = unix.LOCK_EX | unix.LOCK_NB
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			lerr = unix.Flock(int(fd), how)
			if lerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if lerr == unix.EWOULDBLOCK {
		return ErrBusy
	}
	if lerr != nil {
		return &os.SyscallError{Syscall: "flock", Err: lerr}
	}
	return nil
}

// writeback writes back the dirty pages of [off, off+n) (sync_file_range):
// it starts the writes and, with wait, waits for them.
func writeback(f *os.File, off, n int64, wait bool) error {
	flags := unix.SYNC_FILE_RANGE_WRITE
	if wait {
		flags |= unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	}
	return retryEINTR(f, "sync_file_range", func(fd int) error {
		return unix.SyncFileRange(fd, off, n, flags)
	})
}

// willNeed advises the kernel that [off, off+n) will be read
// (posix_fadvise WILLNEED): it starts reading the range into the page
// cache and returns.
func willNeed(f *os.File, off, n int64) error {
	return retryEINTR(f, "fadvise", func(fd int) error {
		return unix.Fadvise(fd, off, n, unix.FADV_WILLNEED)
	})
}
