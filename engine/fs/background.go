package fs

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/scrubd/scrubd/engine"
)

// background runs one job in a goroutine until it has no work left: the
// subvolume reaper (subvol.go) and the snapshot filler (snapshot.go). A
// start while it runs makes it look for work once more before it stops
// (it may be past that point); stop cancels it for good and waits.
type background struct {
	name string // for the log: "subvolume reaper"
	pass string // the recovery pass that resumes it: "subvol_reap"
	job  func(ctx context.Context) error

	mu                     sync.Mutex
	running, again, closed bool
	cancel                 context.CancelFunc
	done                   chan struct{} // closed when the running job ends
}

// start runs the job unless it runs already, or the worker was stopped.
func (b *background) start(log *slog.Logger) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.running {
		b.again = true
		return
	}
	b.running = true
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	done := make(chan struct{})
	b.done = done
	go func() {
		defer close(done)
		for {
			err := b.job(ctx)
			if err != nil && !errors.Is(err, engine.ErrClosed) && !errors.Is(err, context.Canceled) {
				log.Warn(b.name+" stopped; the next mount resumes it (recovery pass "+b.pass+")", "err", err)
			}
			b.mu.Lock()
			if err == nil && b.again {
				b.again = false
				b.mu.Unlock()
				continue
			}
			b.running, b.again = false, false
			b.mu.Unlock()
			return
		}
	}()
}

// stop cancels a running job, keeps it from starting again, and waits:
// the work left stays recorded for the next mount.
func (b *background) stop() {
	b.mu.Lock()
	cancel := b.cancel
	b.closed = true
	b.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	b.wait()
}

// wait waits until the job, if it runs, has nothing left to do. Any
// number of callers may wait.
func (b *background) wait() {
	b.mu.Lock()
	running, done := b.running, b.done
	b.mu.Unlock()
	if running {
		<-done
	}
}
