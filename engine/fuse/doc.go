// Package fuse serves a scrubd filesystem (engine/fs) to ordinary programs
// through FUSE, with github.com/hanwen/go-fuse/v2.
//
// What it guarantees:
//
//   - Every FUSE request maps to one call of the engine/fs API (plus, for
//     a create, the open count of the new file). Nothing is cached or
//     buffered here: when a request is answered, the engine has done it,
//     so fsync(2) through the mount is the engine's fsync, and a crash of
//     the serving process loses only what the engine would lose.
//   - Inode numbers are the engine's (StableAttr.Ino, st_ino), and the
//     NFS-style generation is the inode's creation generation. Hard links
//     are one kernel inode.
//   - Every open file and directory handle holds an engine open count
//     (fs.Open at open, fs.Release when the kernel releases the handle), so
//     a file unlinked while open stays readable and writable through its
//     descriptors, and is freed at the last close (or, after a crash, at the
//     next mount).
//   - Errors are the engine's errno values; operational failures (EIO) are
//     logged to Options.Logger with their cause.
//   - A full disk is ENOSPC, not a lost transaction: writes check for space
//     first and keep a reserve for metadata (space.go explains why the
//     engine needs this), committing to reclaim space freed since the last
//     commit when that makes room.
//   - Permissions are checked by the kernel (default_permissions) against
//     the mode, owner and group the engine stores; new inodes belong to the
//     caller, and inherit the group of a set-group-ID directory.
//
// Kernel caching: entries and attributes are cached for Options.EntryTimeout
// and Options.AttrTimeout (1s by default). A change made through the mount
// updates what the kernel cached (from the replies); an online repair, which
// changes the image underneath, makes the mount drop the kernel's cache at
// once (notify.go). Failed lookups are not cached by default. No page cache
// is kept across opens.
//
// Unmounting: Server.Unmount unmounts cleanly and fails while the mount is
// busy; Server.Run unmounts when its context ends, and if the mount is busy
// it detaches it lazily and keeps serving the open files until they close.
// The caller owns the fs.FS and closes (commits) it after the server is done.
package fuse
