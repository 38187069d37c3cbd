package repair

import (
	"context"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/fs"
)

// TestScrubPauseAfterWork holds a scrub right after its last unit of work
// (its first pass done, nothing to repair), before it returns, and pauses
// and cancels it there: both refuse (its work has ended, Ended says so),
// nothing is cancelled, the progress never says paused, and the run
// returns its full report, clean, with the control's outcome "clean" —
// not a run that ends paused, nor one that answered a cancel it ignored.
// Then a pause taken where no pause point follows is dropped at the end,
// and a cancel just before the last pause point interrupts the run there.
func TestScrubPauseAfterWork(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(fs.RootIno, "a", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte(strings.Repeat("pause race ", 40_000)), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, data := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		ctl := NewScrubControl(cancel)
		held, release := make(chan struct{}), make(chan struct{})
		ctl.afterWork = func() {
			close(held)
			<-release
		}
		var rep *Report
		var serr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			rep, serr = Scrub(ctx, f, img, ScrubOptions{Data: data, Control: ctl})
		}()
		<-held
		if ctl.Pause() {
			t.Errorf("data %v: pause accepted after the run's last unit of work", data)
		}
		if ended, outcome := ctl.Ended(); !ended || outcome != "" {
			t.Errorf("data %v: held after its work: ended %v, outcome %q", data, ended, outcome)
		}
		if p := ctl.Progress(); p.Paused || !p.WorkEnded || p.Done != p.Total || p.Percent != 100 {
			t.Errorf("data %v: progress after the work: %+v", data, p)
		}
		if ctl.Cancel() || ctx.Err() != nil {
			t.Errorf("data %v: cancel accepted after the run's work ended", data)
		}
		close(release)
		<-done
		cancel()
		if serr != nil || rep == nil || rep.Interrupted || !rep.Complete || rep.Status != StatusClean {
			t.Fatalf("data %v: the run held after its work: %v %+v", data, serr, rep)
		}
		if data && rep.BytesVerified == 0 {
			t.Errorf("data scrub verified nothing: %+v", rep)
		}
		if ended, outcome := ctl.Ended(); !ended || outcome != StatusClean {
			t.Errorf("data %v: after the run: ended %v, outcome %q", data, ended, outcome)
		}
		if p := ctl.Progress(); p.Paused || !p.WorkEnded {
			t.Errorf("data %v: the run ended paused: %+v", data, p)
		}
		if ctl.Resume() || ctl.Pause() {
			t.Errorf("data %v: resume or pause of a returned run accepted", data)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckOffline(context.Background(), img, Options{})
	if err != nil || rep.Status != StatusClean {
		t.Fatalf("offline check at the end: %v %+v", err, rep)
	}

	// A pause taken after a run's last pause point (here: no run at all)
	// is dropped when it returns: the run does not end paused.
	ctl := NewScrubControl(nil)
	if !ctl.Pause() {
		t.Fatal("pause of a fresh control refused")
	}
	ctl.end(&Report{Status: StatusClean}, nil)
	if p := ctl.Progress(); p.Paused || p.PausedForS < 0 {
		t.Fatalf("a run that returned says paused: %+v", p)
	}
	if ctl.Resume() || ctl.Cancel() {
		t.Fatal("resume or cancel of a returned run accepted")
	}

	// A cancel just before the last pause point wins over it: the run
	// ends interrupted there, its work not marked ended.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctl = NewScrubControl(cancel)
	ctl.phaseStart("check", 1)
	ctl.tick(0)
	if !ctl.Cancel() {
		t.Fatal("cancel of a running scrub refused")
	}
	if err := ctl.finishPass(ctx, true); err == nil {
		t.Fatal("the end of a cancelled run's first pass went on")
	}
	if ended, _ := ctl.Ended(); ended {
		t.Fatal("a cancelled run's work marked ended")
	}
}
