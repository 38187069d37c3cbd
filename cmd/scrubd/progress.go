package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/scrubd/scrubd/repair"
)

// progressSource reports a run's progress (ok false: none yet).
type progressSource func() (repair.ScrubProgress, bool)

// showProgress follows a foreground run until the returned stop is
// called: a progress bar with the phase, rate and time left when w is a
// terminal, else a plain line every interval (none for runs shorter than
// that).
func showProgress(w *os.File, interval time.Duration, src progressSource) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	tty := term.IsTerminal(int(w.Fd()))
	go func() {
		defer close(finished)
		if tty {
			barLoop(w, src, done)
			return
		}
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if p, ok := src(); ok {
					fmt.Fprintf(w, "scrubd: scrub %s\n", progressLine(p))
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// progressLine describes p in one line.
func progressLine(p repair.ScrubProgress) string {
	s := fmt.Sprintf("%s %.1f%% (%s of %s)", p.Phase, p.Percent, humanize.Comma(int64(p.Done)), humanize.Comma(int64(p.Total)))
	if p.Paused {
		s += ", paused"
	}
	if p.RateBytesS > 0 {
		s += ", " + humanize.IBytes(uint64(p.RateBytesS)) + "/s"
	}
	if p.ETAS >= 0 && p.Percent < 100 {
		s += ", about " + time.Duration(p.ETAS*float64(time.Second)).Round(time.Second).String() + " left"
	}
	return s
}

// barLoop draws the bar until done.
func barLoop(w io.Writer, src progressSource, done <-chan struct{}) {
	var bar *progressbar.ProgressBar
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			if bar != nil {
				bar.Clear()
			}
			return
		case <-t.C:
		}
		p, ok := src()
		if !ok || p.Total == 0 {
			continue
		}
		if bar == nil {
			bar = progressbar.NewOptions64(int64(p.Total),
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetWidth(30),
				progressbar.OptionShowCount(),
				progressbar.OptionSetItsString("units"),
				progressbar.OptionSetPredictTime(false),
				progressbar.OptionSetElapsedTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
		}
		if bar.GetMax64() != int64(p.Total) {
			bar.ChangeMax64(int64(p.Total))
		}
		desc := p.Phase
		if p.RateBytesS > 0 {
			desc += " " + humanize.IBytes(uint64(p.RateBytesS)) + "/s"
		}
		if p.ETAS >= 0 && p.Percent < 100 {
			desc += ", " + time.Duration(p.ETAS*float64(time.Second)).Round(time.Second).String() + " left"
		}
		if p.Paused {
			desc += " (paused)"
		}
		bar.Describe(desc)
		bar.Set64(int64(p.Done))
	}
}
