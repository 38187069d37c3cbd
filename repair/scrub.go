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
	// Repair in dependency order through the ops table; each repair is
	// followed by a full check, and the last is what the report shows.
	res2 := res
	run := &repairRun{e: e, opts: opts, rep: rep, recheck: func() ([]engine.Finding, error) {
		r, left, err := checkEngine(ctx, e)
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
		res2 = r
		return left, nil
	}}
	left, err := run.repairAll(ctx, found)
	if err != nil {
		return nil, err
	}
	rep.markRepaired(found, left)
	rep.Generation = uint64(res2.Gen)
	rep.DurationS = time.Since(started).Seconds()
	return rep, nil
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
