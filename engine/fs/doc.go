// Package fs is the filesystem on the scrubd engine: inodes, directories,
// hard links, symlinks, sparse files with per-block data checksums, and
// fast fsync through the engine's log.
//
// Guarantees:
//
//   - Every method is safe for concurrent use, and reads see earlier
//     writes (read-your-writes) before any commit.
//   - A read returns the bytes written or EIO, never wrong bytes: every data
//     block is checked against its crc32c, and a mismatch is counted in the
//     superblock's error section (id 60, data_checksum).
//   - Fsync returns only when the file's data and attributes are durable: a
//     crash at any later point, and a mount of what is left, shows the file
//     at least as it was at the fsync. Writes are durable at the next commit
//     (Sync, the periodic commit, Close) otherwise.
//   - Inode numbers are never reused; an inode unlinked while open lives
//     until its last Release (or the next mount after a crash).
//
// Errors are syscall.Errno values, possibly wrapped with detail; Errno
// extracts the value.
package fs
