package engine

import (
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// Reads for the data scrub (repair/datascrub.go): file data straight from
// the device, in large runs, for the blocks a pinned generation maps. The
// pin is what makes such a read safe while writers go on: a block that
// generation references is not reused until the pin is released, so what
// is read is what the generation's checksums describe.

// ReadData reads len(buf)/BlockSize blocks starting at block at into buf,
// verifying nothing. The range must lie inside the filesystem; buf must be
// a whole number of blocks. It is safe to call from several goroutines.
func (s *Snapshot) ReadData(at format.BlockNr, buf []byte) error {
	n := uint64(len(buf)) / format.BlockSize
	if uint64(len(buf))%format.BlockSize != 0 || n == 0 {
		return fmt.Errorf("read of %d bytes at block %d: not a whole number of blocks", len(buf), at)
	}
	if uint64(at) >= s.e.totalBlocks || n > s.e.totalBlocks-uint64(at) {
		return fmt.Errorf("blocks %d+%d are beyond the filesystem's %d blocks: %w", at, n, s.e.totalBlocks, format.ErrCorrupt)
	}
	if _, err := s.e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
		return fmt.Errorf("read data blocks %d+%d: %w", at, n, err)
	}
	return nil
}

// TotalBlocks is the size of the snapshot's filesystem in blocks.
func (s *Snapshot) TotalBlocks() uint64 { return s.e.totalBlocks }
