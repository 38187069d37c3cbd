package engine

import (
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// Summary counters: the item count each root item keeps of its tree, and
// the superblock's free-block count. Both are kept incrementally (a Put
// counts one more, a Delete one less; every allocation and free moves the
// free count), so a count found wrong at one generation is wrong by the
// same amount at every later one: recounting at a pinned generation and
// correcting the live count by the difference is exact, whatever the
// writers did since. The free count is recomputed by every read-write
// open (from the allocator it loads) and by the free-space rebuild; the
// item counts by RecountItems.

// RecountItems counts the items of tree id at the last committed
// generation and, if its root item recorded another count, corrects the
// live count by the difference and commits. It returns the count
// recorded and the count found. The repair flow calls it, one repairer
// at a time: no rebuild replaces the tree while it counts (a new tree
// counts afresh, and the difference would not apply to it).
func (e *Engine) RecountItems(id format.TreeID) (recorded, found uint64, err error) {
	if e.opts.ReadOnly {
		return 0, 0, ErrReadOnly
	}
	s := e.Pin()
	t, ok := s.ScanTree(id)
	if !ok {
		s.Release()
		return 0, 0, fmt.Errorf("no tree %s", id)
	}
	recorded = t.Items
	err = t.Ascend(format.Key{}, func(format.Key, []byte) bool {
		found++
		return true
	})
	s.Release()
	if err != nil {
		return recorded, found, fmt.Errorf("count the items of tree %s: %w", id, err)
	}
	if found == recorded {
		return recorded, found, nil
	}
	err = e.Update(func(tx *Tx) error {
		tr, ok := e.trees[id]
		if !ok {
			return fmt.Errorf("no tree %s", id)
		}
		if tr.Items+found < recorded {
			return fmt.Errorf("tree %s holds %d items by its live count, fewer than its count is off by (%d): it changed under the count", id, tr.Items, recorded-found)
		}
		tx.touched = true
		tr.Items = tr.Items + found - recorded
		return nil
	})
	if err == nil {
		err = e.Sync()
	}
	return recorded, found, err
}
