package repair

import (
	"fmt"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// reap frees blocks of tree (the old tree's, and the reserved ones the new
// tree did not use) once the swap has committed, a batch per transaction
// with writers running between batches (the XFS reap design). The last
// batch also drops ops, the rebuild's logged operations: until then a
// crash leaves them to the mount, which frees whatever of their blocks no
// tree reaches, so a crash at any point leaks nothing. The last batch is
// committed without the rest that spaces the others, since nothing
// follows it.
func reap(e *engine.Engine, tree format.TreeID, blocks []format.BlockNr, ops []uint64) error {
	for i := 0; ; i += reapBatch {
		part := blocks[min(i, len(blocks)):min(len(blocks), i+reapBatch)]
		last := i+reapBatch >= len(blocks)
		err := commitBatch(e, len(part), !last, func(tx *engine.Tx, from, to int) error {
			tx.FreeMeta(tree, part[from:to])
			if !last || to < len(part) {
				return nil
			}
			for _, op := range ops {
				if err := tx.DropLoggedOp(op); err != nil {
					return fmt.Errorf("drop the rebuild's logged operations: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}
