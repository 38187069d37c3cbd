package fs

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"syscall"

	"github.com/tidwall/btree"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Delayed allocation.
//
// A write does not allocate. Its blocks go to the file's buffer of dirty
// blocks (whole blocks, in memory; a partial block is read first and
// merged), and the inode's size and times change in the running
// transaction as before. The buffer is written out — each run of
// consecutive file blocks becomes extents of at most
// format.MaxExtentBlocks blocks, in file order, allocated one after the
// other, with their checksums, reverse mappings and allocation records —
// when:
//   - the running transaction commits (engine Options.BeforeCommit, under
//     the writer lock): a generation holds the data of every write it
//     holds the size and times of, so a crash never leaves a size that
//     runs ahead of the data written with it;
//   - the file is fsync'd (before the log records its ranges), or cloned
//     or copied by sharing (its extents are what is shared);
//   - the buffers of all files pass Options.MaxDelayedBlocks: the writer
//     that passes the bound writes them all out, in its own transaction.
//
// So N small writes to neighbouring blocks between two commits cost one
// extent (one allocation record, one reverse mapping, one checksum item)
// instead of N, a block written again before the commit is written to the
// device once, and a write costs the caller a copy into memory.
//
// Reads see the buffer over what the trees map (planRead copies the
// buffered blocks it needs while it holds the view). A truncate trims the
// buffer (and zeroes the tail of its new last block); freeing the inode
// drops it.
//
// The buffers change only under the engine's writer lock (in Update and in
// the commit hook) and are read under it shared (View): the lock that
// orders the trees orders them too.
//
// Space: every buffered block needs one new block when it is written out
// (data is copy-on-write), so a write is refused with ENOSPC unless the
// free data blocks hold every buffered block and its own: the write-out
// never runs out of space.
//
// Damage: the write-out of a file reads its inode item and probes each
// run's extent items before it changes anything. Damage there keeps that
// file's buffer: the commit goes on without it (an error in the log),
// reads still see the buffered data, an fsync of the file fails with EIO,
// and every later commit tries again (after an online repair of the
// extent tree, it succeeds). A buffer whose inode is gone — a repair found
// it unreachable and removed it — is dropped. While write-outs keep
// failing, buffers stop growing at twice MaxDelayedBlocks: writes past
// that fail with EIO.

// defaultMaxDelayedBlocks bounds the buffered blocks of all files (32 MiB).
const defaultMaxDelayedBlocks = 8 << 10

// dirtyBlock is one buffered file block.
type dirtyBlock struct {
	data []byte // bs bytes
	// mapped: the file block had a mapping on disk when it was buffered
	// (the write-out replaces it; otherwise the file gains a block).
	mapped bool
}

// dirtyFile is one file's buffer.
type dirtyFile struct {
	blocks *btree.Map[uint64, *dirtyBlock] // by file block
	// unmapped counts the buffered blocks that were holes: st_blocks
	// shows them before they are written out.
	unmapped uint64
}

// delayed holds the buffers of all files.
type delayed struct {
	files map[uint64]*dirtyFile
	// blocks counts the buffered blocks of all files; changed under the
	// writer lock, read without it too (space checks, statfs).
	blocks atomic.Uint64
	max    uint64 // Options.MaxDelayedBlocks
}

func (f *FS) delayedOn() bool { return f.delay.max > 0 }

// dirty returns ino's buffer, nil if it has none (under the writer lock,
// shared or not).
func (f *FS) dirty(ino uint64) *dirtyFile { return f.delay.files[ino] }

// unmappedBlocks is what st_blocks adds for ino's buffered holes.
func (f *FS) unmappedBlocks(ino uint64) uint64 {
	if df := f.dirty(ino); df != nil {
		return df.unmapped
	}
	return 0
}

// bufferWrite puts p at byte off of ino into its buffer (Update, writer
// lock held). Everything that can fail is checked before the first
// change; kill runs between the checks and the change (killpriv.go).
func (f *FS) bufferWrite(tx *engine.Tx, ino uint64, in *format.InodeItem, p []byte, off uint64, kill func() error) error {
	fb := off / bs
	end := off + uint64(len(p))
	lb := (end + bs - 1) / bs
	// Damage to the file's extent records in the range fails the write
	// now (EIO, the extent tree marked sick), as it would without
	// delayed allocation, rather than its write-out later.
	if err := f.probeExtents(tx, ino, fb, lb); err != nil {
		return err
	}
	if f.delay.blocks.Load()+(lb-fb) > f.delay.max {
		// Past the bound: everything is written out first (before the
		// blocks already buffered are told from those to add).
		if err := f.flushAll(tx); err != nil {
			return err
		}
		// The write-out stored ino's item with its new block count;
		// the caller's copy, which it stores after the write, must
		// not put the old one back.
		cur, ok, err := getInode(tx, ino)
		if err != nil {
			return err
		}
		if ok {
			*in = *cur
		}
	}
	df := f.dirty(ino)
	// Blocks the write adds to the buffer, and the old contents of the
	// partial ones among them.
	type fresh struct {
		fb     uint64
		data   []byte
		mapped bool
	}
	var add []fresh
	var maps mapWalk
	for b := fb; b < lb; b++ {
		if df != nil {
			if _, ok := df.blocks.Get(b); ok {
				continue
			}
		}
		mapped, err := maps.mapped(tx, ino, b)
		if err != nil {
			if f.e.NoteDamage(err) {
				return fmt.Errorf("inode %d block %d: %w", ino, b, err)
			}
			return err
		}
		data := make([]byte, bs)
		if partial := (b == fb && off > b*bs) || (b == lb-1 && end < lb*bs); partial && mapped {
			if err := f.readBlocks(tx, ino, b, 1, data); err != nil {
				return err
			}
		}
		add = append(add, fresh{b, data, mapped})
	}
	n := uint64(len(add))
	held := f.delay.blocks.Load()
	if held+n > 2*f.delay.max && held+n > lb-fb {
		return fmt.Errorf("%d blocks wait to be written out (damage met their extent records): %w", held, syscall.EIO)
	}
	if free := tx.DataFree(); free < held+n {
		return fmt.Errorf("%d data blocks needed (%d buffered), %d free outside the metadata reserve: %w", held+n, held, free, engine.ErrNoSpace)
	}
	if err := kill(); err != nil {
		return err
	}
	// The change: no error from here on.
	if df == nil {
		if f.delay.files == nil {
			f.delay.files = map[uint64]*dirtyFile{}
		}
		df = &dirtyFile{blocks: btree.NewMap[uint64, *dirtyBlock](32)}
		f.delay.files[ino] = df
	}
	for _, a := range add {
		df.blocks.Set(a.fb, &dirtyBlock{data: a.data, mapped: a.mapped})
		if !a.mapped {
			df.unmapped++
		}
	}
	f.delay.blocks.Add(n)
	df.blocks.Ascend(fb, func(b uint64, d *dirtyBlock) bool {
		if b >= lb {
			return false
		}
		lo, hi := max(off, b*bs), min(end, (b+1)*bs)
		copy(d.data[lo-b*bs:hi-b*bs], p[lo-off:hi-off])
		return true
	})
	return nil
}

// mapWalk answers whether file blocks, asked in ascending order, are
// mapped, with one extent lookup per item or hole met.
type mapWalk struct {
	valid    bool
	lo, hi   uint64 // the last answer holds for blocks [lo, hi)
	isMapped bool
}

func (w *mapWalk) mapped(tx *engine.Tx, ino, b uint64) (bool, error) {
	if w.valid && b >= w.lo && b < w.hi {
		return w.isMapped, nil
	}
	at, fe, ok, err := extentAt(tx, ino, b)
	if err != nil {
		return false, err
	}
	if ok {
		*w = mapWalk{valid: true, lo: b, hi: at + fe.Count, isMapped: true}
		return true, nil
	}
	// A hole up to the next item.
	tr, _ := tx.ReadTree(format.TreeExtent)
	k, _, found, err := tr.First(format.FileExtentKey(ino, b))
	if err != nil {
		return false, err
	}
	hi := ^uint64(0)
	if found && k.Obj == ino && k.Type == format.TypeFileExtent {
		hi = k.Off
	}
	if hi <= b {
		return false, fmt.Errorf("inode %d block %d: extent item %s does not map where its key says: %w", ino, b, k, format.ErrCorrupt)
	}
	*w = mapWalk{valid: true, lo: b, hi: hi}
	return false, nil
}

// errKept: a file's buffer stays (its write-out met damage before any
// change); the error it wraps says what.
var errKept = errors.New("buffered data kept")

// flushFile writes out ino's buffer in tx. An error wrapping errKept was
// met before any change (the buffer stays, the transaction is untouched);
// any other error came after a change, and the transaction must abort.
func (f *FS) flushFile(tx *engine.Tx, ino uint64) error {
	_, err := f.flushFileN(tx, ino, 0)
	return err
}

// flushFileN is flushFile stopping after the run that reaches limit
// blocks (0: no limit); the blocks not written out stay buffered. It
// returns the blocks written out.
func (f *FS) flushFileN(tx *engine.Tx, ino uint64, limit uint64) (uint64, error) {
	df := f.dirty(ino)
	if df == nil {
		return 0, nil
	}
	in, ok, err := getInode(tx, ino)
	if err != nil {
		f.e.NoteDamage(err)
		return 0, fmt.Errorf("%w: inode %d: %w", errKept, ino, err)
	}
	if !ok || !isReg(in) {
		// Gone (a repair removed it): nothing to write the data to.
		f.e.Logger().Warn("buffered data of a file that no longer exists dropped", "ino", ino, "blocks", df.blocks.Len())
		f.dropDirty(ino)
		return 0, nil
	}
	// The runs, and the extent items each will change, read first.
	type run struct{ a, b uint64 }
	var runs []run
	df.blocks.Scan(func(b uint64, _ *dirtyBlock) bool {
		if k := len(runs) - 1; k >= 0 && runs[k].b == b && b-runs[k].a < format.MaxExtentBlocks {
			runs[k].b++
		} else {
			runs = append(runs, run{b, b + 1})
		}
		return true
	})
	n := uint64(0)
	for k, r := range runs {
		if limit > 0 && n >= limit {
			runs = runs[:k]
			break
		}
		n += r.b - r.a
	}
	for _, r := range runs {
		if err := f.probeExtents(tx, ino, r.a, r.b); err != nil {
			return 0, fmt.Errorf("%w: %w", errKept, err)
		}
	}
	if err := tx.ReserveData(n); err != nil {
		return 0, fmt.Errorf("%w: %w", errKept, err)
	}
	// The change.
	gen := tx.Gen()
	longest := uint64(0)
	for _, r := range runs {
		longest = max(longest, r.b-r.a)
	}
	buf := make([]byte, 0, longest*bs)
	for _, r := range runs {
		buf = buf[:0]
		for b := r.a; b < r.b; b++ {
			d, _ := df.blocks.Get(b)
			buf = append(buf, d.data...)
		}
		if err := f.putData(tx, ino, in, r.a, buf); err != nil {
			return 0, err
		}
		f.markModified(ino, gen, r.a, r.b)
	}
	if n == uint64(df.blocks.Len()) {
		f.dropDirty(ino)
	} else {
		for _, r := range runs {
			for b := r.a; b < r.b; b++ {
				if d, _ := df.blocks.Delete(b); !d.mapped {
					df.unmapped--
				}
			}
		}
		f.delay.blocks.Add(-n)
	}
	return n, putInode(tx, ino, in)
}

// flushAll writes out every buffer, in inode order, in tx. A file whose
// write-out meets damage keeps its buffer (logged); the error returned
// is one met after a change, which must abort the transaction.
func (f *FS) flushAll(tx *engine.Tx) error {
	if len(f.delay.files) == 0 {
		return nil
	}
	inos := make([]uint64, 0, len(f.delay.files))
	for ino := range f.delay.files {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	var kept int
	var first error
	for _, ino := range inos {
		err := f.flushFile(tx, ino)
		if err == nil {
			continue
		}
		if !errors.Is(err, errKept) {
			return err
		}
		kept++
		if first == nil {
			first = err
		}
	}
	if kept > 0 {
		f.mu.Lock()
		f.stats.DelayedKept += uint64(kept)
		f.mu.Unlock()
		f.e.Logger().Error("buffered file data not written out; kept for the next commit", "files", kept, "err", first)
	}
	return nil
}

// flushIno writes out ino's buffer in tx, for an operation that needs its
// data in the trees (fsync, clone, copy). A failure before any change is
// returned as EIO (ENOSPC if the space ran out) with the transaction
// untouched.
func (f *FS) flushIno(tx *engine.Tx, ino uint64) error {
	err := f.flushFile(tx, ino)
	if errors.Is(err, errKept) && !errors.Is(err, engine.ErrNoSpace) {
		return fmt.Errorf("%w: %w", err, syscall.EIO)
	}
	return err
}

// beforeCommit is the engine's commit hook: every buffer is written out
// in the generation being committed.
func (f *FS) beforeCommit(tx *engine.Tx) error {
	return f.flushAll(tx)
}

// aheadSlice bounds the blocks one transaction of flushAhead writes out.
const aheadSlice = 512

// flushAhead is the engine's hook before a commit takes its locks: it
// writes the buffers out in transactions of about aheadSlice blocks, so
// writers wait for one slice at a time rather than for all of them
// inside the commit (whose hook then finds little left: what came in
// between). Files whose write-out meets damage are left to the commit's
// hook, which reports them.
func (f *FS) flushAhead() error {
	if !f.ahead.CompareAndSwap(false, true) {
		return nil // a commit a slice's throttle started: the outer loop goes on
	}
	defer f.ahead.Store(false)
	skip := map[uint64]bool{}
	// At most what is buffered now: writers adding as fast as this writes
	// out must not keep the commit waiting.
	for left := f.DelayedBlocks(); left > 0; {
		wrote := uint64(0)
		err := f.e.Update(func(tx *engine.Tx) error {
			inos := make([]uint64, 0, len(f.delay.files))
			for ino := range f.delay.files {
				if !skip[ino] {
					inos = append(inos, ino)
				}
			}
			slices.Sort(inos)
			for _, ino := range inos {
				if wrote >= aheadSlice {
					break
				}
				n, err := f.flushFileN(tx, ino, aheadSlice-wrote)
				if errors.Is(err, errKept) {
					skip[ino] = true
					continue
				}
				if err != nil {
					return err
				}
				wrote += n
			}
			return nil
		})
		if err != nil || wrote == 0 {
			return err
		}
		left -= min(left, wrote)
	}
	return nil
}

// trimDirty drops the buffered blocks of ino past size and zeroes the
// tail of a buffered last block (a truncate, under the writer lock).
func (f *FS) trimDirty(ino, size uint64) {
	df := f.dirty(ino)
	if df == nil {
		return
	}
	keep := (size + bs - 1) / bs
	var drop []uint64
	df.blocks.Ascend(keep, func(b uint64, _ *dirtyBlock) bool {
		drop = append(drop, b)
		return true
	})
	for _, b := range drop {
		d, _ := df.blocks.Delete(b)
		if !d.mapped {
			df.unmapped--
		}
	}
	f.delay.blocks.Add(-uint64(len(drop)))
	if size%bs != 0 {
		if d, ok := df.blocks.Get(size / bs); ok {
			clear(d.data[size%bs:])
		}
	}
	if df.blocks.Len() == 0 {
		delete(f.delay.files, ino)
	}
}

// dropDirty forgets ino's buffer (the inode is freed, or its data was
// written out; under the writer lock).
func (f *FS) dropDirty(ino uint64) {
	if df := f.dirty(ino); df != nil {
		f.delay.blocks.Add(-uint64(df.blocks.Len()))
		delete(f.delay.files, ino)
	}
}

// DelayedBlocks returns the file blocks buffered and not yet written out.
func (f *FS) DelayedBlocks() uint64 { return f.delay.blocks.Load() }

// attrOf is the attributes of ino, whose item is in, with its buffered
// holes counted in st_blocks.
func (f *FS) attrOf(ino uint64, in *format.InodeItem) Attr {
	a := attrOf(ino, in)
	a.Blocks += f.unmappedBlocks(ino)
	return a
}
