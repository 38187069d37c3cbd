package xfile

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoSpace means the xfile could not grow or back its pages: the
	// temporary directory's filesystem is full (ENOSPC), a quota is exhausted
	// (EDQUOT), the file size limit is reached (EFBIG), or the address space
	// for the mapping is exhausted (ENOMEM). The original errno is wrapped too.
	ErrNoSpace = errors.New("no space for xfile")

	// ErrTempDir means no temporary file could be created in the directory:
	// it is missing, not a directory, or not writable.
	ErrTempDir = errors.New("cannot create xfile in temporary directory")

	// ErrRange means an offset, length, or record index lies outside the
	// valid range (negative, past the end, past the maximum size, or
	// overflowing).
	ErrRange = errors.New("xfile access out of range")

	// ErrRecordSize means a record buffer has the wrong length for the Array.
	ErrRecordSize = errors.New("xfile record has wrong size")

	// ErrClosed means the File or Array has been closed.
	ErrClosed = errors.New("xfile closed")
)

// isNoSpace reports whether err is an errno that means "cannot get more
// space or address space".
func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) ||
		errors.Is(err, unix.EFBIG) || errors.Is(err, unix.ENOMEM)
}

// wrapErr attaches the file name and operation to err, classifying space
// errors as ErrNoSpace.
func (f *File) wrapErr(op string, err error) error {
	if isNoSpace(err) {
		return fmt.Errorf("%s: %s: %w: %w", f.name, op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %s: %w", f.name, op, err)
}

func (f *File) rangeErr(op string, off, n int64) error {
	return fmt.Errorf("%s: %s [%d, +%d) with size %d: %w", f.name, op, off, n, f.Size(), ErrRange)
}
