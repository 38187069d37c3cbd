package fs

import (
	"fmt"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// MkfsPath makes a complete filesystem at path: the engine's image (see
// engine.MkfsPath, which it takes the options of) with its root directory,
// so every command works on it before its first mount. The root directory
// is what a first mount would create: inode RootIno, mode 0755.
func MkfsPath(path string, size int64, force bool, mo engine.MkfsOptions) error {
	if err := engine.MkfsPath(path, size, force, mo); err != nil {
		return err
	}
	f, err := OpenPath(path, Options{CommitInterval: -1})
	if err != nil {
		return fmt.Errorf("mkfs: create the root directory: %w", err)
	}
	return f.Close()
}

// MinSize is the smallest image mkfs makes, in bytes.
const MinSize = format.MinBlocks * format.BlockSize
