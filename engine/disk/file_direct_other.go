//go:build !linux

package disk

import "errors"

// OpenDirect has no portable equivalent (O_DIRECT is Linux's): callers
// read through the File.
func (d *File) OpenDirect() (*DirectFile, error) {
	return nil, errors.New("disk: direct reads are not supported on this system")
}

// DirectFile reads a File's blocks past the page cache (Linux only).
type DirectFile struct{}

// ReadAt is never reached: OpenDirect always fails here.
func (d *DirectFile) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("disk: direct reads are not supported on this system")
}

// Close does nothing.
func (d *DirectFile) Close() error { return nil }
