package repair

import (
	"context"
	"log/slog"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
)

// Options configure a check run.
type Options struct {
	Logger *slog.Logger
}

// CheckOffline checks an unmounted image read-only and returns the report.
// The error is for operational failure (the image cannot be opened or
// read); damage is in the report.
func CheckOffline(ctx context.Context, path string, opts Options) (*Report, error) {
	started := time.Now()
	dev, err := disk.Open(path, true)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	res, fs, err := engine.CheckImage(dev, engine.CheckOptions{Context: ctx, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	return newReport("offline", path, started, res, fs), nil
}
