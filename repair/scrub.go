package repair

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// Scrub and repair of a mounted filesystem (the XFS flow: scrub → repair →
// scrub again; the second scrub is what the report shows as remaining).
//
// Phase 1 checks the last committed generation through a pinned snapshot:
// writers are not stalled, and nothing racing with the check can be seen
// half-done, so a busy filesystem yields no false findings. Phase 2 (with
// Data) reads the file data of a pinned generation in disk order, straight
// from the device, verifying each block's checksum on every core, and
// names the path and offset of each bad one (datascrub.go). Findings are
// counted in the superblock's error section. With Repair, damage the
// repairers handle is repaired through the ops table (ops.go), in
// dependency order, each repair followed by a full check.

// ScrubOptions configure Scrub.
type ScrubOptions struct {
	Repair  bool
	Data    bool
	TempDir string // for repair's xfiles
	Logger  *slog.Logger
	// Mode names the run in the report: "online" or "offline".
	Mode string
	// Control, if set, receives the run's progress and can pause it
	// (cancel it through the context).
	Control *ScrubControl
	// Resume continues the data scrub of an interrupted run from its
	// cursor (the metadata is checked again in full); Checkpoint, if set,
	// is told the data scrub's position after each run of blocks it reads
	// (its NextDisk, Verified, Found and Bad; the caller keeps it, see
	// engine.ScrubCursor).
	Resume     *engine.ScrubCursor
	Checkpoint func(engine.ScrubCursor)
	// Since, with Data, reads only the file data written after this
	// generation (see scope.go); the metadata is checked in full.
	Since uint64
	// OnlyErrors, with Data, reads only the blocks of Errors (the last
	// run's bad blocks: zpool scrub -e).
	OnlyErrors bool
	Errors     []engine.BadBlock

	fsys *fs.FS // the filesystem scrubbed (the namespace repairs need it)
}

// Scrub checks fsys (and repairs it with opts.Repair) and returns the report.
//
// Canceled (ctx), it returns the report of what was checked until then,
// marked Interrupted and not Complete, together with ctx's error: the
// caller can show the partial result.
func Scrub(ctx context.Context, fsys *fs.FS, target string, opts ScrubOptions) (rep *Report, err error) {
	defer func() { opts.Control.end(rep, err) }() // progress.go
	started := time.Now()
	if opts.Mode == "" {
		opts.Mode = "online"
	}
	e := fsys.Engine()
	opts.fsys = fsys
	var verified uint64
	var dataRate float64 // of the last data scrub: bytes verified a second
	ctl := opts.Control
	first := true // the first pass counts progress; the checks after repairs do not
	var scope *dataScope
	if opts.Data && opts.OnlyErrors {
		scope = scopeBlocks(opts.Errors)
	} else if opts.Data && opts.Since > 0 {
		pin := e.Pin()
		var err error
		scope, err = scopeSince(pin, format.Gen(opts.Since))
		pin.Release()
		if err != nil {
			return nil, fmt.Errorf("the data written since generation %d: %w", opts.Since, err)
		}
	}
	var pre *plannedData // the first pass's data scrub, planned to count its blocks
	defer func() { pre.release() }()
	if ctl != nil {
		// The whole first pass's units, known before it starts, so the
		// percentage never goes back when the data scrub begins.
		pin := e.Pin()
		units := pin.ItemCount()
		pin.Release()
		switch {
		case scope != nil:
			units += scope.blocks
		case opts.Data:
			// Canceled meanwhile (its only error), the data scrub plans
			// again, and the check reports the cancellation.
			if p, err := planAhead(ctx, e, ctl, opts.Resume); err == nil {
				pre = p
				units += pre.units()
			}
		}
		ctl.phaseStart("check", units)
	}
	check := func() (*engine.CheckResult, []engine.Finding, error) {
		var res *engine.CheckResult
		var found []engine.Finding
		var err error
		if opts.Data {
			var cur *engine.ScrubCursor
			var cp func(engine.ScrubCursor)
			var planned *plannedData
			if first {
				cur, cp, planned = opts.Resume, opts.Checkpoint, pre
			}
			var ds dataStats
			res, found, ds, err = checkWithData(ctx, fsys, ctl, first, cur, cp, scope, planned)
			pre.release() // the first pass's generation is not read again
			verified += ds.verified
			dataRate = ds.rate()
		} else {
			res, found, err = checkEngineTicked(ctx, e, ctl, first)
		}
		if first && err == nil {
			err = ctl.finishPass(ctx, !opts.Repair || len(found) == 0) // nothing to repair: the work ends here
		}
		first = false
		return res, found, err
	}
	// What the engine repaired on its own since the last run (superblock
	// copies an open rewrote, a root tree it replaced): found, and
	// repaired, in this report. Taken after the check, so that a repair
	// made while it ran is in one or the other.
	res, found, err := check()
	opened := e.TakeOpenRepairs()
	if err != nil {
		rep, err := interrupted(ctx, err, opts, target, started, res, append(opened, found...), e, verified)
		if rep != nil {
			rep.ThroughputBytesS = dataRate
		}
		return rep, err
	}
	for _, f := range found {
		e.CountError(f.ID, 1)
	}
	rep = newReport(opts.Mode, target, started, res, append(opened, found...))
	describe(rep, e, opts, verified)
	rep.ThroughputBytesS = dataRate
	if scope != nil {
		rep.Scope = scope.what
		rep.Notes = append(rep.Notes, fmt.Sprintf("the data scrub read only %s (%d blocks); the metadata was checked in full", scope.what, scope.blocks))
	}
	if r := opts.Resume; r != nil && opts.Data {
		rep.Resumed = &Resumed{RunStarted: time.Unix(0, r.Run).UTC(), FromInode: r.NextIno, FromDiskBlock: uint64(r.NextDisk), VerifiedBefore: r.Verified}
		where := fmt.Sprintf("before inode %d", r.NextIno)
		if r.DiskOrder {
			where = fmt.Sprintf("before disk block %d", r.NextDisk)
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("resumed the data scrub of the run started %s, interrupted %s: %d bytes verified then were not read again; its %d bad blocks are reported again",
			rep.Resumed.RunStarted.Format(time.RFC3339), where, r.Verified, len(r.Bad)))
	}
	if n := countIDs(opened, engine.ErrSuperCopyBad, engine.ErrSuperCopyStale, engine.ErrSuperCopyField); n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("opening the image rewrote %d superblock copies that were invalid or stale", n))
	}
	if countIDs(opened, engine.ErrSuperFreeCount) > 0 {
		rep.Notes = append(rep.Notes, "opening the image recomputed the superblock's free-block count")
	}
	if countTree(opened, format.TreeRoot) > 0 {
		rep.Notes = append(rep.Notes, "the engine found the root tree damaged and wrote a new one (from the superblock's root backup or a scan of every block's header at the open, from the roots in memory at a commit)")
	}
	markHealth(e, res.Gen, found)
	if !opts.Repair || len(found) == 0 {
		if len(opened) > 0 {
			rep.markRepaired(append(opened, found...), found)
		}
		return rep, nil
	}
	if ro, _ := e.ReadOnly(); ro {
		rep.Notes = append(rep.Notes, "the filesystem is read-only: nothing was repaired")
		return rep, nil
	}
	// Repair in dependency order through the ops table; each repair is
	// followed by a full check, and the last is what the report shows.
	res2 := res
	run := &repairRun{e: e, opts: opts, rep: rep, recheck: func() ([]engine.Finding, error) {
		verified = 0
		r, left, err := check()
		if err != nil {
			return nil, err
		}
		res2 = r
		return left, nil
	}}
	left, err := run.repairAll(ctx, found)
	if err != nil {
		if ctx.Err() != nil {
			rep.Interrupted, rep.Complete = true, false
			rep.DurationS = time.Since(started).Seconds()
			return rep, err
		}
		return nil, err
	}
	markHealth(e, res2.Gen, left)
	rep.markRepaired(append(opened, found...), left)
	// What the engine repaired on its own while the repairs ran (a commit
	// meeting the damaged root tree before the root row did): the same
	// damage as a finding of this run is not counted twice.
	rep.addSelfRepaired(e.TakeOpenRepairs(), append(opened, found...))
	rep.Generation = uint64(res2.Gen)
	rep.BytesVerified = verified
	rep.ThroughputBytesS = dataRate
	rep.DurationS = time.Since(started).Seconds()
	return rep, nil
}

// describe fills in what the report says of the filesystem and the run.
func describe(rep *Report, e *engine.Engine, opts ScrubOptions, verified uint64) {
	s := e.Pin()
	sb := s.Super()
	s.Release()
	rep.UUID, rep.Label = sb.FSID.String(), sb.Label
	rep.Requested = Requested{Repair: opts.Repair, Data: opts.Data, Since: opts.Since, Errors: opts.OnlyErrors}
	rep.BytesVerified = verified
}

// interrupted returns the partial report of a check that ctx canceled, or
// err alone if it was not canceled.
func interrupted(ctx context.Context, err error, opts ScrubOptions, target string, started time.Time,
	res *engine.CheckResult, found []engine.Finding, e *engine.Engine, verified uint64) (*Report, error) {
	if ctx.Err() == nil {
		return nil, err
	}
	rep := newReport(opts.Mode, target, started, res, found)
	describe(rep, e, opts, verified)
	rep.Interrupted, rep.Complete = true, false
	return rep, err
}

func checkEngine(ctx context.Context, e *engine.Engine) (*engine.CheckResult, []engine.Finding, error) {
	return checkEngineTicked(ctx, e, nil, false)
}

// checkEngineTicked is checkEngine reporting to c (if set), where it can
// be paused: the first pass counts one unit per item (and the blocks
// walked as bytes read), a check after a repair only its phase.
func checkEngineTicked(ctx context.Context, e *engine.Engine, c *ScrubControl, first bool) (*engine.CheckResult, []engine.Finding, error) {
	s := e.Pin()
	defer s.Release()
	c.allowReadAhead(s)
	var out []engine.Finding
	var tick func()
	if c != nil {
		part := "check"
		if !first {
			part = "recheck"
		}
		c.partStart(part)
		defer c.partEnd(part)
		tick = func() { c.tick(0) }
	}
	res, err := s.CheckTicked(ctx, func(f engine.Finding) { out = append(out, f) }, tick)
	if res != nil && c != nil {
		var blocks uint64
		for _, t := range res.Trees {
			blocks += t.Blocks
		}
		c.addBytes(blocks * format.BlockSize)
	}
	return res, out, err
}

// checkWithData is one pass of a scrub with --data: the check of the
// metadata and the data scrub (its arguments as scrubData's). The check's
// findings come first, then the data scrub's; the error is the check's,
// else the data scrub's.
//
// The two run side by side unless the data scrub is rate-limited: the
// check is mostly CPU (the walk, its sorts and joins) and the data scrub
// mostly waits for the device, so together they take about as long as
// the longer of the two instead of their sum. Both read pinned
// generations and change nothing, so neither sees the other; the
// findings are those of the two run one after the other. A rate-limited
// run (--rate, the mount's adaptive scrubs) keeps them one after the
// other, the check first, so that the run never adds more than one of
// them to the machine's load. A check that fails stops the data scrub (it
// would not have started), whose findings and bytes verified until then
// are still returned with the check's error.
func checkWithData(ctx context.Context, fsys *fs.FS, c *ScrubControl, first bool, cur *engine.ScrubCursor,
	checkpoint func(engine.ScrubCursor), scope *dataScope, pre *plannedData) (*engine.CheckResult, []engine.Finding, dataStats, error) {
	e := fsys.Engine()
	if c.limited() {
		res, found, err := checkEngineTicked(ctx, e, c, first)
		if err != nil {
			return res, found, dataStats{}, err
		}
		df, ds, err := scrubDataDisk(ctx, fsys, c, first, cur, checkpoint, scope, pre)
		return res, append(found, df...), ds, err
	}
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	type dataOut struct {
		found []engine.Finding
		st    dataStats
		err   error
	}
	done := make(chan dataOut, 1)
	go func() {
		f, st, err := scrubDataDisk(dctx, fsys, c, first, cur, checkpoint, scope, pre)
		done <- dataOut{f, st, err}
	}()
	res, found, err := checkEngineTicked(ctx, e, c, first)
	if err != nil {
		stop()
	}
	d := <-done
	if err == nil {
		err = d.err
	}
	return res, append(found, d.found...), d.st, err
}

// scrubData reads the file data of the committed generation and reports
// each block that fails its checksum, by path, offset, inode and disk
// block: in disk order, at device speed (datascrub.go). It returns the
// findings and what it verified, and how fast. With res set, it resumes
// from that cursor (a disk-order one, or an inode-order one of an older
// build); checkpoint, if set, is told the position after each run read.
func scrubData(ctx context.Context, fsys *fs.FS, c *ScrubControl, first bool, res *engine.ScrubCursor, checkpoint func(engine.ScrubCursor), scope *dataScope) ([]engine.Finding, dataStats, error) {
	return scrubDataDisk(ctx, fsys, c, first, res, checkpoint, scope, nil)
}

// scrubDataByFile is the data scrub as it was before the disk-order one:
// every regular file read through the filesystem, a block at a time. It
// is kept for the comparisons of datascrub_test.go (the same findings;
// the speed-up); nothing else runs it. It returns the findings and the
// bytes of file data it read and verified.
//
// Files are read in inode order (the directory tree is walked first, for
// their paths), so a position in the run is one inode number: with res
// set, the files below res.NextIno are not read again — their bad blocks
// are res.Bad, reported again — and checkpoint, if set, is told the
// position after each file (inode numbers are never reused, so files made
// since an interruption are all above it, and none is read twice).
func scrubDataByFile(ctx context.Context, fsys *fs.FS, c *ScrubControl, first bool, res *engine.ScrubCursor, checkpoint func(engine.ScrubCursor), scope *dataScope) ([]engine.Finding, uint64, error) {
	if first {
		c.phaseStart("data", 0)
	} else {
		c.phaseStart("recheck data", 0)
	}
	type file struct {
		ino  uint64
		path string
	}
	var files []file
	seen := map[uint64]bool{}
	var walk func(dir uint64, path string) error
	walk = func(dir uint64, path string) error {
		var ents []fs.DirEntry
		if err := fsys.ReadDir(dir, 2, func(de fs.DirEntry) bool {
			ents = append(ents, de)
			return true
		}); err != nil {
			return err
		}
		for _, de := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := path + "/" + de.Name
			switch de.Mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				if err := walk(de.Ino, p); err != nil {
					return err
				}
			case syscall.S_IFREG:
				if scope != nil && len(scope.files[de.Ino]) == 0 {
					continue
				}
				if !seen[de.Ino] {
					seen[de.Ino] = true
					files = append(files, file{de.Ino, p})
				}
			}
		}
		return nil
	}
	if err := walk(fs.RootIno, ""); err != nil {
		return nil, 0, err
	}
	slices.SortFunc(files, func(a, b file) int { return cmp.Compare(a.ino, b.ino) })
	pathOf := map[uint64]string{}
	var out []engine.Finding
	var verified uint64
	var cur engine.ScrubCursor
	bad := func(ino, off uint64, disk format.BlockNr, path string, detail string) {
		out = append(out, engine.Finding{ID: engine.ErrDataChecksum, Name: engine.ErrDataChecksum.Name(),
			Tree: format.OwnerData, Block: disk, Detail: detail,
			File: &engine.FileRef{Path: path, Inode: ino, Offset: off, DiskBlock: disk}})
		cur.Bad = append(cur.Bad, engine.BadBlock{Ino: ino, Offset: off, Disk: disk})
	}
	if res != nil {
		for _, f := range files {
			pathOf[f.ino] = f.path
		}
		for _, b := range res.Bad {
			bad(b.Ino, b.Offset, b.Disk, pathOf[b.Ino], "data checksum mismatch (found before the interruption)")
		}
		verified = res.Verified
		// The units of the files already read count as done.
		for _, f := range files {
			if f.ino >= res.NextIno {
				break
			}
			if a, err := fsys.GetAttr(f.ino); err == nil {
				for off := uint64(0); off < a.Size; off += format.BlockSize {
					if scope == nil || scope.has(f.ino, off/format.BlockSize) {
						c.tick(0)
					}
				}
			}
		}
	}
	buf := make([]byte, format.BlockSize)
	for _, f := range files {
		if res != nil && f.ino < res.NextIno {
			continue
		}
		a, err := fsys.GetAttr(f.ino)
		if err != nil {
			continue // removed meanwhile
		}
		for off := uint64(0); off < a.Size; off += format.BlockSize {
			if off%(1<<20) == 0 {
				if err := ctx.Err(); err != nil {
					return out, verified, err
				}
			}
			if scope != nil && !scope.has(f.ino, off/format.BlockSize) {
				continue
			}
			n, err := fsys.Read(f.ino, buf, int64(off))
			c.tick(uint64(n))
			c.pace(uint64(n))
			if err == nil {
				verified += uint64(n)
				continue
			}
			var ce *fs.ChecksumError
			if errors.As(err, &ce) {
				bad(f.ino, off, ce.Disk, f.path, "data checksum mismatch")
				continue
			}
			if fs.Errno(err) == syscall.EIO {
				// A block that cannot be read or checked at all (its
				// checksum item is gone, the device failed).
				bad(f.ino, off, 0, f.path, fmt.Sprintf("%s offset %d: %v", f.path, off, err))
				continue
			}
			break // truncated or removed meanwhile
		}
		if checkpoint != nil {
			cur.NextIno, cur.Verified, cur.Found = f.ino+1, verified, uint64(len(out))
			checkpoint(cur)
		}
	}
	return out, verified, nil
}

// countTree counts the findings located in tree id.
func countTree(fs []engine.Finding, id format.TreeID) int {
	n := 0
	for _, f := range fs {
		if f.Tree == id {
			n++
		}
	}
	return n
}

// countIDs counts the findings of the ids.
func countIDs(fs []engine.Finding, ids ...engine.ErrorID) int {
	n := 0
	for _, f := range fs {
		if slices.Contains(ids, f.ID) {
			n++
		}
	}
	return n
}
