package daemon

import (
	"fmt"
	"sync"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/hooks"
)

// Self-repair on detection (the xfs_healer idea, built in): when a
// structure goes sick — damage met by normal I/O, or found by a scrub that
// does not repair — the server runs a scrub with repair as soon as no
// other scrub or injection is running. The scrub checks everything and the
// ops table repairs what it finds, so the repair is the sick structure's
// (and whatever else the check finds). The events a repairing scrub's own
// check causes are its own business and are ignored; a structure that
// stays sick after the repair (no repairer, inputs damaged) makes no new
// event, so a repair that cannot succeed is not retried in a loop.

type autoRepair struct {
	h    *hooks.Handle
	kick chan string // the structure that went sick; buffered, coalesced
	done chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	runs uint64
}

// retryEvery is how often a pending auto-repair looks for the mount to be
// free of other scrubs.
const retryEvery = 200 * time.Millisecond

func (s *Server) startAutoRepair() {
	a := &autoRepair{kick: make(chan string, 1), done: make(chan struct{})}
	s.auto = a
	a.h = s.fsys.Engine().Hooks().Health.Register(func(ev engine.HealthEvent) {
		s.mu.Lock()
		repairing := s.ctl != nil && s.repairing
		s.mu.Unlock()
		if repairing {
			return
		}
		select {
		case a.kick <- ev.Structure.Name():
		default: // one is pending already: it repairs this one too
		}
	})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			var why string
			select {
			case <-a.done:
				return
			case why = <-a.kick:
			}
			for {
				_, err := s.startBackground(Request{Op: OpScrub, Repair: true, Background: true, Rate: s.opts.ScheduleRate}, fmt.Sprintf("auto-repair (%s sick)", why))
				if err == nil {
					a.mu.Lock()
					a.runs++
					a.mu.Unlock()
					s.log.Warn("auto-repair started", "sick", why)
					break
				}
				// Busy: another scrub or an injection. Wait for it.
				select {
				case <-a.done:
					return
				case <-time.After(retryEvery):
				}
			}
		}
	}()
}

func (s *Server) stopAutoRepair() {
	a := s.auto
	if a == nil {
		return
	}
	s.fsys.Engine().Hooks().Health.Unregister(a.h)
	select {
	case <-a.done:
	default:
		close(a.done)
	}
	a.wg.Wait()
}
