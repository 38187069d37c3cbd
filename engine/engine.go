package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

var (
	// ErrReadOnly is returned for writes to an engine mounted read-only or
	// one whose transaction was aborted after an error.
	ErrReadOnly = errors.New("engine is read-only")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("engine is closed")
	// errInternal marks a broken internal assertion surfaced as an error.
	errInternal = errors.New("internal error")
)

// Options configure an engine. The zero value is usable.
type Options struct {
	// ReadOnly opens without a writer: no transaction, no commit.
	ReadOnly bool
	// IgnoreBadRoots (with ReadOnly only; btrfs's rescue=ignorebadroots)
	// opens an image whose root tree cannot be read in full, has no
	// root backup to fall back to, and where the header scan cannot find
	// every tree (roottree_scan.go): the trees whose root items were read
	// or found are served, the others are lost (every read needing one fails as
	// corrupt), so what is left can be copied off.
	IgnoreBadRoots bool
	// CommitInterval commits the running transaction periodically; 0 means
	// DefaultCommitInterval, negative disables periodic commits.
	CommitInterval time.Duration
	// MaxDelayedRefs throttles the delayed-ref queue: past this many entries
	// a writer applies the queue before going on. 0 means the default.
	MaxDelayedRefs int
	// MaxDirtyBlocks throttles the running transaction: past this many dirty
	// blocks a writer commits. 0 means the default.
	MaxDirtyBlocks int
	// NoDelayedRefs applies the queued allocation updates at the end of each
	// Update instead of at commit, so nothing merges across operations. It
	// exists to measure what the queue saves.
	NoDelayedRefs bool
	// ReadAhead says the engine's device serves nobody else (an offline
	// scrub): walks of whole trees (the check's, the data scrub's plan)
	// have the kernel read the neighbourhood of the blocks they are about
	// to read into the page cache, a few large device reads instead of one
	// per block (check.go's adviser; an offline check always does). A
	// mount leaves it off and allows it per snapshot instead
	// (Snapshot.AllowReadAhead: a scrub that is not rate-limited).
	ReadAhead bool
	// NoLog disables the fsync log (--notreelog): AppendLog returns
	// ErrNoLog and callers commit instead.
	NoLog bool
	// ReplayLog applies fsync log records at mount; without it a log with
	// records is left unapplied (and a note says so).
	ReplayLog ReplayFunc
	// VersionUpgrade says what a read-write open does with an image of an
	// older format minor version (versions.go); the zero value is
	// UpgradeCompatible.
	VersionUpgrade VersionUpgrade
	// DeletedInodes runs at every read-write mount to free inodes that were
	// unlinked while open (recovery pass deleted_inodes).
	DeletedInodes func(tx *Tx) error
	// SubvolReap frees the inodes of deleted subvolumes (recovery pass
	// subvol_reap, run when a deletion was under way; registered by the
	// filesystem layer).
	SubvolReap func(ctx context.Context, e *Engine) error
	// SnapshotFill copies into snapshots being filled what they still
	// read from their source (recovery pass snapshot_fill; registered by
	// the filesystem layer). At a mount the pass leaves the work to the
	// filesystem, which fills in the background; run explicitly (RunPass)
	// it fills everything before it returns.
	SnapshotFill func(ctx context.Context, e *Engine) error
	// BeforeCommit runs first in every commit, under the writer lock, in
	// the running transaction (the filesystem layer writes out the file
	// data it holds back, delayed allocation). An error fails the commit
	// and aborts the transaction: it must return only errors met after a
	// change.
	BeforeCommit func(tx *Tx) error
	// FlushAhead runs at the start of a commit, before it takes any lock
	// (the filesystem writes most of its buffered data out in short
	// transactions of its own, so that BeforeCommit, under the commit's
	// hold, finds little left). An error fails the commit.
	FlushAhead func() error
	// CacheBlocks bounds the clean-block cache; 0 means the default.
	CacheBlocks int
	// Logger receives the engine's log; nil discards.
	Logger *slog.Logger
}

const (
	DefaultCommitInterval = 5 * time.Second
	defaultMaxDelayedRefs = 64 << 10
	defaultMaxDirtyBlocks = 64 << 10 // 256 MiB
	defaultCacheBlocks    = 32 << 10 // 128 MiB
)

// MountInfo says how the image was opened.
type MountInfo struct {
	// SuperBlock is the block of the superblock copy in use.
	SuperBlock format.BlockNr
	// FellBack is set when the primary superblock was unusable or older
	// than a backup; Notes say why.
	FellBack bool
	Notes    []string
	// PassesRun lists the recovery passes mount ran.
	PassesRun []string
	// Rewritten lists what a read-write open found damaged and rewrote
	// before anything else: superblock copies invalid or stale, a root
	// tree it could not read (see Engine.TakeOpenRepairs).
	Rewritten []Finding

	uniform bool            // every copy valid and at the same generation
	bad     []Finding       // the invalid copies readSuper skipped
	copies  []*format.Super // the valid copies of the filesystem
}

// Engine is one open image. Update and Sync are serialized (one writer);
// Pin gives readers a consistent committed generation concurrently with the
// writer.
type Engine struct {
	dev             disk.Device
	opts            Options
	log             *slog.Logger
	fsid            format.FSID
	totalBlocks     uint64
	cache           *blockCache
	alloc           *allocator
	refs            *delayedRefs
	hooks           Hooks
	mount           MountInfo
	health          health
	degradedDirty   atomic.Bool // a space tree's degraded state changed since the last commit
	reconcileAlloc  bool        // the next commit reconciles the allocator with the free-space tree (wmu)
	freeDamaged     atomic.Bool // the free-space tree was damaged on purpose: see DamagedFreeTree
	openRepairsOnce sync.Mutex  // guards mount.Rewritten for TakeOpenRepairs
	openRepaired    bool        // the open repaired something (a damaged root tree, a counter): it commits
	tolerant        bool        // offline check: load what is readable, report the rest
	replaying       bool        // log replay in progress (mount only)
	mountPasses     bool        // the mount's recovery passes are running (not RunPass)
	guard           atomic.Pointer[GuardFunc]

	// cmu serializes commits (held from prepareCommit through writeOut)
	// and fsync log appends; taken before wmu.
	cmu sync.Mutex
	// inflight is the generation being written out, if any (set under
	// wmu, cleared by writeOut).
	inflight atomic.Pointer[pendingCommit]
	outHook  atomic.Pointer[func(stage int)] // SetWriteOutHook

	// writingOut counts commit write-outs in progress, fsyncing the
	// fsyncs waiting to append to the log or appending: bulk writes
	// (WriteMetaBehind) give way to both.
	writingOut, fsyncing atomic.Int32
	// waiting counts writers and readers blocked on wmu (lockWriter,
	// lockReader): settleAhead leaves them time between its slices.
	waiting atomic.Int32
	// reads counts the ReadHolds of reads going on out of wmu (holds.go).
	reads readHolds
	// flushing is read-held by each fsync flushing its log blocks out of
	// the writer lock, and by each ReadHold (a data read out of the
	// lock); Close takes it before closing the device.
	flushing sync.RWMutex
	// logs orders the fsync log's flushes: an fsync that appends nothing
	// returns only once the groups appended before it are flushed.
	logs logFlushes

	// Writer state, guarded by wmu.
	wmu       writerLock
	txn       *txn
	trees     map[format.TreeID]*eb.Tree
	recorded  map[format.TreeID]format.RootItem
	super     format.Super // fields carried from commit to commit
	freeCount uint64       // free blocks according to the free-space tree
	aborted   error
	commits   atomic.Uint64
	holds     durations // how long commits held writers out (step 1)
	writeOuts durations // how long write-outs took (steps 2-5)
	flog      logState

	// Committed state, guarded by mu.
	mu        sync.Mutex
	committed *view
	writeErr  error // a commit's write-out failed: the engine must turn read-only
	pins      map[format.Gen]int
	closed    bool

	ioErrs [3]atomic.Uint64 // read, write, checksum

	errMu     sync.Mutex
	errCounts []countedError // counted since the last commit

	stop chan struct{}
	wg   sync.WaitGroup
}

// txn is the running transaction.
type txn struct {
	gen         format.Gen
	dirty       *dirtyIndex
	newExtents  map[format.BlockNr]*newExtent
	pendingFree []extent
	metaHint    format.BlockNr
	superDirty  bool
}

// newExtent is an extent allocated in the running transaction; refs counts
// its references queued so far. At zero it returns to the allocator at once,
// unless some of its references were already applied to the trees (a
// delayed-ref run before the commit): then it returns when the drop of the
// last one is applied, so that no other extent takes its blocks while the
// trees still hold it allocated (the queue applies in start-block order, and
// a newcomer starting below it would be applied first).
type newExtent struct {
	n       uint64
	refs    int64
	claimed bool // claimed by log replay: the allocator is reloaded after
	logged  bool // named by an fsync log record: not reused before commit
	applied bool // a reference was applied to the trees
	parked  bool // unreferenced, returns to the allocator when that is applied
}

func newTxn(gen format.Gen) *txn {
	return &txn{gen: gen, dirty: newDirtyIndex(), newExtents: map[format.BlockNr]*newExtent{}}
}

// view is a committed generation: its superblock and tree roots.
type view struct {
	super format.Super
	roots map[format.TreeID]format.RootItem
}

type ioKind int

const (
	ioRead ioKind = iota
	ioWrite
	ioCsum
)

func (e *Engine) countIOError(k ioKind) { e.ioErrs[k].Add(1) }

func (o *Options) fill() {
	if o.CommitInterval == 0 {
		o.CommitInterval = DefaultCommitInterval
	}
	if o.MaxDelayedRefs <= 0 {
		o.MaxDelayedRefs = defaultMaxDelayedRefs
	}
	if o.MaxDirtyBlocks <= 0 {
		o.MaxDirtyBlocks = defaultMaxDirtyBlocks
	}
	if o.CacheBlocks <= 0 {
		o.CacheBlocks = defaultCacheBlocks
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func newEngine(dev disk.Device, opts Options) *Engine {
	opts.fill()
	e := &Engine{
		dev:      dev,
		opts:     opts,
		log:      opts.Logger,
		cache:    newBlockCache(opts.CacheBlocks),
		refs:     newDelayedRefs(),
		alloc:    newAllocator(0),
		trees:    map[format.TreeID]*eb.Tree{},
		recorded: map[format.TreeID]format.RootItem{},
		pins:     map[format.Gen]int{},
		stop:     make(chan struct{}),
	}
	e.health.init()
	return e
}

// MkfsOptions configure a new filesystem.
type MkfsOptions struct {
	Label string
	FSID  format.FSID // zero: random
	// Preallocate (MkfsPath, image files) writes the whole file before
	// making the filesystem, so the host filesystem allocates no blocks
	// later: see disk.File.Preallocate.
	Preallocate bool
	// Progress, if set, is told how much of a preallocation is done.
	Progress func(done, total int64)
	// NoRmapMaps makes a format 1.1 image: the reverse mappings of file
	// data do not record the mapped range (format.IncompatRmapMaps), so
	// the extent tree cannot be rebuilt from them. For images an older
	// build must read, and for tests of such images.
	NoRmapMaps bool
	// Version ("MAJOR.MINOR", versions.go) makes an image of that format
	// version, with the features of every version up to it; "" is this
	// build's newest. It overrides NoRmapMaps.
	Version string
}

// Mkfs writes a new, empty filesystem onto dev, using all of it.
func Mkfs(dev disk.Device, mo MkfsOptions) error {
	total := uint64(dev.Size()) / format.BlockSize
	if total < format.MinBlocks {
		return fmt.Errorf("mkfs: device of %d bytes is below the minimum of %d", dev.Size(), format.MinBlocks*format.BlockSize)
	}
	if total > 1<<48 {
		return fmt.Errorf("mkfs: device of %d blocks is too large", total)
	}
	e := newEngine(dev, Options{CommitInterval: -1})
	e.fsid = mo.FSID
	if e.fsid == (format.FSID{}) {
		if _, err := rand.Read(e.fsid[:]); err != nil {
			return err
		}
	}
	e.totalBlocks = total
	minor := NewestMinor()
	if mo.NoRmapMaps {
		minor = 1
	}
	if mo.Version != "" {
		m, err := ParseFormatVersion(mo.Version)
		if err != nil {
			return fmt.Errorf("mkfs: %w", err)
		}
		minor = m
	}
	e.super = format.Super{
		Major: format.VersionMajor, Minor: minor, FSID: e.fsid,
		BlockSize: format.BlockSize, TotalBlocks: total, Label: mo.Label,
		NextObjectID: 256, Devices: []format.DeviceStats{{ID: 1}},
	}
	e.super.Compat, e.super.RoCompat, e.super.Incompat = featuresUpTo(minor)
	// The allocator starts with every block but the superblocks free; the
	// free-space tree starts with every block free, and the references the
	// superblocks and the first tree nodes take come off it at commit like
	// any others.
	supers := format.SuperBlocks(total)
	e.alloc = newAllocator(total)
	prev := uint64(0)
	for _, sb := range append(supers, format.BlockNr(total)) {
		if uint64(sb) > prev {
			e.alloc.release(format.BlockNr(prev), uint64(sb)-prev)
		}
		prev = uint64(sb) + 1
	}
	e.txn = newTxn(1)
	st := txnStore{e}
	for _, id := range format.KnownTrees {
		tr, err := eb.Create(st, id)
		if err != nil {
			return fmt.Errorf("mkfs: %w", err)
		}
		e.trees[id] = tr
	}
	e.freeCount = total
	if err := e.freeInsert(e.trees[format.TreeFree], 0, total); err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	for _, sb := range supers {
		e.ref(sb, 1, format.Owner{Tree: format.OwnerSuper}, format.ExtentMeta, +1)
	}
	if err := e.commitLocked(); err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	return nil
}

// Open mounts the filesystem on dev. The engine owns dev from then on and
// closes it in Close.
func Open(dev disk.Device, opts Options) (*Engine, error) {
	e := newEngine(dev, opts)
	if err := e.load(); err != nil {
		return nil, err
	}
	if !e.opts.ReadOnly {
		if err := e.ensureLogHead(); err != nil {
			return nil, fmt.Errorf("set up the fsync log: %w", err)
		}
		if err := e.upgradeOnOpen(); err != nil {
			return nil, fmt.Errorf("format upgrade: %w", err)
		}
		if e.openRepaired {
			// What the open repaired (a damaged root tree, a summary
			// counter) is not left on disk a moment longer than the
			// open.
			if err := e.Sync(); err != nil {
				return nil, fmt.Errorf("commit what the open repaired: %w", err)
			}
		}
	}
	if !e.opts.ReadOnly && e.opts.CommitInterval > 0 {
		e.wg.Add(1)
		go e.periodicCommit()
	}
	return e, nil
}

// load reads the newest valid superblock, the root tree and the free space.
func (e *Engine) load() error {
	sb, info, err := readSuper(e.dev)
	if err != nil {
		return err
	}
	if err := sb.CheckFeatures(e.opts.ReadOnly); err != nil {
		return err
	}
	e.mount = info
	e.fsid = sb.FSID
	e.totalBlocks = sb.TotalBlocks
	if !info.uniform && !e.opts.ReadOnly {
		// A crash between superblock writes, or a damaged copy: bring every
		// copy to the generation in use before anything else is written.
		if err := e.writeSupers(sb); err != nil {
			return fmt.Errorf("rewrite superblock copies: %w", err)
		}
		e.mount.Rewritten = info.rewritten(sb)
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("rewrote all superblock copies at generation %d", sb.Gen))
	}
	for _, n := range e.mount.Notes {
		e.log.Warn("superblock", "note", n)
	}
	e.super = *sb
	if len(e.super.Devices) == 0 {
		e.super.Devices = []format.DeviceStats{{ID: 1}}
	}
	e.freeCount = sb.FreeBlocks
	roots, err := e.loadRoots(sb)
	var rootDamage error
	rootSource := fmt.Sprintf("the superblock's root backup of generation %d", sb.Gen)
	if err != nil && errors.Is(err, format.ErrCorrupt) {
		if br, ok := rootFromBackup(sb, roots); ok {
			rootDamage, roots, err = err, br, nil
			e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the root tree is damaged (%v): the tree roots come from the superblock's backup of generation %d", rootDamage, sb.Gen))
			e.log.Warn("root tree damaged, using the superblock's root backup", "gen", sb.Gen, "err", rootDamage)
		} else if sr, scan, serr := e.rootFromScan(sb, roots); scan != nil {
			// No backup to fall back to: the roots come from a scan of
			// every block's header (roottree_scan.go).
			e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the root tree is damaged (%v) and no root backup names it: %s", err, scan))
			roots = sr
			if serr == nil {
				rootDamage, err = err, nil
				rootSource = "the roots a " + scan.String()
			} else {
				err = fmt.Errorf("%w; %w", err, serr)
			}
		}
	}
	if err != nil && e.opts.IgnoreBadRoots && e.opts.ReadOnly && errors.Is(err, format.ErrCorrupt) {
		var lost []string
		for _, id := range format.KnownTrees {
			if _, ok := roots[id]; !ok {
				// Block 0 holds the superblock, never a node: every read
				// of the tree fails its verification.
				roots[id] = format.RootItem{Root: format.RootPtr{Block: 0, Gen: sb.Gen}}
				lost = append(lost, id.String())
			}
		}
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("rescue (ignore bad roots): %v; trees lost: %v (reads needing them fail)", err, lost))
		e.log.Warn("rescue: serving the trees that could be located", "err", err, "lost", lost)
		e.NoteDamage(err)
		err = nil
	}
	if err != nil && !e.tolerant {
		return err
	}
	e.committed = &view{super: *sb, roots: roots}
	e.health.gen.Store(uint64(sb.Gen))
	for id, ri := range roots {
		e.trees[id] = eb.Open(txnStore{e}, id, eb.Ptr{Block: ri.Root.Block, Gen: ri.Root.Gen}, int(ri.Root.Level), ri.Items)
		if id != format.TreeRoot {
			e.recorded[id] = ri
		}
	}
	e.markUntrusted(sb)
	if rootDamage != nil {
		e.NoteDamage(rootDamage)
	}
	if e.opts.ReadOnly {
		// A transaction that never commits, so View works.
		e.txn = newTxn(sb.Gen + 1)
		return nil
	}
	// The allocator's index is the free-space tree (or, while that is
	// untrusted, the alloc tree's gaps: degraded.go).
	committed := map[format.TreeID]*eb.Tree{}
	for _, id := range []format.TreeID{format.TreeFree, format.TreeAlloc, format.TreeRmap} {
		r := roots[id]
		committed[id] = eb.Open(viewStore{e: e}, id, eb.Ptr{Block: r.Root.Block, Gen: r.Root.Gen}, int(r.Root.Level), 0)
	}
	a, free, err := e.loadAllocator(committed)
	if err != nil {
		return fmt.Errorf("load free space: %w", err)
	}
	e.alloc = a
	if free != sb.FreeBlocks {
		e.log.Warn("free-space tree and superblock disagree", "tree", free, "super", sb.FreeBlocks)
		e.freeCount = free
	}
	if free != sb.FreeBlocks && !e.Degraded(StructFree) {
		// A summary counter, recomputed from a free-space tree that
		// loaded clean: the commit the open makes writes the right one,
		// and the next scrub reports it. (Loaded from another tree's
		// gaps, the free space is that tree's view; the free-space
		// rebuild settles the count.)
		e.openRepaired = true
		e.noteSelfRepaired(finding(ErrSuperFreeCount, format.OwnerSuper, 0,
			"superblock counts %d free blocks, the free space holds %d (the open recomputed the count)", sb.FreeBlocks, free))
	}
	e.txn = newTxn(sb.Gen + 1)
	e.txn.superDirty = e.openRepaired // the free count recomputed
	if rootDamage != nil {
		if _, err := e.replaceRootTree(); err != nil {
			return fmt.Errorf("replace the damaged root tree: %w", err)
		}
		e.openRepaired = true
		e.noteSelfRepair(rootDamage, "opening the image wrote a new root tree from "+rootSource)
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("a new root tree replaces the damaged one from generation %d on", sb.Gen+1))
	}
	if err := e.runRecovery(); err != nil {
		return err
	}
	return nil
}

// loadRoots reads the root items of every tree from the root tree. With
// the engine tolerant it returns what it could read along with the error.
func (e *Engine) loadRoots(sb *format.Super) (map[format.TreeID]format.RootItem, error) {
	root := eb.Open(viewStore{e: e}, format.TreeRoot, eb.Ptr{Block: sb.Root.Block, Gen: sb.Root.Gen}, int(sb.Root.Level), 0)
	roots := map[format.TreeID]format.RootItem{}
	var items uint64
	var bad error
	err := root.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		items++
		if k.Type != format.TypeRootItem {
			return true
		}
		ri, derr := format.DecodeRootItem(v)
		if derr == nil && (uint64(ri.Root.Block) >= e.totalBlocks || ri.Root.Block == 0 || ri.Root.Gen > sb.Gen || format.TreeID(k.Obj) == format.TreeRoot) {
			derr = corruptf(format.TreeRoot, sb.Root.Block, "root item for tree %s points to block %d gen %d", format.TreeID(k.Obj), ri.Root.Block, ri.Root.Gen)
		}
		if derr != nil {
			if bad == nil {
				bad = derr
			}
			return true
		}
		roots[format.TreeID(k.Obj)] = ri
		return true
	})
	roots[format.TreeRoot] = format.RootItem{Root: sb.Root, Items: items}
	if err == nil {
		err = bad
	}
	if err == nil {
		// Every tree this build creates must be there: the code relies on
		// them (a newer build's extra trees are kept, not required).
		for _, id := range format.KnownTrees {
			if _, ok := roots[id]; !ok {
				err = fmt.Errorf("root tree has no %s tree: %w", id, format.ErrCorrupt)
				break
			}
		}
	}
	if err != nil {
		return roots, fmt.Errorf("read root tree: %w", err)
	}
	return roots, nil
}

// readSuper reads every superblock copy and returns the newest valid one.
func readSuper(dev disk.Device) (*format.Super, MountInfo, error) {
	total := uint64(dev.Size()) / format.BlockSize
	if total < format.MinBlocks {
		return nil, MountInfo{}, fmt.Errorf("%w: device of %d bytes is too small to hold one: %w", format.ErrNotFilesystem, dev.Size(), format.ErrCorrupt)
	}
	var info MountInfo
	var firstErr error
	var valid []*format.Super
	buf := make([]byte, format.BlockSize)
	for _, at := range format.SuperBlocks(total) {
		if _, err := dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
			info.Notes = append(info.Notes, fmt.Sprintf("superblock at block %d unreadable: %v", at, err))
			continue
		}
		s, err := format.DecodeSuper(buf, at)
		if err == nil {
			err = s.FitsDevice(total)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			info.Notes = append(info.Notes, fmt.Sprintf("superblock at block %d: %v", at, err))
			info.bad = append(info.bad, finding(ErrSuperCopyBad, format.OwnerSuper, at, "%v", err))
			continue
		}
		valid = append(valid, s)
	}
	best := chooseSuper(valid, &info)
	info.uniform = len(info.copies) == len(format.SuperBlocks(total))
	for _, c := range info.copies {
		info.uniform = info.uniform && c.Gen == best.Gen && best.Differs(c) == ""
	}
	if best == nil {
		if firstErr == nil {
			firstErr = format.ErrCorrupt
		}
		return nil, info, fmt.Errorf("%w: no valid superblock (%w)", format.ErrNotFilesystem, firstErr)
	}
	info.SuperBlock = best.Block
	if best.Block != 0 {
		info.FellBack = true
		info.Notes = append(info.Notes, fmt.Sprintf("using backup superblock at block %d (generation %d)", best.Block, best.Gen))
	}
	return best, info, nil
}

// chooseSuper picks the copy to use among the valid ones: those of the
// filesystem most copies name (a tie goes to the earlier copy's), then
// the newest generation among them (a crash between superblock writes
// leaves the first copies newer), then, if copies of that generation
// disagree, the content most of them hold (a tie goes to the earlier
// copy). Copies of another filesystem go to info.bad; the rest of the
// filesystem's copies to info.copies.
func chooseSuper(valid []*format.Super, info *MountInfo) *format.Super {
	if len(valid) == 0 {
		return nil
	}
	most := func(same func(a, b *format.Super) bool, among []*format.Super) *format.Super {
		var pick *format.Super
		n := 0
		for _, a := range among {
			c := 0
			for _, b := range among {
				if same(a, b) {
					c++
				}
			}
			if c > n {
				pick, n = a, c
			}
		}
		return pick
	}
	fsid := most(func(a, b *format.Super) bool { return a.FSID == b.FSID }, valid).FSID
	var newest format.Gen
	for _, s := range valid {
		if s.FSID != fsid {
			info.Notes = append(info.Notes, fmt.Sprintf("superblock at block %d belongs to filesystem %s, ignored", s.Block, s.FSID))
			info.bad = append(info.bad, finding(ErrSuperCopyBad, format.OwnerSuper, s.Block, "copy belongs to filesystem %s", s.FSID))
			continue
		}
		info.copies = append(info.copies, s)
		newest = max(newest, s.Gen)
	}
	var top []*format.Super
	for _, s := range info.copies {
		if s.Gen == newest {
			top = append(top, s)
		}
	}
	return most(func(a, b *format.Super) bool { return a.Differs(b) == "" }, top)
}

// MountInfo returns how the image was opened.
func (e *Engine) MountInfo() MountInfo { return e.mount }

// rewritten lists the copies that were not valid copies of best: the
// invalid ones readSuper skipped, the valid ones of an older generation,
// and those of its generation that differ from it. The unreadable ones are
// in the notes only.
func (info *MountInfo) rewritten(best *format.Super) []Finding {
	out := append([]Finding(nil), info.bad...)
	for _, s := range info.copies {
		switch {
		case s.Gen < best.Gen:
			out = append(out, finding(ErrSuperCopyStale, format.OwnerSuper, s.Block, "copy had generation %d, filesystem was at %d", s.Gen, best.Gen))
		case best.Differs(s) != "":
			out = append(out, finding(ErrSuperCopyField, format.OwnerSuper, s.Block, "copy of generation %d differed from the one in use in its %s", s.Gen, best.Differs(s)))
		}
	}
	return out
}

// TakeOpenRepairs returns, once, the findings the engine repaired on its
// own before anything could check them (superblock copies a read-write
// open found invalid or stale and rewrote, a root tree an open or a
// commit found damaged and replaced), so a scrub's report can count them as found and
// repaired. Later calls return none.
func (e *Engine) TakeOpenRepairs() []Finding {
	e.openRepairsOnce.Lock()
	defer e.openRepairsOnce.Unlock()
	out := e.mount.Rewritten
	e.mount.Rewritten = nil
	return out
}

// RewriteSupers commits, writing every superblock copy anew from the
// generation in use: the superblock row's repair for a copy that is
// invalid, stale or differs from the others.
func (e *Engine) RewriteSupers() error {
	// As commit: no other commit may be in flight while this one is
	// prepared (its write-out's superblock and its blocks still to be
	// released belong to it).
	e.cmu.Lock()
	defer e.cmu.Unlock()
	e.wmu.Lock()
	if err := e.writable(); err != nil {
		e.wmu.Unlock()
		return err
	}
	e.txn.superDirty = true
	c, err := e.prepareCommit()
	e.wmu.Unlock()
	if err != nil || c == nil {
		return err
	}
	return e.writeOut(c)
}

// FSID returns the filesystem UUID.
func (e *Engine) FSID() format.FSID { return e.fsid }

// TotalBlocks returns the image size in blocks.
func (e *Engine) TotalBlocks() uint64 { return e.totalBlocks }

// GuardFunc is called with the running transaction before every change of
// a key of a tree (see SetGuard).
type GuardFunc func(tx *Tx, tree format.TreeID, k format.Key) error

// SetGuard makes fn see every change to the trees of the running
// transaction before it is made, under the writer lock; a nil fn removes
// the guard. fn may change other keys through tx (a copy made before its
// source changes); an error fails the change before it is made. The
// filesystem sets one only while a snapshot is being filled
// (engine/fs/snapshot.go): no guard costs one atomic load per change.
func (e *Engine) SetGuard(fn GuardFunc) {
	if fn == nil {
		e.guard.Store(nil)
		return
	}
	e.guard.Store(&fn)
}

// Hooks returns the engine's hook chains for subscribers.
func (e *Engine) Hooks() *Hooks { return &e.hooks }

// Device returns the device the engine runs on.
func (e *Engine) Device() disk.Device { return e.dev }

// ReadOnly reports whether writes are refused, and why.
func (e *Engine) ReadOnly() (bool, error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.opts.ReadOnly {
		return true, nil
	}
	return e.aborted != nil, e.aborted
}

// Tx is the running transaction as seen by one Update.
type Tx struct {
	e       *Engine
	touched bool
	view    bool
	logging bool   // FsyncView: no commit is prepared, AppendLog works
	flush   bool   // AppendLog wrote log blocks: FsyncView flushes them
	budget  uint64 // data blocks reserved by ReserveData
}

// metaReserve is the number of free blocks data allocations leave for
// metadata (copy-on-write of tree nodes, the delayed-ref run at commit):
// 1% of the image, at least 256 blocks.
func (e *Engine) metaReserve() uint64 { return max(256, e.totalBlocks/100) }

// DataFree returns how many blocks data may still take now.
func (tx *Tx) DataFree() uint64 {
	free, res := tx.e.alloc.freeBlocks(), tx.e.metaReserve()
	if free <= res {
		return 0
	}
	return free - res
}

// ReserveData checks, before an operation changes anything, that n data
// blocks can be allocated, and lets the operation's AllocExtent calls take
// them without re-checking. It fails with ErrNoSpace.
func (tx *Tx) ReserveData(n uint64) error {
	if free := tx.DataFree(); free < n {
		return fmt.Errorf("%d data blocks needed, %d free outside the metadata reserve: %w", n, free, ErrNoSpace)
	}
	tx.budget += n
	return nil
}

// Gen returns the running transaction's generation.
func (tx *Tx) Gen() format.Gen { return tx.e.txn.gen }

// Tree returns the writable tree id of the running transaction.
func (tx *Tx) Tree(id format.TreeID) (*eb.Tree, error) {
	t, ok := tx.e.trees[id]
	if feat, lazy := format.CreatedOnUse(id); !ok && lazy && !tx.view {
		if tx.e.super.RoCompat&feat != feat {
			return nil, fmt.Errorf("tree %s: %w", id, ErrFeatureOff)
		}
		return tx.createTree(id) // a tree newer than the image (format/xattr.go)
	}
	if !ok {
		return nil, fmt.Errorf("no tree %s", id)
	}
	if tx.view {
		return nil, ErrReadOnly
	}
	switch id {
	case format.TreeRoot, format.TreeAlloc, format.TreeRmap, format.TreeFree:
		return nil, fmt.Errorf("tree %s is maintained by the engine", id)
	}
	tx.touched = true
	return t, nil
}

// ErrFeatureOff refuses a use of a feature the image's format version
// does not have (see HasFeatures).
var ErrFeatureOff = errors.New("the image's format version does not have this feature (scrubd upgrade)")

// createTree creates tree id, which the image's version has but which has
// no root yet: it reaches the disk with the transaction.
func (tx *Tx) createTree(id format.TreeID) (*eb.Tree, error) {
	t, err := eb.Create(txnStore{tx.e}, id)
	if err != nil {
		return nil, err
	}
	tx.touched = true
	tx.e.trees[id] = t
	return t, nil
}

// ReadTree returns tree id of the running transaction for reading only.
func (tx *Tx) ReadTree(id format.TreeID) (*eb.Tree, bool) {
	t, ok := tx.e.trees[id]
	return t, ok
}

// AllocExtent allocates n contiguous blocks for owner (data) and queues
// their allocation.
func (tx *Tx) AllocExtent(n uint64, owner format.Owner) (format.BlockNr, error) {
	e := tx.e
	if n > tx.budget {
		if err := tx.ReserveData(n - tx.budget); err != nil {
			return 0, err
		}
	}
	// Data goes right after the block the next fsync log block will use,
	// so that a write and the fsync that follows it dirty adjacent blocks:
	// the device gets one request instead of two.
	hint := format.BlockNr(0)
	if e.flog.cur != 0 {
		hint = e.flog.cur + 1
	}
	start, err := e.alloc.allocate(n, hint)
	if err != nil {
		return 0, err
	}
	tx.budget -= n
	tx.touched = true
	e.txn.newExtents[start] = &newExtent{n: n}
	e.refMap(start, n, owner, format.ExtentData, +1, format.RmapItem{Len: n, Count: n})
	return start, nil
}

// ClaimExtent takes the specific free extent [start, start+n) out of the
// allocator for this transaction (log replay: the fsync'd data is already
// there). References are then added with AddRef.
//
// Claims may overlap other claims' extents only through ClaimRange; each
// extent a log record references is then registered with MarkClaimed.
func (tx *Tx) ClaimRange(start format.BlockNr, n uint64) error {
	if err := tx.e.alloc.claim(start, n); err != nil {
		return err
	}
	tx.touched = true
	return nil
}

// MarkClaimed registers a data extent inside a claimed range as new in this
// transaction, so dropping its last reference also drops its checksums.
func (tx *Tx) MarkClaimed(start format.BlockNr, n uint64) {
	tx.e.txn.newExtents[start] = &newExtent{n: n, claimed: true}
}

// PinForLog keeps a data extent of this transaction from being reused
// before the next commit, even if its last reference goes: an fsync log
// record names it.
func (tx *Tx) PinForLog(start format.BlockNr) {
	if ne, ok := tx.e.txn.newExtents[start]; ok {
		ne.logged = true
	}
}

// AppendLog writes one fsync group to the log and flushes (see log.go);
// usable inside FsyncView only. It returns ErrNoLog if the engine has no
// log, or none a durable commit names yet: the caller commits instead.
func (tx *Tx) AppendLog(items []LogItem) error {
	if !tx.logging {
		return fmt.Errorf("engine: AppendLog outside FsyncView: %w", errInternal)
	}
	if err := tx.e.appendLogLocked(items); err != nil {
		return err
	}
	tx.flush = true
	return nil
}

// Note adds a line to the mount notes (recovery passes use it).
func (tx *Tx) Note(s string) { tx.e.mount.Notes = append(tx.e.mount.Notes, s) }

// Device returns the device, for data block I/O.
func (tx *Tx) Device() disk.Device { return tx.e.dev }

// IsNewExtent reports whether the extent at start was allocated in the
// running transaction or in a generation being committed (not yet durable).
func (tx *Tx) IsNewExtent(start format.BlockNr) bool { return tx.e.isNewExtent(start) }

func (e *Engine) isNewExtent(start format.BlockNr) bool {
	if _, ok := e.txn.newExtents[start]; ok {
		return true
	}
	if c := e.inflight.Load(); c != nil {
		_, ok := c.newExtents[start]
		return ok
	}
	return false
}

// Durable reports whether generation gen is durable: committed, its
// superblock flushed.
func (e *Engine) Durable(gen format.Gen) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return gen <= e.committed.super.Gen
}

// AddRef adds a reference by owner (a file at a file block) to the
// allocated data extent of fe, mapping fe's part of it.
func (tx *Tx) AddRef(owner format.Owner, fe format.FileExtent) {
	tx.touched = true
	tx.e.refMap(fe.Start, fe.Len, owner, format.ExtentData, +1, mapOf(fe))
}

// RemapRef records that owner's reference to the data extent of fe now
// maps fe's part of it (the file extent item under the same key changed
// its range: a write or truncate cut it short).
func (tx *Tx) RemapRef(owner format.Owner, fe format.FileExtent) {
	if tx.e.super.Incompat&format.IncompatRmapMaps == 0 {
		return // format 1.1: records carry no mapping
	}
	tx.touched = true
	tx.e.refMap(fe.Start, fe.Len, owner, format.ExtentData, 0, mapOf(fe))
}

// mapOf is the rmap record of a file extent item.
func mapOf(fe format.FileExtent) format.RmapItem {
	return format.RmapItem{Len: fe.Len, Offset: fe.Offset, Count: fe.Count}
}

// DropRef drops owner's reference to a data extent; the extent is freed
// when its last reference goes.
func (tx *Tx) DropRef(start format.BlockNr, n uint64, owner format.Owner) error {
	tx.touched = true
	if tx.e.ref(start, n, owner, format.ExtentData, -1) {
		// Allocated and dropped in this transaction: its checksums go too.
		if err := tx.e.deleteCsum(start); err != nil {
			return err
		}
	}
	return nil
}

// NextObjectID hands out a new, never reused object id (inode numbers).
func (tx *Tx) NextObjectID() uint64 {
	tx.touched = true
	tx.e.txn.superDirty = true
	id := tx.e.super.NextObjectID
	tx.e.super.NextObjectID++
	return id
}

// PeekObjectID returns the id NextObjectID would hand out, taking none.
func (tx *Tx) PeekObjectID() uint64 { return tx.e.super.NextObjectID }

// RequirePass sets recovery pass id in the superblock with this
// transaction: a crash after its commit runs the pass at the next mount.
func (tx *Tx) RequirePass(id uint) {
	if tx.e.super.RecoveryPasses&(1<<id) == 0 {
		tx.touched = true
		tx.e.txn.superDirty = true
		tx.e.super.RecoveryPasses |= 1 << id
	}
}

// ClearPass clears recovery pass id with this transaction: the work it
// stood for is done in it.
func (tx *Tx) ClearPass(id uint) {
	if tx.e.super.RecoveryPasses&(1<<id) != 0 {
		tx.touched = true
		tx.e.txn.superDirty = true
		tx.e.super.RecoveryPasses &^= 1 << id
	}
}

// ref queues a reference change, releasing at once an extent allocated in
// this transaction whose references all went away.
// It reports whether the extent was released.
func (e *Engine) ref(start format.BlockNr, n uint64, owner format.Owner, flags uint64, delta int64) bool {
	return e.refMap(start, n, owner, flags, delta, format.RmapItem{})
}

// refMap is ref with the part of the extent a file maps (see refEntry.m).
func (e *Engine) refMap(start format.BlockNr, n uint64, owner format.Owner, flags uint64, delta int64, m format.RmapItem) bool {
	released := false
	if ne, ok := e.txn.newExtents[start]; ok && delta != 0 {
		ne.refs += delta
		if ne.refs == 0 {
			switch {
			case ne.logged:
				// A replay of the log would read these blocks: keep them
				// until the commit that makes the log obsolete.
				e.flog.deferred = append(e.flog.deferred, extent{start, ne.n})
			case ne.claimed:
			case ne.applied:
				ne.parked = true
			default:
				e.releaseNew(start, ne.n)
			}
			released = true
		}
	}
	e.refs.add(start, n, owner, flags, delta, m)
	return released
}

// Update runs fn in the running transaction, serialized with other writers.
// Changes become durable at the next commit (Sync, the periodic commit, or
// throttling). If fn fails after it changed anything, the transaction is
// aborted: the engine turns read-only and the last commit stays on disk.
func (e *Engine) Update(fn func(tx *Tx) error) error {
	full, settle, err := e.update(fn)
	if err == nil && settle {
		// Throttle: this writer applies the delayed-ref queue, in slices
		// that other writers run between.
		err = e.settleAhead()
	}
	if err == nil && full {
		// Throttle: this writer commits (the others wait only while the
		// commit is prepared).
		err = e.commit()
	}
	return err
}

// update runs fn under wmu and reports whether the transaction has
// outgrown MaxDirtyBlocks and whether the delayed-ref queue has outgrown
// MaxDelayedRefs.
func (e *Engine) update(fn func(tx *Tx) error) (full, settle bool, err error) {
	e.lockWriter()
	defer e.wmu.Unlock()
	if err := e.writable(); err != nil {
		return false, false, err
	}
	tx := &Tx{e: e}
	if err := fn(tx); err != nil {
		if tx.touched {
			e.abort(err)
		}
		return false, false, err
	}
	if e.opts.NoDelayedRefs {
		if err := e.runDelayedRefs(); err != nil {
			e.abort(err)
			return false, false, err
		}
	} else if e.refs.len() > e.opts.MaxDelayedRefs {
		e.refs.stats.throttle.Add(1)
		settle = true
	}
	return e.txn.dirty.Len() > e.opts.MaxDirtyBlocks, settle, nil
}

func (e *Engine) writable() error {
	switch {
	case e.opts.ReadOnly:
		return ErrReadOnly
	case e.aborted != nil:
		return fmt.Errorf("%w: transaction aborted: %v", ErrReadOnly, e.aborted)
	case e.txn == nil:
		return ErrClosed
	}
	e.mu.Lock()
	werr := e.writeErr
	e.mu.Unlock()
	if werr != nil {
		e.abort(werr)
		return fmt.Errorf("%w: transaction aborted: %v", ErrReadOnly, werr)
	}
	return nil
}

// NoteDamage marks sick the structure a corruption error (met in use)
// names, and reports whether err was one.
func (e *Engine) NoteDamage(err error) bool {
	ce, ok := format.AsCorrupt(err)
	if !ok {
		return false
	}
	if s, ok := StructureOfTree(ce.Tree); ok {
		e.MarkSick(s, e.committedGen(), kindID(ce.Kind))
	}
	return true
}

func (e *Engine) abort(err error) {
	// Damage met in use: the structure it was met in is sick.
	e.NoteDamage(err)
	if e.aborted == nil {
		e.aborted = err
		e.log.Error("transaction aborted, engine is read-only", "gen", e.txn.gen, "err", err)
	}
}

// View runs fn against the running transaction (read-your-writes) without
// allowing changes: Tx.Tree fails, ReadTree works. It is serialized with
// writers, not with other views: views run concurrently, holding the
// writer lock shared, so fn must only read (the trees, Tx.HoldBlocks).
func (e *Engine) View(fn func(tx *Tx) error) error {
	e.lockReader()
	defer e.wmu.RUnlock()
	if e.txn == nil {
		return ErrClosed
	}
	return fn(&Tx{e: e, view: true})
}

// lockReader takes wmu shared for a view, counted as waiting until it has
// it (a view waits behind a writer as a writer does: settleAhead rests
// between its slices for it too).
func (e *Engine) lockReader() {
	e.waiting.Add(1)
	e.wmu.RLock()
	e.waiting.Add(-1)
}

// lockWriter takes wmu for a writer or reader, counted as waiting until it
// has it.
func (e *Engine) lockWriter() {
	e.waiting.Add(1)
	e.wmu.Lock()
	e.waiting.Add(-1)
}

// lockCommits takes the commit lock, then the writer lock (the lock order),
// and returns their release.
func (e *Engine) lockCommits() (unlock func()) {
	e.cmu.Lock()
	e.lockWriter()
	return func() {
		e.wmu.Unlock()
		e.cmu.Unlock()
	}
}

// FsyncView is View in which tx.AppendLog can extend the fsync log. No
// commit is prepared while fn runs, but one may be being written out: a
// file's changes in an earlier generation are durable only if
// Engine.Durable says so, and records appended now must carry the file's
// changes of a generation not yet durable too (see log.go).
//
// The log blocks fn appends are flushed after the writer lock is released:
// other writers go on while the device flushes (under the lock, a stalled
// flush held every writer out for as long). A commit prepared meanwhile
// names a chain start after those blocks and carries the changes they
// record, so whichever superblock a crash leaves, the records or the
// commit hold them; once the commit is durable the blocks may be reused,
// and the flush no longer matters. A failed flush fails the engine, as a
// failed write-out does. An fn that appends nothing may have found its
// changes in a group another fsync appended and is still flushing: such an
// fsync returns once every group appended before it is flushed.
func (e *Engine) FsyncView(fn func(tx *Tx) error) error {
	return e.fsync(&Tx{e: e, view: true, logging: true}, fn)
}

// FsyncUpdate is FsyncView in which fn may also change the running
// transaction before it appends to the log (the filesystem writes out a
// file's buffered blocks, then logs them, in one hold of the writer
// lock). If fn fails after a change, the transaction is aborted, as in
// Update.
func (e *Engine) FsyncUpdate(fn func(tx *Tx) error) error {
	return e.fsync(&Tx{e: e, logging: true}, fn)
}

func (e *Engine) fsync(tx *Tx, fn func(tx *Tx) error) error {
	e.fsyncing.Add(1)
	defer e.fsyncing.Add(-1)
	var seq uint64 // the log groups appended up to this fsync's
	err := func() error {
		e.lockWriter()
		defer e.wmu.Unlock()
		if e.txn == nil {
			return ErrClosed
		}
		if !tx.view {
			if err := e.writable(); err != nil {
				return err
			}
		}
		if err := fn(tx); err != nil {
			if tx.touched {
				e.abort(err)
			}
			return err
		}
		if tx.flush {
			e.logs.appended++
			// Taken before the writer lock is released: Close, which
			// waits for it, cannot close the device under the flush.
			e.flushing.RLock()
		}
		seq = e.logs.appended
		return nil
	}()
	if err != nil {
		return err
	}
	if !tx.flush {
		// Nothing appended, but a group an earlier fsync appended may
		// hold this one's changes (it found them logged) and still be
		// flushing.
		return e.logs.wait(seq)
	}
	defer e.flushing.RUnlock()
	if err := e.dev.Flush(); err != nil {
		err = fmt.Errorf("flush the fsync log: %w", err)
		e.failWrites(err)
		e.logs.flushed(seq, err)
		return err
	}
	e.logs.flushed(seq, nil)
	return nil
}

// logFlushes counts the fsync log's groups appended and those flushed.
// Groups are appended one at a time under the writer lock and each is
// flushed after the lock is released, so flushes may end out of order;
// but a flush started after group n was written covers every group up to
// n, so done is the highest group whose own flush has returned.
type logFlushes struct {
	appended uint64 // under the writer lock

	mu      sync.Mutex
	done    uint64
	err     error         // the first failed flush's (the engine then fails writes)
	changed chan struct{} // closed when done or err changes, if anyone waits
}

// flushed records the end of group seq's flush.
func (l *logFlushes) flushed(seq uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil && l.err == nil:
		l.err = err
	case err == nil && seq > l.done:
		l.done = seq
	}
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

// wait returns once every group up to seq is flushed, or the error of a
// failed flush (after which nothing the log holds is known durable).
func (l *logFlushes) wait(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		switch {
		case l.err != nil:
			return l.err
		case l.done >= seq:
			return nil
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		<-ch
		l.mu.Lock()
	}
}

// Freeze commits the running transaction and runs fn on the committed
// generation with every writer and commit held out, so that the generation
// fn sees is the whole state of the filesystem until it returns (fault
// injection into a mounted image uses it: the block it damages stays in
// use).
func (e *Engine) Freeze(fn func(s *Snapshot) error) error {
	defer e.lockCommits()()
	if e.txn == nil {
		return ErrClosed
	}
	if e.writable() == nil {
		if err := e.commitLocked(); err != nil {
			return err
		}
	}
	s := e.Pin()
	defer s.Release()
	return fn(s)
}

// Sync commits the running transaction and returns when it is durable.
// Other writers wait only while the commit is prepared, not while it is
// written.
func (e *Engine) Sync() error { return e.commit() }

func (e *Engine) periodicCommit() {
	defer e.wg.Done()
	tk := time.NewTicker(e.opts.CommitInterval)
	defer tk.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-tk.C:
			if err := e.Sync(); err != nil && !errors.Is(err, ErrReadOnly) {
				e.log.Error("periodic commit", "err", err)
			}
		}
	}
}

// Close commits (unless read-only or aborted) and closes the device.
// Logger returns the engine's log.
func (e *Engine) Logger() *slog.Logger { return e.log }

func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.closed = true
	e.mu.Unlock()
	close(e.stop)
	e.wg.Wait()
	var err error
	e.cmu.Lock()
	defer e.cmu.Unlock()
	e.wmu.Lock()
	if !e.opts.ReadOnly && e.writable() == nil {
		err = e.commitLocked()
	}
	if e.aborted != nil {
		err = fmt.Errorf("%w: changes since the last commit were dropped: %v", ErrReadOnly, e.aborted)
	}
	e.txn = nil
	e.wmu.Unlock()
	e.flushing.Lock() // fsyncs still flushing their log blocks
	defer e.flushing.Unlock()
	if cerr := e.dev.Close(); err == nil {
		err = cerr
	}
	return err
}

// Snapshot is a pinned committed generation: a consistent read-only view
// that stays valid, whatever the writer does, until Release.
type Snapshot struct {
	e        *Engine
	v        *view
	released atomic.Bool
	// The walks' adviser (check.go), shared by them; readAhead: the
	// holder allowed one (AllowReadAhead).
	advOnce   sync.Once
	adv       *adviser
	readAhead atomic.Bool
}

// Pin pins the last committed generation.
func (e *Engine) Pin() *Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.committed
	e.pins[v.super.Gen]++
	return &Snapshot{e: e, v: v}
}

// Gen returns the snapshot's generation.
func (s *Snapshot) Gen() format.Gen { return s.v.super.Gen }

// Super returns the snapshot's superblock.
func (s *Snapshot) Super() format.Super { return s.v.super }

// Trees returns the ids of the snapshot's trees in order.
func (s *Snapshot) Trees() []format.TreeID {
	ids := make([]format.TreeID, 0, len(s.v.roots))
	for id := range s.v.roots {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Root returns the root item of tree id.
func (s *Snapshot) Root(id format.TreeID) (format.RootItem, bool) {
	ri, ok := s.v.roots[id]
	return ri, ok
}

// Tree returns tree id of the snapshot, read-only.
func (s *Snapshot) Tree(id format.TreeID) (*eb.Tree, bool) {
	ri, ok := s.v.roots[id]
	if !ok {
		return nil, false
	}
	return eb.Open(viewStore{e: s.e}, id, eb.Ptr{Block: ri.Root.Block, Gen: ri.Root.Gen}, int(ri.Root.Level), ri.Items), true
}

// ScanTree returns tree id of the snapshot for a one-pass scan: blocks it
// reads that are not cached are not added to the cache, and their buffers
// are recycled. Use it for walks (Check, Ascend) that do not keep nodes or
// value slices past the callback, and only from one goroutine.
func (s *Snapshot) ScanTree(id format.TreeID) (*eb.Tree, bool) {
	ri, ok := s.v.roots[id]
	if !ok {
		return nil, false
	}
	return eb.Open(viewStore{e: s.e, ring: &scanRing{}}, id, eb.Ptr{Block: ri.Root.Block, Gen: ri.Root.Gen}, int(ri.Root.Level), ri.Items), true
}

// ScanTreeAhead is ScanTree for an Ascend over a whole tree from a cold
// cache: the walk reads each interior node's children ahead, neighbours
// in one read, and where allowed (Snapshot.adviser) has the kernel read
// their neighbourhood: the check's walks' store and adviser, instead of
// one device request per node. Same rules as ScanTree; walks of
// different trees may run at once.
func (s *Snapshot) ScanTreeAhead(id format.TreeID) (*eb.Tree, bool) {
	return s.checkTree(id, newCheckStore(s.e, s.adviser()))
}

// Release unpins the snapshot; blocks only it kept alive become reusable.
func (s *Snapshot) Release() {
	if s.released.Swap(true) {
		return
	}
	e := s.e
	e.mu.Lock()
	g := s.v.super.Gen
	if e.pins[g]--; e.pins[g] <= 0 {
		delete(e.pins, g)
	}
	e.mu.Unlock()
	e.releaseFreed()
}

// releaseFreed hands back to the allocator the blocks freed by generations
// that no pinned reader (Snapshot, ReadHold) can see any more.
func (e *Engine) releaseFreed() {
	e.mu.Lock()
	if e.committed == nil {
		e.mu.Unlock()
		return
	}
	limit := e.committed.super.Gen
	for g := range e.pins {
		limit = min(limit, g)
	}
	e.mu.Unlock()
	if g, ok := e.reads.oldest(); ok {
		limit = min(limit, g)
	}
	for _, x := range e.alloc.releaseUpTo(limit) {
		for b := x.start; b < x.start+format.BlockNr(x.n); b++ {
			e.cache.drop(b)
		}
	}
}

// Stats are engine counters.
type Stats struct {
	Gen           format.Gen
	Commits       uint64
	Refs          RefStats
	QueuedRefs    int
	DirtyBlocks   int
	FreeBlocks    uint64 // free according to the free-space tree (last commit)
	Allocatable   uint64 // free now in the allocator's index
	PendingBlocks uint64 // freed, waiting for readers or durability
	ReadErrors    uint64
	WriteErrors   uint64
	CsumErrors    uint64
	// CommitHold is how long the last commit held writers out (settling
	// its delayed refs); CommitHoldMax the longest since mount.
	CommitHold, CommitHoldMax time.Duration
	// WriterHold is how long the last hold of the writer lock lasted
	// (an update, a commit being prepared, a slice of delayed refs, an
	// exclusive section: what other writers waited behind);
	// WriterHoldMax the longest since mount.
	WriterHold, WriterHoldMax time.Duration
	// CommitWrite is how long the last commit's write-out took (writers
	// run meanwhile; fsyncs wait for it); CommitWriteMax the longest.
	CommitWrite, CommitWriteMax time.Duration
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	e.lockWriter()
	s := Stats{Commits: e.commits.Load(), Refs: e.refs.snapshot(), QueuedRefs: e.refs.len()}
	if e.txn != nil {
		s.Gen = e.txn.gen
		s.DirtyBlocks = e.txn.dirty.Len()
	}
	e.wmu.Unlock()
	e.mu.Lock()
	if e.committed != nil {
		s.FreeBlocks = e.committed.super.FreeBlocks
	}
	e.mu.Unlock()
	s.Allocatable = e.alloc.freeBlocks()
	s.PendingBlocks = e.alloc.pendingBlocks()
	s.ReadErrors, s.WriteErrors, s.CsumErrors = e.ioErrs[0].Load(), e.ioErrs[1].Load(), e.ioErrs[2].Load()
	s.CommitHold, s.CommitHoldMax = e.holds.get()
	s.WriterHold, s.WriterHoldMax = e.wmu.holds.get()
	s.CommitWrite, s.CommitWriteMax = e.writeOuts.get()
	return s
}

// Allocatable returns how many blocks the allocator can hand out now and
// how many freed blocks wait for readers or durability, without the writer
// lock (a writer asks before every write).
func (e *Engine) Allocatable() (free, pending uint64) {
	return e.alloc.freeBlocks(), e.alloc.pendingBlocks()
}

// Hooks returns the engine's hook chains (for publishers in the running
// transaction).
func (tx *Tx) Hooks() *Hooks { return &tx.e.hooks }

// DropCached forgets the cached copy of block b, so the next read comes from
// the device (tests and fault injection that write the device directly).
func (e *Engine) DropCached(b format.BlockNr) { e.cache.drop(b) }
