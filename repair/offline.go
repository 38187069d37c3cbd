package repair

import (
	"context"
	"log/slog"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// Options configure a check run.
type Options struct {
	Logger *slog.Logger
}

// CheckOffline checks an unmounted image read-only and returns the report.
// The error is for operational failure (the image cannot be opened or
// read, or holds no scrubd filesystem: format.ErrNotFilesystem); damage is
// in the report. Canceled, it returns the partial report, marked
// Interrupted, with ctx's error.
func CheckOffline(ctx context.Context, path string, opts Options) (*Report, error) {
	started := time.Now()
	dev, err := disk.Open(path, true)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	res, fs, err := engine.CheckImage(dev, engine.CheckOptions{Context: ctx, Logger: opts.Logger})
	if err != nil && (res == nil || ctx.Err() == nil) {
		return nil, err
	}
	rep := newReport("offline", path, started, res, fs)
	if res.FSID != (format.FSID{}) {
		rep.UUID, rep.Label = res.FSID.String(), res.Label
	}
	if err != nil {
		rep.Interrupted, rep.Complete = true, false
	}
	return rep, err
}
