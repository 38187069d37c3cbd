//go:build !linux

package disk

import "io/fs"

// allocated is unknown off Linux.
func allocated(fs.FileInfo) (int64, bool) { return 0, false }
