package fuse

import (
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/scrubd/scrubd/engine/fs"
)

// Kernel cache invalidation.
//
// The kernel caches names (dentries) for Options.EntryTimeout and
// attributes for Options.AttrTimeout. A change made through the mount
// keeps that cache coherent by construction: the kernel updates its
// dentries from the replies to create, mkdir, link, unlink, rmdir and
// rename, and its attributes from the replies to setattr (which carry the
// new attributes) and from its own write accounting. Failed lookups are
// not cached (NegativeTimeout 0 by default), nor directory listings, and
// an open drops the file's pages.
//
// An online repair changes the image underneath: it may rebuild a
// directory (names appear, vanish or point elsewhere), reconstruct an
// inode (mode, size, owner, link count), adopt orphans into lost+found,
// or rebuild a file's extents. The repairer publishes fs.ChangedEvent
// after each rebuild it swaps in (repair/ops.go), and invalidate answers
// it by telling the kernel to drop everything it may hold: for every
// name the kernel looked up (go-fuse's Inode tree mirrors the kernel's:
// an Inode lives from a lookup until the kernel forgets it), the entry
// (FUSE_NOTIFY_INVAL_ENTRY), and for every inode the kernel knows, its
// attributes and page cache (FUSE_NOTIFY_INVAL_INODE over the whole
// file). The next access looks up and asks again. A rebuild says which
// tree it rebuilt, not which entries changed, so the invalidation is
// total; repairs are rare, and it costs two writes to /dev/fuse per
// inode the kernel holds.
//
// The event comes from the repairer's goroutine, after the rebuild is in
// the running transaction and its locks are released, and the
// notifications are synchronous: when the repair returns, the kernel has
// dropped its cache, so the change is seen at once, not after a timeout.
// (A notification waits for the directory's lock in the kernel; a request
// holding it only waits for this server, which never waits for the
// repairer, so this cannot deadlock.)

// invalidate drops every entry and attribute the kernel caches for the
// mount, and returns how many notifications the kernel took.
func (b *bridge) invalidate() (entries, inodes int) {
	if b.root == nil {
		return 0, 0
	}
	seen := map[*gofs.Inode]bool{}
	stack := []*gofs.Inode{b.root.EmbeddedInode()}
	for len(stack) > 0 {
		in := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[in] {
			continue
		}
		seen[in] = true
		for name, child := range in.Children() {
			if notified(in.NotifyEntry(name)) {
				entries++
			}
			if child.IsDir() {
				stack = append(stack, child)
			} else if !seen[child] {
				seen[child] = true
				if notified(child.NotifyContent(0, 0)) {
					inodes++
				}
			}
		}
		if notified(in.NotifyContent(0, 0)) {
			inodes++
		}
	}
	return entries, inodes
}

// notified says whether the kernel took a notification: ENOENT means it
// had forgotten the inode or name already (nothing to drop), ENOSYS that
// the mount is gone.
func notified(en syscall.Errno) bool { return en == 0 }

// watchChanges subscribes the mount to fsys's changes from outside it,
// and returns the function that ends the subscription.
func (b *bridge) watchChanges() func() {
	h := b.fsys.Changed().Register(func(ev fs.ChangedEvent) {
		ents, inos := b.invalidate()
		b.log.Debug("fuse: kernel cache dropped after a repair", "structure", ev.Structure, "entries", ents, "inodes", inos)
	})
	return func() { b.fsys.Changed().Unregister(h) }
}
