package fs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tidwall/btree"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// RootIno is the inode number of the root directory.
const RootIno = 256

// Options configure a filesystem.
type Options struct {
	// NoTreeLog makes every fsync a full commit (as btrfs's notreelog).
	NoTreeLog bool
	// NoDelayedAlloc makes every write allocate its extent at once
	// instead of buffering its blocks until the commit (delalloc.go).
	NoDelayedAlloc bool
	// MaxDelayedBlocks bounds the file blocks buffered by delayed
	// allocation, all files together; 0 means the default (32 MiB).
	MaxDelayedBlocks int
	// ReadOnly mounts without writing.
	ReadOnly bool
	// NoBackgroundFill leaves the fills of snapshots to a later open (or
	// to the snapshot_fill pass run explicitly): for tools that open an
	// image briefly, and tests that look at a snapshot mid-fill. The
	// snapshots read and copy as usual meanwhile (snapshot.go).
	NoBackgroundFill bool
	// CommitInterval is the periodic commit interval (0: engine default,
	// negative: none).
	CommitInterval time.Duration
	Logger         *slog.Logger
	// Engine passes further engine options (delayed refs, cache, …); the
	// fields above override its ReplayLog, DeletedInodes, NoLog, ReadOnly,
	// CommitInterval and Logger.
	Engine engine.Options
}

// FS is a mounted filesystem. All methods are safe for concurrent use.
type FS struct {
	e    *engine.Engine
	opts Options

	mu     sync.Mutex
	opens  map[uint64]int         // open handles per inode
	caches map[uint64]*inodeCache // extent-map caches of inodes written
	stats  Stats
	// writes counts writes, truncates and fsyncs: foreground activity a
	// scrub in adaptive mode backs off from (see Activity).
	writes atomic.Uint64
	// changed: caches of the FS dropping what repairs change (changed.go).
	changed changedChain
	// The background jobs: the subvolume reaper (subvol.go) and the
	// snapshot filler (snapshot.go).
	reaper, filler background
	// delay holds the blocks written and not yet allocated (delalloc.go),
	// under the engine's writer lock.
	delay delayed
	ahead atomic.Bool // flushAhead runs
	// snap: the snapshots being filled and the read-only subvolumes
	// (snapshot.go).
	snap snapState
}

// Activity returns a counter of the writes, truncates and fsyncs made so
// far: when it moves, programs are writing.
func (f *FS) Activity() uint64 { return f.writes.Load() }

// Stats counts filesystem activity.
type Stats struct {
	FsyncLogged uint64 // fsyncs served by the log
	FsyncFull   uint64 // fsyncs that committed
	CsumErrors  uint64 // data blocks that failed their checksum
	// UnverifiedReads counts data blocks served without verification:
	// damage to the csum tree hid their checksums (see data.go).
	UnverifiedReads uint64
	// DelayedKept counts write-outs of buffered file data that damage
	// held back to a later commit (delalloc.go).
	DelayedKept uint64
}

// Open mounts the filesystem on dev (which the FS then owns), creating the
// root directory on first mount.
func Open(dev disk.Device, opts Options) (*FS, error) {
	f := &FS{opts: opts, opens: map[uint64]int{}, caches: map[uint64]*inodeCache{}}
	f.reaper = background{name: "subvolume reaper", pass: "subvol_reap", job: func(ctx context.Context) error { return f.reap(ctx, f.e) }}
	f.filler = background{name: "snapshot filler", pass: "snapshot_fill", job: func(ctx context.Context) error { return f.fillAll(ctx, f.e) }}
	eo := opts.Engine
	eo.ReadOnly = opts.ReadOnly
	eo.NoLog = opts.NoTreeLog
	eo.ReplayLog = f.replay
	eo.DeletedInodes = f.purgeDeleted
	eo.SubvolReap = f.reap
	eo.SnapshotFill = f.fillAll
	if !opts.NoDelayedAlloc {
		f.delay.max = uint64(opts.MaxDelayedBlocks)
		if opts.MaxDelayedBlocks <= 0 {
			f.delay.max = defaultMaxDelayedBlocks
		}
		eo.BeforeCommit = f.beforeCommit
		eo.FlushAhead = f.flushAhead
	}
	if opts.CommitInterval != 0 {
		eo.CommitInterval = opts.CommitInterval
	}
	if opts.Logger != nil {
		eo.Logger = opts.Logger
	}
	e, err := engine.Open(dev, eo)
	if err != nil {
		return nil, err
	}
	f.e = e
	f.loadSnapshots() // snapshot.go
	if !opts.ReadOnly {
		if err := f.ensureRoot(); err != nil {
			e.Close()
			return nil, err
		}
		if f.snap.fills.Load() > 0 {
			f.startFiller() // the snapshot_fill pass left it to us
		}
		if e.PassRequired(engine.PassSubvolReap) && f.reapPending() {
			// A deletion the mount's pass left (deferred by damage).
			f.startReaper()
		}
		// The subvolume repair may find a deletion whose flag was lost
		// and mark it: the reaper then goes on with it at once.
		f.changed.Register(func(ev ChangedEvent) {
			if ev.Structure == "subvol" && f.e.PassRequired(engine.PassSubvolReap) {
				f.startReaper()
			}
			if ev.Structure == "subvol" || ev.Structure == "snapshot" {
				// What the repair wrote (snapshot.go).
				f.loadSnapshots()
				if f.snap.fills.Load() > 0 {
					f.startFiller()
				}
			}
		})
	}
	return f, nil
}

// OpenPath mounts the image at path.
func OpenPath(path string, opts Options) (*FS, error) {
	dev, err := disk.Open(path, opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	f, err := Open(dev, opts)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("mount %s: %w", path, err)
	}
	return f, nil
}

// Engine returns the engine underneath.
func (f *FS) Engine() *engine.Engine { return f.e }

// Stats returns the filesystem's counters.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Sync commits everything.
func (f *FS) Sync() error { return errno(f.e.Sync()) }

// Close commits and unmounts.
func (f *FS) Close() error {
	f.stopFiller()
	f.stopReaper()
	err := f.e.Close()
	if n := f.DelayedBlocks(); n > 0 && err == nil {
		// The last commit could not write them out (delalloc.go).
		err = fmt.Errorf("%d buffered blocks of %d files were not written out (damage to their extent records) and are lost: %w", n, len(f.delay.files), syscall.EIO)
	}
	return err
}

// ensureRoot creates the root directory on first mount. A root inode item
// the damage makes unreadable (its leaf, or a node above it, is bad) does
// not fail the mount: the inode structure is marked sick and the
// filesystem serves what can still be read — every inode whose item is
// readable, by number; the root's lookups read the directory tree, which
// names its entries without the root's item — and a lookup of an inode
// the damage hides fails with EIO for that inode alone, until the inode
// repairer (repair/inode_repair.go) rebuilds the tree. Nothing is
// created then: an inode the damage hides still exists.
func (f *FS) ensureRoot() error {
	exists := false
	if err := f.e.View(func(tx *engine.Tx) error {
		_, ok, err := getInode(tx, RootIno)
		if err != nil && f.e.NoteDamage(err) {
			tx.Note(fmt.Sprintf("the root directory's inode item is unreadable (%v): the inode tree is marked sick; what can be read is served until it is repaired", err))
			ok, err = true, nil
		}
		exists = ok
		return err
	}); err != nil {
		return err
	}
	if exists {
		return nil
	}
	err := f.e.Update(func(tx *engine.Tx) error {
		ino := tx.NextObjectID()
		if ino != RootIno {
			return fmt.Errorf("root directory would get inode %d, not %d: %w", ino, RootIno, format.ErrCorrupt)
		}
		now := ts(time.Now())
		in := &format.InodeItem{Mode: syscall.S_IFDIR | 0o755, Nlink: 2, Generation: uint64(tx.Gen()), Parent: RootIno,
			NextIndex: 2, Atime: now, Mtime: now, Ctime: now, Btime: now}
		return putInode(tx, ino, in)
	})
	if err != nil {
		return err
	}
	return f.e.Sync()
}

// --- errors ---

// errno maps engine errors to errno values: the one place that decides.
func errno(err error) error {
	if err == nil {
		return nil
	}
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		return err // keeps the detail; Errno and errors.Is still see en
	case errors.Is(err, engine.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, engine.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, format.ErrCorrupt):
		return syscall.EIO
	case errors.Is(err, engine.ErrClosed):
		return syscall.EIO
	}
	return &ioError{err}
}

// ioError is an operational failure, reported as EIO with its cause kept.
type ioError struct{ err error }

func (e *ioError) Error() string   { return "I/O error: " + e.err.Error() }
func (e *ioError) Unwrap() error   { return e.err }
func (e *ioError) Is(t error) bool { return t == syscall.EIO }

// Errno returns the errno value for an error returned by this package.
func Errno(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	if err == nil {
		return 0
	}
	return syscall.EIO
}

// --- inode items ---

func ts(t time.Time) format.Timespec {
	return format.Timespec{Sec: t.Unix(), Nsec: uint32(t.Nanosecond())}
}

func getInode(tx *engine.Tx, ino uint64) (*format.InodeItem, bool, error) {
	tr, _ := tx.ReadTree(format.TreeInode)
	v, ok, err := tr.Get(format.InodeKey(ino), nil)
	if err != nil || !ok {
		return nil, false, err
	}
	in, err := format.DecodeInodeItem(v)
	if err != nil {
		return nil, false, err
	}
	return &in, true, nil
}

// mustInode returns the inode or ENOENT.
func mustInode(tx *engine.Tx, ino uint64) (*format.InodeItem, error) {
	in, ok, err := getInode(tx, ino)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	return in, nil
}

func putInode(tx *engine.Tx, ino uint64, in *format.InodeItem) error {
	tr, err := tx.Tree(format.TreeInode)
	if err != nil {
		return err
	}
	if err := tr.Put(format.InodeKey(ino), in.Encode()); err != nil {
		return err
	}
	tx.Hooks().Inode.Call(engine.InodeEvent{Gen: tx.Gen(), Op: engine.OpUpdate, Ino: ino, Inode: *in})
	return nil
}

func nameHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

func isDir(in *format.InodeItem) bool { return in.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func isReg(in *format.InodeItem) bool { return in.Mode&syscall.S_IFMT == syscall.S_IFREG }

// --- extent-map cache ---

// inodeCache is the extent-map cache of an inode written since the last
// commit (the btrfs design): which file block ranges changed in which
// transaction, and whether anything changed that the log cannot carry.
type inodeCache struct {
	gen      format.Gen                 // transaction the entries below belong to
	modified *btree.Map[uint64, uint64] // changed ranges: start block → end block
	full     bool                       // truncate, link, rename, new inode: fsync commits
}

// cache returns the inode's cache for transaction gen, resetting it if it
// belongs to an older transaction that is durable. The changes of one
// still being committed are carried over: an fsync before that commit is
// durable logs them too (see engine/log.go). f.mu must be held.
func (f *FS) cache(ino uint64, gen format.Gen) *inodeCache {
	c := f.caches[ino]
	switch {
	case c != nil && c.gen == gen:
	case c != nil && !f.e.Durable(c.gen):
		c.gen = gen // carried over, ranges and full flag
	default:
		c = &inodeCache{gen: gen, modified: btree.NewMap[uint64, uint64](16)}
		f.caches[ino] = c
	}
	return c
}

// markModified records that file blocks [a, b) changed in transaction gen.
func (f *FS) markModified(ino uint64, gen format.Gen, a, b uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.cache(ino, gen)
	// Merge with overlapping or adjacent ranges.
	var drop []uint64
	c.modified.Descend(b, func(s, e uint64) bool {
		if e < a {
			return false
		}
		drop = append(drop, s)
		a, b = min(a, s), max(b, e)
		return true
	})
	for _, s := range drop {
		c.modified.Delete(s)
	}
	c.modified.Set(a, b)
}

// markFull records that inode ino changed in a way only a commit carries.
func (f *FS) markFull(ino uint64, gen format.Gen) {
	f.mu.Lock()
	f.cache(ino, gen).full = true
	f.mu.Unlock()
}
