package fs

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// File data.
//
// Every write is copy-on-write: the written block range gets a new extent
// (at most format.MaxExtentBlocks blocks), its data goes straight to the
// device (the blocks are unreferenced by any committed generation, so this
// is safe at any time), a crc32c per block goes to the csum tree under the
// extent's start, and the file extent tree maps the range to it. Extents the
// write covers lose their reference for the covered part: an extent wholly
// covered loses its item; one partly covered keeps its item for what is left
// (a bookend, as in btrfs) and gains a second item if the write splits it in
// the middle. A disk extent is freed (with its checksums) when its last
// item goes.
//
// Partial blocks are read, merged and rewritten. Reads verify every block
// against its checksum and return EIO, never wrong bytes — except where
// damage to the csum tree hid the checksums: the engine then runs the
// tree degraded (engine/degraded.go), a write whose record the damage
// blocks goes on without it, and a read whose record it hides is served
// unverified and counted (Stats.UnverifiedReads), until the tree is
// rebuilt (repair/csum_repair.go, which computes the lost records again
// from the data and reports them as never verified).

const bs = format.BlockSize

// Open records an open handle on ino (unlinked inodes live until the last
// Release).
func (f *FS) Open(ino uint64) error {
	_, err := f.GetAttr(ino)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.opens[ino]++
	f.mu.Unlock()
	return nil
}

// Release drops an open handle; the last one of an unlinked inode frees it.
func (f *FS) Release(ino uint64) error {
	f.mu.Lock()
	f.opens[ino]--
	last := f.opens[ino] <= 0
	if last {
		delete(f.opens, ino)
	}
	f.mu.Unlock()
	if !last {
		return nil
	}
	freed := false
	err := f.e.Update(func(tx *engine.Tx) error {
		in, ok, err := getInode(tx, ino)
		if err != nil || !ok || in.Nlink > 0 {
			return err
		}
		if err := unmarkDeleted(tx, ino); err != nil {
			return err
		}
		freed = true
		return f.freeInode(tx, ino, in)
	})
	if err == nil && freed && format.SubvolOf(ino) != 0 && f.e.PassRequired(engine.PassSubvolReap) {
		// The last open inode of a deleted subvolume may be what its
		// deletion waits for (subvol.go).
		f.startReaper()
	}
	return errno(err)
}

// purgeDeleted is the deleted_inodes recovery pass: nothing is open after a
// mount, so every inode in the deleted tree goes.
//
// Damage never makes it fail the mount. The list is read whole before
// anything changes: damage there is returned untouched, and the engine
// marks the deleted tree sick and mounts without freeing anything
// (engine/recovery.go; its repairer lists the inodes again). Damage met
// by one inode — its item, or the file extent records its data is freed
// through (probed first, as an unlink does) — leaves that inode and its
// entry for a later mount, marks the structure it was met in sick, and
// the others are freed.
func (f *FS) purgeDeleted(tx *engine.Tx) error {
	tr, _ := tx.ReadTree(format.TreeDeleted)
	var inos []uint64
	if err := tr.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
		if k.Type == format.TypeDeleted {
			inos = append(inos, k.Obj)
		}
		return true
	}); err != nil {
		return fmt.Errorf("read the deleted inodes: %w", err)
	}
	for _, ino := range inos {
		in, ok, err := getInode(tx, ino)
		if err != nil {
			if f.e.NoteDamage(err) {
				continue
			}
			return err
		}
		if ok && in.Nlink == 0 && isReg(in) {
			if err := f.probeExtents(tx, ino, 0, ^uint64(0)>>12); err != nil {
				if errors.Is(err, format.ErrCorrupt) {
					continue
				}
				return err
			}
		}
		if err := unmarkDeleted(tx, ino); err != nil {
			return err
		}
		if ok && in.Nlink == 0 {
			if err := f.freeInode(tx, ino, in); err != nil {
				return err
			}
		}
	}
	return nil
}

// probeExtents reads, before anything is changed, the file extent items
// a change of file blocks [a, b) of ino will read again to change them.
// Damage there fails the one operation (EIO), marks the extent tree sick,
// and leaves the transaction untouched: the mount stays read-write and
// every other file goes on as before. (Without the probe the damage would
// be met halfway through the change and abort the transaction.)
func (f *FS) probeExtents(tx *engine.Tx, ino, a, b uint64) error {
	_, _, _, err := extentAt(tx, ino, a)
	if err == nil {
		tr, _ := tx.ReadTree(format.TreeExtent)
		err = tr.Ascend(format.FileExtentKey(ino, a), func(k format.Key, _ []byte) bool {
			return k.Obj == ino && k.Type == format.TypeFileExtent && k.Off < b
		})
	}
	if err != nil && f.e.NoteDamage(err) {
		return fmt.Errorf("inode %d blocks %d..%d: %w", ino, a, b, err)
	}
	return err
}

// extentAt returns the file extent item covering file block fb, if any.
func extentAt(tx *engine.Tx, ino, fb uint64) (uint64, format.FileExtent, bool, error) {
	tr, _ := tx.ReadTree(format.TreeExtent)
	k, v, ok, err := tr.Last(format.FileExtentKey(ino, fb))
	if err != nil || !ok || k.Obj != ino || k.Type != format.TypeFileExtent {
		return 0, format.FileExtent{}, false, err
	}
	fe, err := format.DecodeFileExtent(v)
	if err != nil {
		return 0, format.FileExtent{}, false, err
	}
	if k.Off+fe.Count <= fb {
		return 0, format.FileExtent{}, false, nil
	}
	return k.Off, fe, true, nil
}

// readBlocks reads file blocks [fb, fb+n) into p (n*bs bytes), zeros for
// holes, verifying checksums, all in tx (a writer's partial blocks).
func (f *FS) readBlocks(tx *engine.Tx, ino, fb, n uint64, p []byte) error {
	rp, err := f.planRead(tx, ino, fb, n)
	return f.runRead(tx.Device(), ino, rp, err, p)
}

// A data read runs in two steps. planRead, in a view, resolves the file
// blocks to device blocks and copies their checksums; runRead then reads
// the device and checks the checksums, out of the writer lock when the
// caller holds the blocks (Tx.HoldBlocks): readers of different files —
// or of one — do their device reads and crc32c at the same time, and
// writers go on meanwhile. The blocks a plan names stay as it saw them:
// data blocks are never written in place (a write gets a new extent), and
// the hold keeps them from being reused until the read is done. So a read
// returns the bytes of the writes that returned before it, whatever a
// writer does while it runs its plan.

// readSeg is one run of a planned read: blocks [at, at+n) of the buffer
// come from the device at disk (a hole when disk is 0).
type readSeg struct {
	at, n uint64
	fb    uint64 // file block of the run's first block
	disk  format.BlockNr
	start format.BlockNr // the extent's start (its checksum item's key)
	// csums holds the run's n checksums; nil when the run is served
	// unverified (the damaged csum tree hides them) or is a hole.
	csums []byte
	// err fails the read after the run's device read (the checksum item
	// is missing or damaged), counted as a checksum error.
	err error
	// mem holds the run's data when it is buffered, not yet written out
	// (delalloc.go): copied from the buffer while the plan was made.
	mem []byte
}

// readPlan is a planned read.
type readPlan struct {
	segs       []readSeg
	unverified uint64 // blocks served without their checksums
}

// planRead plans the read of file blocks [fb, fb+n) of ino. An error met
// after some runs were planned is returned with the plan of those runs,
// which runRead reads before it returns the error (a device read error
// there comes first, as it would have reading as it goes).
func (f *FS) planRead(tx *engine.Tx, ino, fb, n uint64) (readPlan, error) {
	var rp readPlan
	df := f.dirty(ino)
	for done := uint64(0); done < n; {
		lim := n // the blocks up to the next buffered one
		if df != nil {
			var mem []byte
			cnt := uint64(0)
			df.blocks.Ascend(fb+done, func(b uint64, d *dirtyBlock) bool {
				if b != fb+done+cnt || done+cnt >= n {
					if cnt == 0 && b < fb+n {
						lim = b - fb
					}
					return false
				}
				mem = append(mem, d.data...)
				cnt++
				return true
			})
			if cnt > 0 {
				rp.segs = append(rp.segs, readSeg{at: done, n: cnt, fb: fb + done, mem: mem})
				done += cnt
				continue
			}
		}
		at, fe, ok, err := extentAt(tx, ino, fb+done)
		if err != nil {
			return rp, err
		}
		if !ok {
			// A hole up to the next extent.
			next := fb + lim
			tr, _ := tx.ReadTree(format.TreeExtent)
			k, _, found, err := tr.First(format.FileExtentKey(ino, fb+done))
			if err != nil {
				return rp, err
			}
			if found && k.Obj == ino && k.Type == format.TypeFileExtent && k.Off < next {
				next = k.Off
			}
			if next <= fb+done {
				// An item the covering lookup did not see (a damaged key):
				// refuse rather than loop.
				return rp, fmt.Errorf("inode %d block %d: extent item %s does not map where its key says: %w", ino, fb+done, k, format.ErrCorrupt)
			}
			rp.segs = append(rp.segs, readSeg{at: done, n: next - fb - done, fb: fb + done})
			done = next - fb
			continue
		}
		cnt := min(at+fe.Count-(fb+done), lim-done)
		seg := readSeg{at: done, n: cnt, fb: fb + done, disk: fe.Disk(at, fb+done), start: fe.Start}
		if err := f.planVerify(tx, ino, fe, &seg, &rp); err != nil {
			return rp, err
		}
		rp.segs = append(rp.segs, seg)
		done += cnt
		if seg.err != nil {
			break
		}
	}
	return rp, nil
}

// planVerify copies the checksums of seg's blocks from the csum tree.
// Blocks whose record damage to the tree hides — the lookup meets it, or
// finds nothing while the tree is sick — are served unverified (counted),
// not refused: the data is what is on disk, only its proof is lost.
func (f *FS) planVerify(tx *engine.Tx, ino uint64, fe format.FileExtent, seg *readSeg, rp *readPlan) error {
	tr, _ := tx.ReadTree(format.TreeCsum)
	idx := uint64(seg.disk - fe.Start) // < fe.Len: DecodeFileExtent checks Offset+Count <= Len
	var bad bool
	ok, err := tr.Lookup(format.CsumKey(fe.Start), func(cs []byte) {
		if _, err := format.DecodeCsums(cs); err != nil || uint64(len(cs)/4) != fe.Len {
			bad = true
			return
		}
		seg.csums = append([]byte(nil), cs[4*idx:4*(idx+seg.n)]...)
	})
	switch {
	case err != nil:
		if !tx.CsumDamaged(err) {
			return err
		}
		rp.unverified += seg.n
	case !ok && f.e.Sick(engine.StructCsum):
		rp.unverified += seg.n
	case !ok:
		seg.err = fmt.Errorf("inode %d block %d: extent %d has no checksums: %w", ino, seg.fb, fe.Start, syscall.EIO)
	case bad:
		seg.err = fmt.Errorf("inode %d block %d: checksum item of extent %d is damaged: %w", ino, seg.fb, fe.Start, syscall.EIO)
	}
	return nil
}

// runRead reads rp's runs from dev into p (zeros for holes) and checks
// them against their checksums; then it returns perr, the error planRead
// stopped at, if any.
func (f *FS) runRead(dev disk.Device, ino uint64, rp readPlan, perr error, p []byte) error {
	for _, seg := range rp.segs {
		buf := p[seg.at*bs : (seg.at+seg.n)*bs]
		if seg.mem != nil {
			copy(buf, seg.mem)
			continue
		}
		if seg.disk == 0 {
			clear(buf)
			continue
		}
		if _, err := dev.ReadAt(buf, int64(seg.disk)*bs); err != nil {
			return fmt.Errorf("read data blocks %d+%d of inode %d: %w", seg.disk, seg.n, ino, err)
		}
		if seg.err != nil {
			f.countCsumError(1)
			return seg.err
		}
		if seg.csums == nil {
			continue
		}
		for i := uint64(0); i < seg.n; i++ {
			if format.Checksum(buf[i*bs:(i+1)*bs]) != format.CsumAt(seg.csums, i) {
				f.countCsumError(1)
				return &ChecksumError{Ino: ino, Offset: (seg.fb + i) * bs, Disk: seg.disk + format.BlockNr(i)}
			}
		}
	}
	if perr != nil {
		return perr
	}
	if rp.unverified > 0 {
		f.countUnverified(rp.unverified)
	}
	return nil
}

// ChecksumError is a data block that failed its checksum: which file,
// where in it, and where on the device. It is an EIO (errors.Is).
type ChecksumError struct {
	Ino    uint64
	Offset uint64 // byte offset in the file of the bad block
	Disk   format.BlockNr
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("inode %d offset %d (disk block %d): data checksum mismatch", e.Ino, e.Offset, e.Disk)
}

// Unwrap makes the error an EIO.
func (e *ChecksumError) Unwrap() error { return syscall.EIO }

// ErrDataChecksum is the error id counted for data checksum failures.
const ErrDataChecksum = engine.ErrDataChecksum

func (f *FS) countCsumError(n uint64) {
	f.mu.Lock()
	f.stats.CsumErrors += n
	f.mu.Unlock()
	f.e.CountError(ErrDataChecksum, n)
}

// countUnverified counts n data blocks served without their checksums.
func (f *FS) countUnverified(n uint64) {
	f.mu.Lock()
	f.stats.UnverifiedReads += n
	f.mu.Unlock()
}

// Read reads up to len(p) bytes at off; it returns fewer at end of file.
// It looks up the inode and plans the read in a view, and reads the device
// and checks the checksums after the view, holding the blocks it planned
// (see planRead).
func (f *FS) Read(ino uint64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if err := f.prepare(ino); err != nil { // snapshot.go
		return 0, errno(err)
	}
	var (
		rp         readPlan
		perr       error
		hold       *engine.ReadHold
		dev        disk.Device
		fb, lo, hi uint64
	)
	err := f.e.View(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		if isDir(in) {
			return syscall.EISDIR
		}
		if uint64(off) >= in.Size || len(p) == 0 {
			return nil
		}
		end := min(uint64(off)+uint64(len(p)), in.Size)
		lb := (end + bs - 1) / bs
		fb = uint64(off) / bs
		lo, hi = uint64(off)-fb*bs, end-fb*bs
		rp, perr = f.planRead(tx, ino, fb, lb-fb)
		if len(rp.segs) > 0 {
			hold, dev = tx.HoldBlocks(), tx.Device()
		}
		return nil
	})
	if err != nil {
		return 0, errno(err)
	}
	if hold == nil {
		return 0, errno(perr)
	}
	defer hold.Release()
	if h := readHook; h != nil {
		h(ino)
	}
	last := rp.segs[len(rp.segs)-1]
	need := (last.at + last.n) * bs
	if lo == 0 && hi == need {
		// Whole blocks (as the kernel's reads are, but at end of file):
		// straight into p.
		if err := f.runRead(dev, ino, rp, perr, p[:need]); err != nil {
			return 0, errno(err)
		}
		return int(hi), nil
	}
	buf := make([]byte, need)
	if err := f.runRead(dev, ino, rp, perr, buf); err != nil {
		return 0, errno(err)
	}
	return copy(p, buf[lo:hi]), nil
}

// readHook, when set (tests), runs in Read between the view that planned
// the read and the device reads.
var readHook func(ino uint64)

// Write writes p at off (pwrite semantics), extending the file as needed,
// as a caller with CAP_FSETID would (WriteAs).
//
// Everything that can fail for ordinary reasons (no space, an unreadable
// partial block) is checked before the first change, so a failed write
// changes nothing; an error after a change would abort the transaction.
func (f *FS) Write(ino uint64, p []byte, off int64) (int, error) {
	return f.WriteAs(ino, p, off, Caller{})
}

// WriteAs is Write by caller c, which may clear the set-ID bits as the
// write goes in (killpriv.go). Any write drops security.capability.
func (f *FS) WriteAs(ino uint64, p []byte, off int64, c Caller) (int, error) {
	f.writes.Add(1)
	if off < 0 || uint64(off)+uint64(len(p)) > 1<<50 {
		return 0, syscall.EFBIG
	}
	if err := f.writable(ino); err != nil {
		return 0, err
	}
	if err := f.prepare(ino); err != nil {
		return 0, errno(err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	var gen format.Gen
	var capsDropped bool
	fb := uint64(off) / bs
	lb := (uint64(off) + uint64(len(p)) + bs - 1) / bs
	if f.delayedOn() {
		f.makeRoom(lb - fb + f.DelayedBlocks())
		err := f.e.Update(func(tx *engine.Tx) error {
			in, err := mustInode(tx, ino)
			if err != nil {
				return err
			}
			if !isReg(in) {
				return syscall.EINVAL
			}
			kill, err := privsToKill(tx, ino, in, c)
			if err != nil {
				return err
			}
			gen = tx.Gen()
			err = f.bufferWrite(tx, ino, in, p, uint64(off), func() error {
				if !kill {
					return nil
				}
				var err error
				capsDropped, err = killPrivs(tx, ino, in, c)
				return err
			})
			if err != nil {
				return err
			}
			return putWritten(tx, ino, in, uint64(off)+uint64(len(p)))
		})
		if err != nil {
			return 0, errno(err)
		}
		if capsDropped {
			f.markFull(ino, gen) // the log does not carry an attribute
		}
		return len(p), nil
	}
	f.makeRoom(lb - fb)
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		if !isReg(in) {
			return syscall.EINVAL
		}
		if err := f.probeExtents(tx, ino, fb, lb); err != nil {
			return err
		}
		if err := tx.ReserveData(lb - fb); err != nil {
			return err
		}
		kill, err := privsToKill(tx, ino, in, c)
		if err != nil {
			return err
		}
		// The partial first and last blocks keep their old bytes.
		end := uint64(off) + uint64(len(p))
		var head, tail []byte
		if uint64(off) > fb*bs {
			head = make([]byte, bs)
			if err := f.readBlocks(tx, ino, fb, 1, head); err != nil {
				return err
			}
		}
		if end < lb*bs {
			if lb-1 == fb && head != nil {
				tail = head
			} else {
				tail = make([]byte, bs)
				if err := f.readBlocks(tx, ino, lb-1, 1, tail); err != nil {
					return err
				}
			}
		}
		gen = tx.Gen()
		if kill {
			if capsDropped, err = killPrivs(tx, ino, in, c); err != nil {
				return err
			}
		}
		for a := fb; a < lb; a += format.MaxExtentBlocks {
			b := min(lb, a+format.MaxExtentBlocks)
			buf := make([]byte, (b-a)*bs)
			if a == fb && head != nil {
				copy(buf, head)
			}
			if b == lb && tail != nil {
				copy(buf[(b-a-1)*bs:], tail)
			}
			lo, hi := max(uint64(off), a*bs), min(end, b*bs)
			copy(buf[lo-a*bs:hi-a*bs], p[lo-uint64(off):hi-uint64(off)])
			if err := f.putData(tx, ino, in, a, buf); err != nil {
				return err
			}
		}
		return putWritten(tx, ino, in, end)
	})
	if err != nil {
		return 0, errno(err)
	}
	f.markModified(ino, gen, fb, lb)
	if capsDropped {
		f.markFull(ino, gen) // the log does not carry an attribute
	}
	return len(p), nil
}

// putWritten stores ino's item after a write that ended at byte end: the
// size grows to cover it, and the times are now.
func putWritten(tx *engine.Tx, ino uint64, in *format.InodeItem, end uint64) error {
	if end > in.Size {
		in.Size = end
	}
	now := ts(time.Now())
	in.Mtime, in.Ctime = now, now
	return putInode(tx, ino, in)
}

// makeRoom commits first when a write of n blocks would not fit but blocks
// freed since the last commit would make room once they are released.
func (f *FS) makeRoom(n uint64) {
	free, pending := f.e.Allocatable()
	if pending > 0 && free < n+f.e.TotalBlocks()/50+256 {
		f.e.Sync()
	}
}

// putData maps file blocks [a, a+len(buf)/bs) to new extents holding buf:
// one extent if the free space allows, smaller ones if it is fragmented.
func (f *FS) putData(tx *engine.Tx, ino uint64, in *format.InodeItem, a uint64, buf []byte) error {
	n := uint64(len(buf)) / bs
	unmapped, err := punch(tx, ino, a, a+n)
	if err != nil {
		return err
	}
	in.Blocks -= min(in.Blocks, unmapped)
	for done := uint64(0); done < n; {
		try := n - done
		var start format.BlockNr
		for {
			start, err = tx.AllocExtent(try, format.Owner{Inode: ino, Offset: a + done})
			if err == nil || !errors.Is(err, engine.ErrNoSpace) || try == 1 {
				break
			}
			try /= 2
		}
		if err != nil {
			return err
		}
		if err := f.writeExtent(tx, ino, a+done, start, buf[done*bs:(done+try)*bs]); err != nil {
			return err
		}
		in.Blocks += try
		done += try
	}
	return nil
}

// writeExtent writes data to a newly allocated extent at start and maps
// file block fb to it, with its checksums.
func (f *FS) writeExtent(tx *engine.Tx, ino, fb uint64, start format.BlockNr, data []byte) error {
	n := uint64(len(data)) / bs
	if _, err := tx.Device().WriteAt(data, int64(start)*bs); err != nil {
		return fmt.Errorf("write data blocks %d+%d: %w", start, n, err)
	}
	cs := make([]byte, 4*n)
	for i := uint64(0); i < n; i++ {
		format.PutCsum(cs, i, format.Checksum(data[i*bs:(i+1)*bs]))
	}
	if err := f.putCsums(tx, start, cs); err != nil {
		return err
	}
	etr, err := tx.Tree(format.TreeExtent)
	if err != nil {
		return err
	}
	return putExtent(tx, etr, ino, fb, format.FileExtent{Start: start, Len: n, Count: n}, engine.OpInsert)
}

// putCsums stores the checksums of the new data extent at start and
// publishes them. Damage met in the csum tree drops the record (the tree
// runs degraded: engine/degraded.go) and the write goes on; the event
// still carries the checksums, so a rebuild following the hooks keeps
// them.
func (f *FS) putCsums(tx *engine.Tx, start format.BlockNr, cs []byte) error {
	ctr, err := tx.Tree(format.TreeCsum)
	if err != nil {
		return err
	}
	err = ctr.Put(format.CsumKey(start), cs)
	if err != nil && !tx.CsumDamaged(err) {
		return err
	}
	tx.Hooks().Csum.Call(engine.CsumEvent{Gen: tx.Gen(), Start: start, Csums: cs})
	return nil
}

// punch removes the mapping of file blocks [a, b), dropping references of
// the extents it covered and splitting those it covered in part. It returns
// how many mapped blocks it removed.
func punch(tx *engine.Tx, ino, a, b uint64) (uint64, error) {
	etr, err := tx.Tree(format.TreeExtent)
	if err != nil {
		return 0, err
	}
	type item struct {
		at uint64
		fe format.FileExtent
	}
	var hit []item
	// The item covering a (if it starts before a) and all starting in [a, b).
	if at, fe, ok, err := extentAt(tx, ino, a); err != nil {
		return 0, err
	} else if ok && at < a {
		hit = append(hit, item{at, fe})
	}
	var derr error
	err = etr.Ascend(format.FileExtentKey(ino, a), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeFileExtent || k.Off >= b {
			return false
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil {
			derr = err
			return false
		}
		hit = append(hit, item{k.Off, fe})
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return 0, err
	}
	var unmapped uint64
	for _, it := range hit {
		end := it.at + it.fe.Count
		unmapped += min(end, b) - max(it.at, a)
		owner := format.Owner{Inode: ino, Offset: it.at}
		switch {
		case it.at >= a && end <= b: // wholly covered
			if err := delExtent(tx, etr, ino, it.at); err != nil {
				return 0, err
			}
			if err := tx.DropRef(it.fe.Start, it.fe.Len, owner); err != nil {
				return 0, err
			}
		case it.at < a && end > b: // split in the middle: left keeps, right is new
			left := it.fe
			left.Count = a - it.at
			if err := putExtent(tx, etr, ino, it.at, left, engine.OpUpdate); err != nil {
				return 0, err
			}
			tx.RemapRef(owner, left)
			right := it.fe
			right.Offset += b - it.at
			right.Count = end - b
			if err := putExtent(tx, etr, ino, b, right, engine.OpInsert); err != nil {
				return 0, err
			}
			tx.AddRef(format.Owner{Inode: ino, Offset: b}, right)
		case it.at < a: // tail covered
			left := it.fe
			left.Count = a - it.at
			if err := putExtent(tx, etr, ino, it.at, left, engine.OpUpdate); err != nil {
				return 0, err
			}
			tx.RemapRef(owner, left)
		default: // head covered: the rest moves to b
			if err := delExtent(tx, etr, ino, it.at); err != nil {
				return 0, err
			}
			right := it.fe
			right.Offset += b - it.at
			right.Count = end - b
			if err := putExtent(tx, etr, ino, b, right, engine.OpInsert); err != nil {
				return 0, err
			}
			// Add the new reference before dropping the old one, so an
			// extent of this transaction never looks unreferenced.
			tx.AddRef(format.Owner{Inode: ino, Offset: b}, right)
			if err := tx.DropRef(it.fe.Start, it.fe.Len, owner); err != nil {
				return 0, err
			}
		}
	}
	return unmapped, nil
}

// Truncate sets the file's size. Growing leaves a hole; shrinking drops the
// blocks past the end and zeroes the tail of the last partial block.
func (f *FS) Truncate(ino uint64, size uint64) error {
	f.writes.Add(1)
	if size > 1<<50 {
		return syscall.EFBIG
	}
	if err := f.writable(ino); err != nil {
		return err
	}
	if err := f.prepare(ino); err != nil {
		return errno(err)
	}
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		if isDir(in) {
			return syscall.EISDIR
		}
		if !isReg(in) {
			return syscall.EINVAL
		}
		gen = tx.Gen()
		if err := f.truncate(tx, ino, in, size); err != nil {
			return err
		}
		return putInode(tx, ino, in)
	})
	if err == nil {
		f.markFull(ino, gen)
	}
	return errno(err)
}

func (f *FS) truncate(tx *engine.Tx, ino uint64, in *format.InodeItem, size uint64) error {
	if size < in.Size {
		if err := f.probeExtents(tx, ino, size/bs, ^uint64(0)>>12); err != nil {
			return err
		}
		// Read the new last block before changing anything: its tail
		// past the new size is zeroed, so a later extension reads zeros.
		var last []byte
		lb := size / bs
		if size%bs != 0 {
			if _, _, ok, err := extentAt(tx, ino, lb); err != nil {
				return err
			} else if ok {
				if err := tx.ReserveData(1); err != nil {
					return err
				}
				last = make([]byte, bs)
				if err := f.readBlocks(tx, ino, lb, 1, last); err != nil {
					return err
				}
				clear(last[size%bs:])
			}
		}
		keep := (size + bs - 1) / bs
		f.trimDirty(ino, size)
		unmapped, err := punch(tx, ino, keep, ^uint64(0)>>12)
		if err != nil {
			return err
		}
		in.Blocks -= min(in.Blocks, unmapped)
		if last != nil {
			if err := f.putData(tx, ino, in, lb, last); err != nil {
				return err
			}
		}
	}
	in.Size = size
	now := ts(time.Now())
	in.Mtime, in.Ctime = now, now
	return nil
}

// SetAttrIn says which attributes to change.
type SetAttrIn struct {
	Mode         *uint32 // permission bits only
	UID, GID     *uint32
	Size         *uint64
	Atime, Mtime *time.Time
	// Caller clears the set-ID bits as the change goes in when Kill is
	// set (the kernel's FATTR_KILL_SUIDGID: a truncate by a caller
	// without CAP_FSETID, a chown of anything but a directory;
	// killpriv.go).
	Caller Caller
}

// SetAttr changes attributes and returns the new ones.
func (f *FS) SetAttr(ino uint64, s SetAttrIn) (Attr, error) {
	if err := f.writable(ino); err != nil {
		return Attr{}, err
	}
	if err := f.prepare(ino); err != nil {
		return Attr{}, errno(err)
	}
	var a Attr
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
		gen = tx.Gen()
		if isReg(in) && (s.Caller.Kill || s.Size != nil || s.UID != nil || s.GID != nil) {
			// A truncate or chown drops the capabilities too.
			if _, err := killPrivs(tx, ino, in, s.Caller); err != nil {
				return err // SetAttr marks the inode full anyway
			}
		} else if !isDir(in) {
			s.Caller.clearSetID(in)
		}
		if s.Size != nil && *s.Size != in.Size {
			if isDir(in) {
				return syscall.EISDIR
			}
			if !isReg(in) {
				return syscall.EINVAL
			}
			if err := f.truncate(tx, ino, in, *s.Size); err != nil {
				return err
			}
		}
		if s.Mode != nil {
			in.Mode = in.Mode&syscall.S_IFMT | *s.Mode&^syscall.S_IFMT
		}
		if s.UID != nil {
			in.UID = *s.UID
		}
		if s.GID != nil {
			in.GID = *s.GID
		}
		if s.Atime != nil {
			in.Atime = ts(*s.Atime)
		}
		if s.Mtime != nil {
			in.Mtime = ts(*s.Mtime)
		}
		in.Ctime = ts(time.Now())
		a = f.attrOf(ino, in)
		return putInode(tx, ino, in)
	})
	if err == nil {
		f.markFull(ino, gen)
	}
	return a, errno(err)
}

// putExtent stores a file extent item and publishes the change.
func putExtent(tx *engine.Tx, etr *eb.Tree, ino, fb uint64, fe format.FileExtent, op engine.Op) error {
	if err := etr.Put(format.FileExtentKey(ino, fb), fe.Encode()); err != nil {
		return err
	}
	tx.Hooks().Extent.Call(engine.ExtentEvent{Gen: tx.Gen(), Op: op, Ino: ino, FileBlock: fb, Extent: fe})
	return nil
}

// delExtent deletes a file extent item and publishes the change.
func delExtent(tx *engine.Tx, etr *eb.Tree, ino, fb uint64) error {
	if _, err := etr.Delete(format.FileExtentKey(ino, fb)); err != nil {
		return err
	}
	tx.Hooks().Extent.Call(engine.ExtentEvent{Gen: tx.Gen(), Op: engine.OpDelete, Ino: ino, FileBlock: fb})
	return nil
}
