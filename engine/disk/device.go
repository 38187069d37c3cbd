package disk

import (
	"errors"
	"fmt"
	"io/fs"
)

// SectorSize is the unit a device writes atomically. A write interrupted by
// a power loss keeps or loses whole sectors, never part of one.
const SectorSize = 512

// Device is all I/O the engine does. Implementations are safe for concurrent
// ReadAt calls alongside WriteAt to other offsets.
type Device interface {
	// ReadAt reads len(p) bytes at off. It returns len(p), nil or an error.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off. It returns len(p), nil or an
	// error. The write is durable only after a later Flush returns nil.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes all completed writes durable (fdatasync for files).
	Flush() error
	// Size is the device size in bytes; it never changes.
	Size() int64
	// Close releases the device. It does not flush.
	Close() error
}

// Writebacker is a Device that can write a range back ahead of a Flush
// (File does); see File.Writeback.
type Writebacker interface {
	Writeback(off, n int64, wait bool) error
}

var (
	// ErrShortIO is wrapped by errors for reads or writes the operating
	// system completed only in part.
	ErrShortIO = errors.New("disk: short I/O")
	// ErrOutOfRange is wrapped by errors for accesses with a negative
	// offset or reaching past the end of the device.
	ErrOutOfRange = errors.New("disk: access out of range")
	// ErrExists is wrapped by errors from Create when the path already
	// holds data and force was not given.
	ErrExists = errors.New("disk: device or image already exists")
	// ErrReadOnly is wrapped by errors from WriteAt on a device opened
	// read-only.
	ErrReadOnly = errors.New("disk: device is read-only")
	// ErrClosed is wrapped by errors from operations on a closed device.
	// It is fs.ErrClosed, so it matches what *os.File reports.
	ErrClosed = fs.ErrClosed
	// ErrBusy is wrapped by errors from Open and Create when another
	// process has the image open (a mount, a repair): an image is written
	// by one process at a time.
	ErrBusy = errors.New("disk: image is in use by another process")
	// ErrInjected is the error Faulty returns for a fault injected with a
	// nil error.
	ErrInjected = errors.New("disk: injected fault")
)

// checkRange reports whether an access of n bytes at off fits a device of
// size bytes. op names the access in the error ("read" or "write").
func checkRange(op string, off int64, n int, size int64) error {
	// off <= size first, so size-off cannot overflow.
	if off < 0 || off > size || int64(n) > size-off {
		return fmt.Errorf("%s %d bytes at offset %d of %d-byte device: %w", op, n, off, size, ErrOutOfRange)
	}
	return nil
}

// Compile-time checks that every device here is a Device.
var (
	_ Device = (*File)(nil)
	_ Device = (*Mem)(nil)
	_ Device = (*Recorder)(nil)
	_ Device = (*Faulty)(nil)
)
