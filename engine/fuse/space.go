package fuse

import "github.com/scrubd/scrubd/engine/format"

// Free space.
//
// The engine aborts its running transaction when an operation fails after
// it started changing things: everything since the last commit is dropped
// and the engine turns read-only until the next mount. A failed allocation
// is such a failure, so a write that runs out of space would cost the
// whole running transaction rather than answer ENOSPC. A full disk is an
// ordinary event, so writes check for space first:
//
//   - A write needs the blocks it spans, plus one for every block written
//     earlier and not yet allocated (engine/fs/delalloc.go), plus room
//     for the commit to write
//     the metadata blocks dirtied so far (copy-on-write), plus a reserve
//     for the metadata the write itself and the operations after it dirty
//     (the larger of reserveBlocks and 1% of the image).
//   - Blocks freed since the last commit return to the allocator only when
//     that commit is durable; if they would make room, the check commits
//     first (as btrfs commits to reclaim pinned space), so deleting files
//     on a full filesystem frees room for new writes at once.
//
// The check is not atomic with the write, and the allocator needs each
// extent contiguous, so the reserve makes an abort unlikely, not
// impossible; the engine should fail such writes cleanly instead (see the
// report that came with this package). statfs reports the reserve as not
// available (as ext4 does for its reserved blocks).

// reserveBlocks is the least number of blocks writes leave free.
const reserveBlocks = 256

func (b *bridge) reserve() uint64 {
	return max(reserveBlocks, b.fsys.Engine().TotalBlocks()/100)
}

// spanBlocks is the number of blocks a write of n bytes at off touches.
func spanBlocks(off int64, n int) uint64 {
	if n <= 0 || off < 0 {
		return 0
	}
	first := uint64(off) / format.BlockSize
	last := (uint64(off) + uint64(n) + format.BlockSize - 1) / format.BlockSize
	return last - first
}

// haveSpace reports whether a write of need blocks leaves the reserve free,
// committing first if blocks freed since the last commit would make room.
func (b *bridge) haveSpace(need uint64) bool {
	e := b.fsys.Engine()
	st := e.Stats()
	// Blocks written and not yet allocated (delayed allocation) each
	// take one when they are written out.
	want := need + b.fsys.DelayedBlocks() + uint64(st.DirtyBlocks) + b.reserve()
	if st.Allocatable >= want {
		return true
	}
	if st.Allocatable+st.PendingBlocks < want {
		return false
	}
	if err := b.fsys.Sync(); err != nil {
		b.log.Error("fuse: commit to reclaim space failed: the write gets ENOSPC", "err", err)
		return false
	}
	st = e.Stats()
	return st.Allocatable >= need+b.fsys.DelayedBlocks()+uint64(st.DirtyBlocks)+b.reserve()
}

// freeBlocks returns the blocks free now or once the running transaction
// commits, and of those the ones writes may use.
func (b *bridge) freeBlocks() (free, avail uint64) {
	st := b.fsys.Engine().Stats()
	free = st.Allocatable + st.PendingBlocks
	free -= min(free, b.fsys.DelayedBlocks())
	if r := b.reserve(); free > r {
		avail = free - r
	}
	return free, avail
}
