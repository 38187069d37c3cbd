package repair

import (
	"context"
	"fmt"
	"log/slog"
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
// Data) reads every file through the filesystem, verifying each block's
// checksum, and names the path and offset of each bad one. Findings are
// counted in the superblock's error section. With Repair, damage the
// repairers handle (today: the rmap tree, rebuilt online) is repaired and
// everything is checked again.

// ScrubOptions configure Scrub.
type ScrubOptions struct {
	Repair  bool
	Data    bool
	TempDir string // for repair's xfiles
	Logger  *slog.Logger
	// Mode names the run in the report: "online" or "offline".
	Mode string
}

// Scrub checks fsys (and repairs it with opts.Repair) and returns the report.
func Scrub(ctx context.Context, fsys *fs.FS, target string, opts ScrubOptions) (*Report, error) {
	started := time.Now()
	if opts.Mode == "" {
		opts.Mode = "online"
	}
	e := fsys.Engine()
	res, found, err := checkEngine(ctx, e)
	if err != nil {
		return nil, err
	}
	if opts.Data {
		df, err := scrubData(ctx, fsys)
		if err != nil {
			return nil, err
		}
		found = append(found, df...)
	}
	for _, f := range found {
		e.CountError(f.ID, 1)
	}
	rep := newReport(opts.Mode, target, started, res, found)
	if !opts.Repair || len(found) == 0 {
		return rep, nil
	}
	if ro, _ := e.ReadOnly(); ro {
		return rep, nil // nothing can be repaired; the report says uncorrected
	}
	if needsRmapRebuild(found) {
		e.SetRmapSick(true)
		rr, err := RebuildRmap(ctx, e, RmapRebuildOptions{TempDir: opts.TempDir})
		if err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("rmap rebuild failed: %v", err))
		} else {
			rep.Notes = append(rep.Notes, fmt.Sprintf("rebuilt the rmap tree online: %d records, %d live updates followed, writers paused %.1f ms",
				rr.Records, rr.Events, float64(rr.ExclusivePause.Microseconds())/1000))
			rep.Rebuilds = append(rep.Rebuilds, RebuildReport{Structure: "rmap", Records: rr.Records, Events: rr.Events,
				NewBlocks: rr.NewBlocks, OldBlocks: rr.OldBlocks, DurationS: rr.Duration.Seconds(),
				PauseMs: float64(rr.ExclusivePause.Microseconds()) / 1000, XfileBytes: rr.XfileBytes, Gen: uint64(rr.Gen)})
		}
	}
	// Scrub again: what is left is what the report calls uncorrected.
	res2, left, err := checkEngine(ctx, e)
	if err != nil {
		return nil, err
	}
	if opts.Data {
		df, err := scrubData(ctx, fsys)
		if err != nil {
			return nil, err
		}
		left = append(left, df...)
	}
	rep.markRepaired(found, left)
	rep.Generation = uint64(res2.Gen)
	rep.DurationS = time.Since(started).Seconds()
	return rep, nil
}

// needsRmapRebuild reports whether the findings are ones an rmap rebuild
// fixes, and only those: the rebuild derives the rmap from every other
// tree, so damage anywhere else (a missing file extent item would otherwise
// take its extent's reverse mapping with it) makes it refuse, and the
// report says uncorrected.
func needsRmapRebuild(fs []engine.Finding) bool {
	rmap := false
	for _, f := range fs {
		switch {
		case f.Tree == format.TreeRmap:
			rmap = true
		case f.ID == engine.ErrRmapMissing || f.ID == engine.ErrRmapOrphan || f.ID == engine.ErrRmapLength ||
			f.ID == engine.ErrAllocRefcount || f.ID == engine.ErrRmapDataOwner || f.ID == engine.ErrExtentNoRmap:
			rmap = true
		default:
			return false
		}
	}
	return rmap
}

func checkEngine(ctx context.Context, e *engine.Engine) (*engine.CheckResult, []engine.Finding, error) {
	s := e.Pin()
	defer s.Release()
	var out []engine.Finding
	res, err := s.Check(ctx, func(f engine.Finding) { out = append(out, f) })
	return res, out, err
}

// scrubData reads every regular file and reports each block that fails its
// checksum, by path and offset.
func scrubData(ctx context.Context, fsys *fs.FS) ([]engine.Finding, error) {
	var out []engine.Finding
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
				if seen[de.Ino] {
					continue
				}
				seen[de.Ino] = true
				a, err := fsys.GetAttr(de.Ino)
				if err != nil {
					continue // removed meanwhile
				}
				buf := make([]byte, format.BlockSize)
				for off := uint64(0); off < a.Size; off += format.BlockSize {
					if _, err := fsys.Read(de.Ino, buf, int64(off)); err != nil {
						if fs.Errno(err) == syscall.EIO {
							out = append(out, engine.Finding{ID: engine.ErrDataChecksum, Name: engine.ErrDataChecksum.Name(),
								Tree: format.TreeCsum, Detail: fmt.Sprintf("%s offset %d: %v", p, off, err)})
							continue
						}
						break // truncated or removed meanwhile
					}
				}
			}
		}
		return nil
	}
	return out, walk(fs.RootIno, "")
}
