package repair

import (
	"context"
	"fmt"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// The block-count repair (inode_blocks): a regular file's block count is
// the sum of the counts of its file extent items, in every committed
// generation and after every change in the running transaction (a write,
// truncate, clone, write-out of buffered data or log replay stores the
// item with the new count beside the items it changes; buffered blocks
// are counted in memory only). The count is derived data, read by
// nothing but stat: setting it from the extent items loses nothing.
//
// It scans a pinned generation for the files whose count is wrong: each
// regular file's item against its extent items (one lookup per file, no
// table of the image's inodes in memory). Then, in one transaction, it
// reads each such file's item and extent items again from the running
// transaction, where they agree as they do in a committed generation,
// and sets the count to what the items map. A file whose extent items
// cannot all be read keeps its count: the extent repair comes first
// (its row is before the inode row), and a count made from part of a
// file would be wrong again. So are the files of a subvolume being
// deleted or a snapshot being filled (settledInodes) left alone.

// repairBlocks sets the block count of every regular file whose count
// differs from the blocks its extent items map.
func repairBlocks(ctx context.Context, e *engine.Engine) (*RebuildReport, error) {
	start := time.Now()
	if err := e.Sync(); err != nil {
		return nil, err
	}
	pin := e.Pin()
	gen := pin.Gen()
	cands, err := wrongBlockCounts(ctx, pin)
	settled := settledInodes(pin) // subvol.go
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan block counts at generation %d: %w", gen, err)
	}
	var changes []string
	var fixed uint64
	held := time.Now()
	if len(cands) > 0 {
		err = e.Update(func(tx *engine.Tx) error {
			held = time.Now()
			changes, fixed = nil, 0
			for _, ino := range cands {
				if !settled(ino) {
					continue
				}
				in, err := inodeIn(tx, ino)
				if err != nil {
					return err
				}
				if in == nil || in.Mode&modeType != modeReg {
					continue // freed since
				}
				n, ok, err := txMappedBlocks(tx, ino)
				if err != nil {
					return err
				}
				if !ok || n == in.Blocks {
					continue
				}
				if _, _, err := fs.SetBlocks(tx, ino, n); err != nil {
					return err
				}
				changes = append(changes, fmt.Sprintf("inode %d: block count %d, its file extent items map %d: set", ino, in.Blocks, n))
				fixed++
			}
			return nil
		})
	}
	pause := time.Since(held)
	if err != nil {
		return nil, err
	}
	if fixed > 0 {
		if err := e.Sync(); err != nil {
			return nil, err
		}
	}
	return &RebuildReport{Structure: "inode", Action: "fixed block counts", Gen: uint64(gen), Records: fixed,
		DurationS: time.Since(start).Seconds(), PauseMs: float64(pause.Microseconds()) / 1000, Changes: changes}, nil
}

// wrongBlockCounts returns, in inode order, the regular files of s whose
// block count differs from the blocks their extent items map, leaving
// out those whose extent items cannot all be read.
func wrongBlockCounts(ctx context.Context, s *engine.Snapshot) ([]uint64, error) {
	itr, ok := s.ScanTree(format.TreeInode)
	if !ok {
		return nil, nil
	}
	etr, ok := s.Tree(format.TreeExtent)
	if !ok {
		return nil, nil
	}
	var out []uint64
	var ferr error
	n := 0
	err := itr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if n++; n%1024 == 0 {
			if ferr = ctx.Err(); ferr != nil {
				return false
			}
		}
		if k.Type != format.TypeInodeItem {
			return true
		}
		in, err := format.DecodeInodeItem(v)
		if err != nil || in.Mode&modeType != modeReg {
			return true // the walk's finding, not this repair's
		}
		sum, ok, err := sumExtents(etr.Ascend, k.Obj)
		if err != nil {
			ferr = err
			return false
		}
		if ok && sum != in.Blocks {
			out = append(out, k.Obj)
		}
		return true
	})
	if err == nil {
		err = ferr
	}
	return out, err
}

// txMappedBlocks returns the blocks ino's extent items map in tx; ok is
// false when one of them does not decode.
func txMappedBlocks(tx *engine.Tx, ino uint64) (uint64, bool, error) {
	etr, ok := tx.ReadTree(format.TreeExtent)
	if !ok {
		return 0, true, nil
	}
	return sumExtents(etr.Ascend, ino)
}

// sumExtents sums the counts of ino's file extent items, read through
// ascend (a tree's Ascend); ok is false when one does not decode.
func sumExtents(ascend func(format.Key, func(format.Key, []byte) bool) error, ino uint64) (sum uint64, ok bool, err error) {
	ok = true
	err = ascend(format.FileExtentKey(ino, 0), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeFileExtent {
			return false
		}
		fe, derr := format.DecodeFileExtent(v)
		if derr != nil {
			ok = false
			return false
		}
		sum += fe.Count
		return true
	})
	return sum, ok, err
}

// withBlocks folds the block-count repair's report into the link-count
// repair's (the inode row runs both).
func withBlocks(nl, bl *RebuildReport) *RebuildReport {
	if bl.Records == 0 {
		return nl
	}
	if nl.Records == 0 {
		nl.Action = bl.Action
	} else {
		nl.Action = "fixed block counts and link counts"
	}
	nl.Records += bl.Records
	nl.PauseMs += bl.PauseMs
	nl.Changes = append(bl.Changes, nl.Changes...)
	return nl
}
