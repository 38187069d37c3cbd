package fs

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Reflinks: files sharing data extents.
//
// A file extent item already names a part of a disk extent (Offset, Count
// within [Start, Start+Len)), and the extent's alloc record counts one
// reference per item that names it, each with its own reverse mapping
// (start, inode, file block). A clone therefore copies no data: it punches
// the destination range like a write does, and gives the destination one
// new item per source item it covers, naming the same disk blocks, with
// one reference more each (tx.AddRef, through the delayed-ref queue). The
// checksums are keyed by disk block, so the shared blocks keep theirs.
//
// Nothing else needs to know. A write is always copy-on-write, so
// overwriting a shared block gives the writer a new extent and drops its
// reference to the old one, whose other owners keep it; the extent and its
// checksums are freed when the last reference goes (engine/delayed.go).
// The checkers already count references as reverse mappings
// (repair/alloc.go), the rebuilds derive them the same way, and the data
// scrub holds one mapping per owner, so a bad shared block is named in
// every file that has it.
//
// A clone is not in the fast-fsync log: its destination is marked so that
// an fsync of it commits (as after a rename). Long clones are cut into
// transactions of at most cloneBatch source items; each leaves the
// destination consistent (its size covers what was cloned so far), so a
// crash between them leaves a prefix cloned, as a short copy_file_range
// would.

// cloneBatch bounds the items one clone transaction maps (a variable:
// tests make it small).
var cloneBatch = 1024

// Clone makes dst a copy of all of src by sharing its extents (FICLONE):
// CloneRange of src's whole size to offset 0 of dst.
func (f *FS) Clone(src, dst uint64) error {
	a, err := f.GetAttr(src)
	if err != nil {
		return err
	}
	_, err = f.CloneRange(src, 0, dst, 0, int64(a.Size))
	return err
}

// CloneRange shares bytes [srcOff, srcOff+n) of src with dst at dstOff
// (FICLONERANGE): afterwards they read the same, and no data block was
// written. Offsets must be multiples of the block size, and so must n,
// unless the range ends at src's end of file and reaches or passes dst's
// (the last partial block is then shared, bytes past the end and all).
// dst grows to cover the range. Overlapping ranges of one file, and
// anything but two regular files, give EINVAL.
//
// It returns the bytes cloned: less than n only with an error, when a
// failure (no space for metadata, damage met) stopped it after some
// transactions committed their part.
func (f *FS) CloneRange(src uint64, srcOff int64, dst uint64, dstOff int64, n int64) (int64, error) {
	if srcOff < 0 || dstOff < 0 || n < 0 || srcOff%bs != 0 || dstOff%bs != 0 ||
		uint64(srcOff)+uint64(n) > 1<<50 || uint64(dstOff)+uint64(n) > 1<<50 {
		return 0, syscall.EINVAL
	}
	if err := f.writable(dst); err != nil {
		return 0, err
	}
	if err := f.prepare(src, dst); err != nil {
		return 0, errno(err)
	}
	if src == dst && srcOff < dstOff+n && dstOff < srcOff+n {
		return 0, syscall.EINVAL
	}
	if n == 0 {
		return 0, nil
	}
	f.writes.Add(1)
	nb := (uint64(n) + bs - 1) / bs
	sa, da := uint64(srcOff)/bs, uint64(dstOff)/bs
	var done uint64 // blocks cloned
	flushes := 0
	for done < nb {
		var gen format.Gen
		var step uint64
		err := f.e.Update(func(tx *engine.Tx) error {
			// What is shared, and what the destination range drops, must
			// be in the trees (delalloc.go): written out by flushBoth.
			if f.dirty(src) != nil || f.dirty(dst) != nil {
				return errBuffered
			}
			sin, err := mustInode(tx, src)
			if err != nil {
				return err
			}
			din := sin
			if dst != src {
				if din, err = mustInode(tx, dst); err != nil {
					return err
				}
			}
			if !isReg(sin) || !isReg(din) {
				return syscall.EINVAL
			}
			if done == 0 {
				// The range must lie within src, and an unaligned one end
				// at src's end of file and reach dst's.
				end := uint64(srcOff) + uint64(n)
				if end > sin.Size || (end%bs != 0 && (end != sin.Size || uint64(dstOff)+uint64(n) < din.Size)) {
					return syscall.EINVAL
				}
			}
			items, err := f.cloneSource(tx, src, sa+done, sa+nb)
			if err != nil {
				return err
			}
			// The batch ends where its last item ends (or at the range's
			// end): the destination range is punched only that far.
			end := sa + nb
			if len(items) == cloneBatch {
				last := items[len(items)-1]
				end = min(end, last.at+last.fe.Count)
			}
			a, b := da+done, da+(end-sa)
			if err := f.probeExtents(tx, dst, a, b); err != nil {
				return err
			}
			unmapped, err := punch(tx, dst, a, b)
			if err != nil {
				return err
			}
			if dst == src {
				// The punch may have split an item of the source's file
				// that straddles both ranges: read the source again.
				if items, err = f.cloneSource(tx, src, sa+done, end); err != nil {
					return err
				}
			}
			din.Blocks -= min(din.Blocks, unmapped)
			etr, err := tx.Tree(format.TreeExtent)
			if err != nil {
				return err
			}
			for _, it := range items {
				lo, hi := max(it.at, sa+done), min(it.at+it.fe.Count, end)
				fe := it.fe
				fe.Offset += lo - it.at
				fe.Count = hi - lo
				fb := da + (lo - sa)
				if err := putExtent(tx, etr, dst, fb, fe, engine.OpInsert); err != nil {
					return err
				}
				tx.AddRef(format.Owner{Inode: dst, Offset: fb}, fe)
				din.Blocks += fe.Count
			}
			step = end - (sa + done)
			size := uint64(dstOff) + min(uint64(n), (done+step)*bs)
			if size > din.Size {
				din.Size = size
			}
			now := ts(time.Now())
			din.Mtime, din.Ctime = now, now
			gen = tx.Gen()
			return putInode(tx, dst, din)
		})
		if errors.Is(err, errBuffered) && flushes < 8 {
			// Write the buffers out and try again; if writers keep
			// adding to them, by a commit, which writes out everything.
			flushes++
			if flushes <= 4 {
				err = f.e.Update(func(tx *engine.Tx) error {
					if err := f.flushIno(tx, src); err != nil {
						return err
					}
					return f.flushIno(tx, dst)
				})
			} else {
				err = f.e.Sync()
			}
			if err == nil {
				continue
			}
		}
		if errors.Is(err, errBuffered) {
			err = fmt.Errorf("writers keep adding to the files: %w", syscall.EAGAIN)
		}
		if err != nil {
			if done > 0 {
				return int64(min(uint64(n), done*bs)), errno(err)
			}
			return 0, errno(err)
		}
		f.markFull(dst, gen)
		done += step
	}
	return n, nil
}

// errBuffered: a file the clone reads or changes has buffered blocks.
var errBuffered = errors.New("file has buffered blocks")

// cloneItem is a source file extent item at file block at.
type cloneItem struct {
	at uint64
	fe format.FileExtent
}

// cloneSource returns up to cloneBatch items of ino mapping blocks in [a, b)
// (the first may start before a), after probing that range for damage.
func (f *FS) cloneSource(tx *engine.Tx, ino, a, b uint64) ([]cloneItem, error) {
	if err := f.probeExtents(tx, ino, a, b); err != nil {
		return nil, err
	}
	var items []cloneItem
	if at, fe, ok, err := extentAt(tx, ino, a); err != nil {
		return nil, err
	} else if ok && at < a {
		items = append(items, cloneItem{at, fe})
	}
	tr, _ := tx.ReadTree(format.TreeExtent)
	var derr error
	err := tr.Ascend(format.FileExtentKey(ino, a), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeFileExtent || k.Off >= b || len(items) == cloneBatch {
			return false
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil {
			derr = err
			return false
		}
		items = append(items, cloneItem{k.Off, fe})
		return true
	})
	if err == nil {
		err = derr
	}
	return items, err
}

// copyChunk bounds one read-and-write step of a byte copy.
const copyChunk = 1 << 20

// CopyRange copies up to n bytes from src at srcOff to dst at dstOff
// (copy_file_range): it stops at src's end of file and returns the bytes
// copied. Where both offsets have the same position within a block, the
// whole blocks between are shared (CloneRange), not copied; the partial
// blocks at either end, and everything when the positions differ, are
// read and written. Overlapping ranges of one file give EINVAL.
func (f *FS) CopyRange(src uint64, srcOff int64, dst uint64, dstOff int64, n int64) (int64, error) {
	if srcOff < 0 || dstOff < 0 || n < 0 {
		return 0, syscall.EINVAL
	}
	if err := f.writable(dst); err != nil {
		return 0, err
	}
	if err := f.prepare(src, dst); err != nil {
		return 0, errno(err)
	}
	a, err := f.GetAttr(src)
	if err != nil {
		return 0, err
	}
	if a.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return 0, syscall.EINVAL
	}
	if uint64(srcOff) >= a.Size {
		return 0, nil
	}
	n = min(n, int64(a.Size)-srcOff)
	if src == dst && srcOff < dstOff+n && dstOff < srcOff+n {
		return 0, syscall.EINVAL
	}
	if srcOff%bs != dstOff%bs {
		return f.copyBytes(src, srcOff, dst, dstOff, n)
	}
	var done int64
	if head := min(n, (bs-srcOff%bs)%bs); head > 0 {
		c, err := f.copyBytes(src, srcOff, dst, dstOff, head)
		if done += c; err != nil || c < head {
			return done, err
		}
	}
	mid := (n - done) / bs * bs
	if rest := n - done - mid; rest > 0 {
		// The tail ends at src's end of file: share its block too when
		// that does not cut into dst's data past the range. (Sizes are
		// read again: the head's copy may have grown src, if it is dst.)
		s, err := f.GetAttr(src)
		if err != nil {
			return done, err
		}
		d, err := f.GetAttr(dst)
		if err != nil {
			return done, err
		}
		if uint64(srcOff+n) == s.Size && uint64(dstOff+n) >= d.Size {
			c, err := f.CloneRange(src, srcOff+done, dst, dstOff+done, mid+rest)
			if done += c; err == nil || c > 0 || !errors.Is(err, syscall.EINVAL) {
				return done, err
			}
			// A writer changed a size meanwhile: copy the tail instead.
		}
	}
	if mid > 0 {
		c, err := f.CloneRange(src, srcOff+done, dst, dstOff+done, mid)
		if done += c; err != nil {
			return done, err
		}
	}
	if rest := n - done; rest > 0 {
		c, err := f.copyBytes(src, srcOff+done, dst, dstOff+done, rest)
		done += c
		return done, err
	}
	return done, nil
}

// copyBytes copies n bytes by reading and writing them.
func (f *FS) copyBytes(src uint64, srcOff int64, dst uint64, dstOff int64, n int64) (int64, error) {
	buf := make([]byte, min(n, copyChunk))
	var done int64
	for done < n {
		p := buf[:min(n-done, copyChunk)]
		r, err := f.Read(src, p, srcOff+done)
		if err != nil {
			return done, err
		}
		if r == 0 {
			return done, nil
		}
		w, err := f.Write(dst, p[:r], dstOff+done)
		done += int64(w)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
