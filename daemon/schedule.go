package daemon

import (
	"fmt"
	"sort"
	"time"

	"github.com/robfig/cron/v3"
)

// Scheduled scrubs. A schedule is a cron expression (five fields, or a
// descriptor such as @daily or @every 6h; robfig/cron's standard parser)
// and what its runs do. The server runs one loop: it sleeps until the
// earliest next time of any schedule, then starts a background scrub for
// each schedule due — unless a scrub or an injection is running, in which
// case that run is skipped and logged (it is not queued: the next one
// comes at its time). The times are computed in the server's clock
// (Options.Clock), which tests replace.

// Schedule is one schedule of background scrubs.
type Schedule struct {
	Spec   string `json:"spec"`
	Data   bool   `json:"data"`   // also verify file data
	Repair bool   `json:"repair"` // repair what the run finds
}

// ScheduleStatus is a schedule with its next run, in Status.
type ScheduleStatus struct {
	Schedule
	Next time.Time `json:"next"`
	// Skipped counts runs not started because another was running.
	Skipped uint64 `json:"skipped"`
	Runs    uint64 `json:"runs"`
}

// ParseSchedule checks a cron expression; the error names what is wrong.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w (five fields, minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly, @every DURATION)", spec, err)
	}
	return s, nil
}

// Clock is the time source of the scheduler.
type Clock interface {
	Now() time.Time
	// Until fires once the clock has reached t (at once if it has). An
	// absolute time: a wait computed as "t minus now" would race with a
	// clock that moves between the two readings.
	Until(t time.Time) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                     { return time.Now() }
func (realClock) Until(t time.Time) <-chan time.Time { return time.After(time.Until(t)) }

// scheduled is a schedule being run.
type scheduled struct {
	ScheduleStatus
	sched cron.Schedule
}

// runSchedules is the scheduler loop; it returns when the server stops.
func (s *Server) runSchedules() {
	defer s.wg.Done()
	clock := s.opts.Clock
	for {
		s.mu.Lock()
		if len(s.scheds) == 0 {
			s.mu.Unlock()
			return
		}
		next := s.scheds[0].Next
		for _, sc := range s.scheds[1:] {
			if sc.Next.Before(next) {
				next = sc.Next
			}
		}
		s.mu.Unlock()
		select {
		case <-s.ctx.Done():
			return
		case <-clock.Until(next):
		}
		now := clock.Now()
		s.mu.Lock()
		var due []*scheduled
		for _, sc := range s.scheds {
			if !sc.Next.After(now) {
				due = append(due, sc)
				sc.Next = sc.sched.Next(now)
			}
		}
		s.mu.Unlock()
		for _, sc := range due {
			s.fire(sc)
		}
	}
}

// fire starts the background scrub of a due schedule, or skips it.
func (s *Server) fire(sc *scheduled) {
	if s.ctx.Err() != nil {
		return
	}
	_, err := s.startBackground(Request{Op: OpScrub, Repair: sc.Repair, Data: sc.Data, Background: true, Rate: s.opts.ScheduleRate}, "schedule "+sc.Spec)
	s.mu.Lock()
	if err != nil {
		sc.Skipped++
	} else {
		sc.Runs++
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("scheduled scrub skipped", "schedule", sc.Spec, "reason", err)
		return
	}
	s.log.Info("scheduled scrub started", "schedule", sc.Spec, "data", sc.Data, "repair", sc.Repair)
}

// scheduleStatus lists the schedules, soonest first; s.mu held.
func (s *Server) scheduleStatus() ([]ScheduleStatus, *time.Time) {
	if len(s.scheds) == 0 {
		return nil, nil
	}
	out := make([]ScheduleStatus, len(s.scheds))
	for i, sc := range s.scheds {
		out[i] = sc.ScheduleStatus
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Next.Before(out[j].Next) })
	next := out[0].Next
	return out, &next
}
