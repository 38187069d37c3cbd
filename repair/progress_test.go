package repair

import (
	"bytes"
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/fs"
)

// TestScrubProgressPauseCancel runs a data scrub under a ScrubControl:
// sampled all along, the percentage never decreases and never exceeds 100
// and done never exceeds total; a run paused before it starts does no
// work until resumed (done stands still, the state says paused); the ETA,
// once given, is within reach of the actual finish over the second half;
// a cancelled run returns its partial report, interrupted.
func TestScrubProgressPauseCancel(t *testing.T) {
	img := populatedImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A 48 MiB file besides the small ones: a data scrub long enough to
	// sample.
	a, err := f.Create(fs.RootIno, "big", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("progress"), 1<<17)
	for off := 0; off < 48<<20; off += len(chunk) {
		if _, err := f.Write(a.Ino, chunk, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	ctl := NewScrubControl(nil)
	ctl.Pause()
	var rep *Report
	var serr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rep, serr = Scrub(context.Background(), f, img, ScrubOptions{Data: true, Control: ctl})
	}()
	time.Sleep(50 * time.Millisecond)
	p1 := ctl.Progress()
	time.Sleep(100 * time.Millisecond)
	p2 := ctl.Progress()
	if !p2.Paused || p2.Done != p1.Done || p2.Done > 1 || p2.ETAS != -1 {
		t.Fatalf("paused run moved or says otherwise: %+v then %+v", p1, p2)
	}
	start := time.Now()
	if !ctl.Resume() {
		t.Fatal("resume of a paused run refused")
	}
	type sample struct {
		at time.Time
		p  ScrubProgress
	}
	var samples []sample
	var mu sync.Mutex
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			samples = append(samples, sample{time.Now(), ctl.Progress()})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	<-done
	close(stop)
	<-sampled
	finished := time.Now()
	if serr != nil || rep.Status != StatusClean || rep.BytesVerified == 0 {
		t.Fatalf("scrub: %v %+v", serr, rep)
	}
	last := -1.0
	var etaErr []float64
	for _, s := range samples {
		p := s.p
		if p.Percent < last || p.Percent > 100 || p.Done > p.Total {
			t.Fatalf("progress went from %.2f%% to %+v", last, p)
		}
		last = p.Percent
		if p.Percent >= 50 && p.Percent < 100 && p.ETAS >= 0 {
			actual := finished.Sub(s.at).Seconds()
			etaErr = append(etaErr, (p.ETAS-actual)/max(actual, 0.001))
		}
	}
	if end := ctl.Progress(); end.Percent != 100 || end.Done != end.Total || end.BytesRead == 0 {
		t.Fatalf("progress at the end: %+v", end)
	}
	// The ETA over the second half: its median error within 25% of the
	// time that was actually left.
	slices.Sort(etaErr)
	if len(etaErr) < 5 {
		t.Fatalf("only %d ETA samples over the second half of a %v run", len(etaErr), finished.Sub(start))
	}
	med := etaErr[len(etaErr)/2]
	t.Logf("%d samples over %v; ETA relative error over the second half: median %.3f, range %.3f to %.3f", len(samples), finished.Sub(start), med, etaErr[0], etaErr[len(etaErr)-1])
	if math.Abs(med) > 0.25 && !raceEnabled { // the race pass shares the CPUs with other packages' tests
		t.Errorf("ETA median error %.0f%% of the time left", 100*med)
	}

	// Cancel mid-run: the partial report, interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	ctl = NewScrubControl(cancel)
	ctl.Pause()
	done = make(chan struct{})
	go func() {
		defer close(done)
		rep, serr = Scrub(ctx, f, img, ScrubOptions{Data: true, Control: ctl})
	}()
	time.Sleep(20 * time.Millisecond)
	ctl.Cancel()
	<-done
	if !errors.Is(serr, context.Canceled) || rep == nil || !rep.Interrupted || rep.Complete {
		t.Fatalf("cancelled scrub: %v %+v", serr, rep)
	}
}
