package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// CheckFunc is the full self-check of a snapshot: the generic walk
// (check.go) with every structure's checker, findings streamed to fn,
// tick (if set) called after every item walked.
type CheckFunc func(ctx context.Context, s *Snapshot, fn func(Finding), tick func()) (*CheckResult, error)

var fullCheck atomic.Pointer[CheckFunc]

// RegisterCheck installs the full self-check. The filesystem's rules live
// with their repairers in the repair package, which registers its check
// when it is linked (as database/sql drivers do); the engine runs it for
// Snapshot.Check, CheckImage and the check_allocations recovery pass.
func RegisterCheck(f CheckFunc) { fullCheck.Store(&f) }

// ErrNoCheck is returned by a check in a program that links no checker
// (one that does not import the repair package).
var ErrNoCheck = errors.New("no self-check is registered (the repair package registers it)")

// Check runs the full self-check on the snapshot's generation and streams
// every finding to fn. It returns an error only for operational failure
// (an unreadable device, cancellation, no check registered).
func (s *Snapshot) Check(ctx context.Context, fn func(Finding)) (*CheckResult, error) {
	return s.CheckTicked(ctx, fn, nil)
}

// CheckTicked is Check calling tick after every item it walks, from the
// checking goroutine: for progress reports and pausing (a tick may
// block; the snapshot stays pinned meanwhile). ItemCount is how many
// ticks a check of an undamaged image makes.
func (s *Snapshot) CheckTicked(ctx context.Context, fn func(Finding), tick func()) (*CheckResult, error) {
	f := fullCheck.Load()
	if f == nil {
		return nil, ErrNoCheck
	}
	return (*f)(ctx, s, fn, tick)
}

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
			f = finding(kindID(ce.Kind), ce.Tree, ce.Block, "%s", ce.Detail)
		}
		emit(f)
		return &CheckResult{Findings: 1}, fs, nil
	}
	s := &Snapshot{e: e, v: e.committed}
	res, err := s.CheckTicked(ctx, emit, nil)
	return res, fs, err
}
