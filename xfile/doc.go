// Package xfile provides memory-mapped temporary files ("xfiles") and
// fixed-size record arrays on top of them, the scratch space online repair
// uses to rebuild metadata without holding it on the Go heap. The design
// follows the xfile and xfarray of XFS online repair.
//
// # File
//
// A File is a sparse temporary file that never appears in the directory
// tree (O_TMPFILE, or create-and-unlink where that is unsupported), mapped
// read/write and shared. It grows by extending the file and mapping it again,
// geometrically and in whole pages. Its storage is freed when it is closed,
// and also if the process dies, since the file has no name.
//
// Guarantees:
//
//   - No panics and no fatal signals on bad input. Offsets or lengths that
//     are negative, past Size (for Load, Bytes, Discard), past MaxSize, or
//     overflowing return an error wrapping ErrRange.
//   - A full filesystem is an error, not a SIGBUS. Pages are reserved with
//     fallocate before they are first written through the mapping, so
//     ENOSPC, EDQUOT, EFBIG, or ENOMEM while growing or reserving surface as
//     errors wrapping ErrNoSpace (and the errno). A missing or unwritable
//     directory gives an error wrapping ErrTempDir. Test with errors.Is.
//   - Unwritten and discarded ranges read as zeros. Discard punches holes
//     (FALLOC_FL_PUNCH_HOLE), so Stats.Allocated drops.
//   - Slices from Bytes alias the mapping. They are guaranteed valid until
//     the next Grow (or Store that grows); callers re-fetch them after
//     growth. The implementation is more forgiving than that contract (old
//     views stay mapped until Close, so a stale slice never faults), but
//     callers should not depend on it. No slice may be used after Close.
//
// Memory: the mapping costs address space, not memory. What a File really
// uses is Stats.Allocated: pages written or reserved (reservation runs
// ahead of writes by at most 16 MiB), minus pages given back by Discard. The
// page cache may write dirty pages to the temporary directory's filesystem
// under memory pressure; with a tmpfs directory they go to swap instead.
//
// # Array
//
// An Array stores fixed-size records at index*size in a File: Append, Get,
// Set, Iterate, Truncate, and Sort, with uint64 indices. 100M records of
// 32 bytes are a 3.2 GB mapping and no Go heap. Sort is an in-place introsort
// on the mapping: O(n log n) comparisons on every input (sorted, reversed,
// all equal, organ pipe, few distinct keys, adversarial), O(log n) stack,
// one record-sized heap buffer. It is not stable.
//
// # BTreeStore
//
// A BTreeStore is a btree.Store on a File: node i lives at offset i*4096 and
// is updated in place, so the engine's own B-tree code (engine/btree) runs
// in memory with no Go heap per record — online repair builds its shadow
// trees this way. Reads hand out the mapping itself and check the header
// fields (magic, block, owner, generation, level, item count) but not the
// checksum: the memory is the process's own, not a disk's. Freed nodes are
// reused most recent first and hole-punched once many are free. The Go heap
// holds one bit per node.
//
// # Concurrency
//
// Neither a File nor an Array is safe for concurrent use: one goroutine at a
// time may call its methods, and the caller provides the locking (repair
// holds its shadow index under its own lock). Nothing in this package starts
// goroutines.
//
// # Platform
//
// Linux only: the package relies on O_TMPFILE, fallocate, and hole punching.
package xfile
