//go:build !linux

package disk

import "os"

// fdatasync falls back to fsync where fdatasync is not available.
func fdatasync(f *os.File) error {
	return f.Sync()
}

// blockDeviceSize sizes a block device by seeking to its end.
func blockDeviceSize(f *os.File) (int64, error) {
	return seekEndSize(f)
}

// lockFile is a no-op where flock is not used.
func lockFile(f *os.File, exclusive bool) error { return nil }

// writeback has no portable equivalent: the next Flush does the work.
func writeback(f *os.File, off, n int64, wait bool) error { return nil }

// willNeed has no portable equivalent: reads go to the device as asked.
func willNeed(f *os.File, off, n int64) error { return nil }
