package engine

import (
	"context"
	"errors"
	"log/slog"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// CheckOptions configure an offline check.
type CheckOptions struct {
	Context context.Context // nil: background
	Logger  *slog.Logger
	// Finding, if set, receives each finding as it is found.
	Finding func(Finding)
}

// CheckImage runs the self-check on an unmounted image, read-only. Unlike
// Open it does not give up on damage: it reads what it can and reports the
// rest as findings. The error is for operational failure only (the device
// cannot be read, it holds no scrubd filesystem at all —
// format.ErrNotFilesystem —, cancellation). It does not close dev.
func CheckImage(dev disk.Device, opts CheckOptions) (*CheckResult, []Finding, error) {
	ctx := opts.Context
	if ctx == nil {
		ctx = context.Background()
	}
	var fs []Finding
	emit := func(f Finding) {
		fs = append(fs, f)
		if opts.Finding != nil {
			opts.Finding(f)
		}
	}
	e := newEngine(dev, Options{ReadOnly: true, CommitInterval: -1, Logger: opts.Logger})
	e.tolerant = true
	if err := e.load(); err != nil {
		if !errors.Is(err, format.ErrCorrupt) || errors.Is(err, format.ErrNotFilesystem) {
			return nil, nil, err
		}
		ce, _ := format.AsCorrupt(err)
		f := finding(ErrSuperCopyBad, format.OwnerSuper, 0, "%v", err)
		if ce != nil && ce.Tree != format.OwnerSuper {
			id, ok := kindIDs[ce.Kind]
			if !ok {
				id = ErrNodeBadLayout
			}
			f = finding(id, ce.Tree, ce.Block, "%s", ce.Detail)
		}
		emit(f)
		return &CheckResult{Findings: 1}, fs, nil
	}
	s := &Snapshot{e: e, v: e.committed}
	res, err := s.check(ctx, emit, nil)
	return res, fs, err
}
