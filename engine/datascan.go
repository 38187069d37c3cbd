package engine

import (
	"fmt"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Reads for the data scrub (repair/datascrub.go): file data straight from
// the device, in large runs, for the blocks a pinned generation maps. The
// pin is what makes such a read safe while writers go on: a block that
// generation references is not reused until the pin is released, so what
// is read is what the generation's checksums describe.
//
// On an image file or block device the reads bypass the page cache
// (disk.File.OpenDirect): the device fills the scrub's buffers directly,
// so a scrub costs no page-cache copy and no reclaim, several reads can
// be in flight at once at the size the scrub asks for (the kernel's
// readahead no longer decides it), and the pages the mount's readers use
// stay cached. The blocks are committed, hence written back before the
// pinned generation's superblock, and a direct read writes back any dirty
// page of its range first anyway: it reads what a buffered read would.
// Where direct reads are refused (tmpfs, other devices, tests' memory and
// fault-injecting devices) the reads go through the device as before; a
// direct read that fails is made again through the page cache (so errors
// are named as before), and if that one succeeds the reader stops reading
// directly.

// ReadData reads len(buf)/BlockSize blocks starting at block at into buf,
// verifying nothing. The range must lie inside the filesystem; buf must be
// a whole number of blocks. It is safe to call from several goroutines.
func (s *Snapshot) ReadData(at format.BlockNr, buf []byte) error {
	if err := s.dataRange(at, buf); err != nil {
		return err
	}
	if _, err := s.e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
		return fmt.Errorf("read data blocks %d+%d: %w", at, len(buf)/format.BlockSize, err)
	}
	return nil
}

func (s *Snapshot) dataRange(at format.BlockNr, buf []byte) error {
	n := uint64(len(buf)) / format.BlockSize
	if uint64(len(buf))%format.BlockSize != 0 || n == 0 {
		return fmt.Errorf("read of %d bytes at block %d: not a whole number of blocks", len(buf), at)
	}
	if uint64(at) >= s.e.totalBlocks || n > s.e.totalBlocks-uint64(at) {
		return fmt.Errorf("blocks %d+%d are beyond the filesystem's %d blocks: %w", at, n, s.e.totalBlocks, format.ErrCorrupt)
	}
	return nil
}

// DataReader reads a snapshot's file data in large runs, past the page
// cache where the device allows it (see above). Close it when done. It is
// safe for concurrent use.
type DataReader struct {
	s      *Snapshot
	direct *disk.DirectFile
	off    atomic.Bool // a direct read failed where a buffered one did not
}

// DataReader returns a reader of s's data blocks.
func (s *Snapshot) DataReader() *DataReader {
	r := &DataReader{s: s}
	if f, ok := s.e.dev.(*disk.File); ok {
		if d, err := f.OpenDirect(); err == nil {
			r.direct = d
		}
	}
	return r
}

// Direct says whether the reads bypass the page cache.
func (r *DataReader) Direct() bool { return r.direct != nil && !r.off.Load() }

// Buffer returns a buffer of n blocks the reader can fill.
func (r *DataReader) Buffer(n int) []byte {
	return disk.AlignedBuffer(n * format.BlockSize)
}

// Read reads len(buf)/BlockSize blocks starting at block at into buf
// (from Buffer, or any buffer if it is not aligned: that read then goes
// through the page cache), verifying nothing.
func (r *DataReader) Read(at format.BlockNr, buf []byte) error {
	if !r.Direct() {
		return r.s.ReadData(at, buf)
	}
	if err := r.s.dataRange(at, buf); err != nil {
		return err
	}
	if _, err := r.direct.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
		// The same read through the page cache names the error as
		// ReadData does; if it succeeds, direct reads are what fails
		// here, and the next reads go through the page cache.
		if err := r.s.ReadData(at, buf); err != nil {
			return err
		}
		r.off.Store(true)
	}
	return nil
}

// Close releases the reader's descriptor.
func (r *DataReader) Close() {
	if r.direct != nil {
		r.direct.Close()
	}
}

// TotalBlocks is the size of the snapshot's filesystem in blocks.
func (s *Snapshot) TotalBlocks() uint64 { return s.e.totalBlocks }
