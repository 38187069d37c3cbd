package repair

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// TestScrubProgressPauseCancel runs a data scrub under a ScrubControl
// (rate-limited, so it runs at a steady 24 MB/s for about 2 s):
// sampled all along, the percentage never decreases and never exceeds 100
// and done never exceeds total; a run paused before it starts does no
// work until resumed (done stands still, the state says paused); the ETA,
// once given, is within reach of the actual finish over the second half;
// a cancelled run returns its partial report, interrupted.
func TestScrubProgressPauseCancel(t *testing.T) {
	// A 48 MiB file besides the small ones: a data scrub long enough to
	// sample.
	img, f := withBigFile(t, populatedImage(t), 48<<20)
	defer f.Close()

	ctl := NewScrubControl(nil)
	// A steady pace (the limit, not the machine's mood: other packages'
	// tests share the CPUs) makes the ETA's accuracy the estimator's.
	ctl.SetRate(Rate{BytesPerSec: 24e6})
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

// TestScrubRate: a data scrub limited to a rate reads no faster than it
// (bytes read over the run's time), and in adaptive mode reads at the
// floor while the activity counter moves; ParseRate reads the forms the
// flags take and refuses the rest.
func TestScrubRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Rate
		ok   bool
	}{
		{"", Rate{}, true}, {"auto", Rate{Auto: true}, true}, {"200M", Rate{BytesPerSec: 200e6}, true},
		{"1GiB/s", Rate{BytesPerSec: 1 << 30}, true}, {"auto,64MiB", Rate{Auto: true, BytesPerSec: 64 << 20}, true},
		{"fast", Rate{}, false}, {"0", Rate{}, false}, {"auto,", Rate{Auto: true}, true}, {"-5M", Rate{}, false},
	} {
		r, err := ParseRate(c.in)
		if (err == nil) != c.ok || (c.ok && (r.BytesPerSec != c.want.BytesPerSec || r.Auto != c.want.Auto)) {
			t.Errorf("ParseRate(%q) = %+v, %v", c.in, r, err)
		}
	}
	img, f := withBigFile(t, newImage(t), 12<<20)
	defer f.Close()
	run := func(r Rate) (float64, ScrubProgress) {
		ctl := NewScrubControl(nil)
		ctl.SetRate(r)
		start := time.Now()
		rep, err := Scrub(context.Background(), f, img, ScrubOptions{Data: true, Control: ctl})
		if err != nil || rep.BytesVerified < 12<<20 {
			t.Fatalf("scrub: %v %+v", err, rep)
		}
		return float64(rep.BytesVerified) / time.Since(start).Seconds(), ctl.Progress()
	}
	limit := 16e6
	got, p := run(Rate{BytesPerSec: limit})
	t.Logf("limited to %.0f B/s: read at %.0f B/s, throttled %.2f s", limit, got, p.ThrottledS)
	if got > 1.1*limit || p.ThrottledS == 0 || p.RateLimit == "" {
		t.Errorf("rate %.0f B/s over the limit %.0f (throttled %.2f s, limit %q)", got, limit, p.ThrottledS, p.RateLimit)
	}
	// Adaptive, with programs writing all along (the counter moves at
	// every look): the floor.
	var n atomic.Uint64
	got, _ = run(Rate{Auto: true, Activity: func() uint64 { return n.Add(1) }})
	t.Logf("adaptive under writes: %.0f B/s (floor %d)", got, AutoFloor)
	if got > 1.1*AutoFloor {
		t.Errorf("adaptive mode under writes read at %.0f B/s, over the floor %d", got, AutoFloor)
	}
	// Adaptive with nothing writing: no limit.
	quiet, _ := run(Rate{Auto: true, Activity: func() uint64 { return 7 }})
	t.Logf("adaptive, quiet: %.0f B/s", quiet)
	if quiet < 1.5*got && !raceEnabled { // under the race detector the scrub may not reach the floor at all
		t.Errorf("a quiet adaptive scrub read at %.0f B/s, hardly faster than under writes (%.0f)", quiet, got)
	}
}

// withBigFile opens img and writes a file of n bytes into it, committed.
func withBigFile(t *testing.T, img string, n int) (string, *fs.FS) {
	t.Helper()
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(fs.RootIno, "big", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("big file"), 1<<17)
	for off := 0; off < n; off += len(chunk) {
		if _, err := f.Write(a.Ino, chunk[:min(len(chunk), n-off)], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return img, f
}

// TestScrubPhaseParts: the phase names the parts of a pass running side by
// side, in order, and the part still running once the other ends; a phase
// (a repair) replaces them.
func TestScrubPhaseParts(t *testing.T) {
	c := NewScrubControl(nil)
	c.phaseStart("check", 10)
	steps := []struct {
		start bool
		part  string
		want  string
	}{
		{true, "data", "data"},
		{true, "check", "check and data"},
		{false, "check", "data"},
		{false, "data", "data"},
		{true, "recheck", "recheck"},
		{true, "recheck data", "recheck and recheck data"},
		{false, "recheck data", "recheck"},
		{false, "nothing running", "recheck"},
	}
	for i, s := range steps {
		if s.start {
			c.partStart(s.part)
		} else {
			c.partEnd(s.part)
		}
		if got := c.Progress().Phase; got != s.want {
			t.Fatalf("step %d (%v %q): phase %q, want %q", i, s.start, s.part, got, s.want)
		}
	}
	c.phaseStart("repair csum", 0)
	c.partEnd("recheck")
	if got := c.Progress().Phase; got != "repair csum" {
		t.Fatalf("after a phase: %q", got)
	}
}

// TestScrubCheckBesideData: without a rate limit, a scrub with --data runs
// its data scrub while the check runs (the check's part waits, up to a
// minute, for the data scrub's to start: run one after the other, it
// would wait the minute out and fail); rate-limited, the two run one after
// the other, the check first. Both runs find the one bad data block,
// exactly, and verify the same bytes.
func TestScrubCheckBesideData(t *testing.T) {
	img, f := withBigFile(t, populatedImage(t), 4<<20)
	defer f.Close()
	big, err := f.Lookup(fs.RootIno, "big")
	if err != nil {
		t.Fatal(err)
	}
	disk := diskOf(t, f, big.Ino, 8192)
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(bytes.Repeat([]byte{0xee}, format.BlockSize), int64(disk)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	want := []dataHit{{"/big", big.Ino, 8192, disk}}
	run := func(rate Rate) ([][]string, *Report) {
		t.Helper()
		ctl := NewScrubControl(nil)
		ctl.SetRate(rate)
		var mu sync.Mutex
		var seen [][]string
		dataStarted := make(chan struct{})
		var once sync.Once
		ctl.partStarted = func(parts []string) {
			mu.Lock()
			seen = append(seen, parts)
			mu.Unlock()
			if slices.Contains(parts, "data") {
				once.Do(func() { close(dataStarted) })
			}
			if !rate.Auto && rate.BytesPerSec == 0 && slices.Equal(parts, []string{"check"}) {
				select {
				case <-dataStarted:
				case <-time.After(time.Minute):
					t.Error("the check ran a minute without the data scrub beside it")
				}
			}
		}
		rep, err := Scrub(context.Background(), f, img, ScrubOptions{Data: true, Control: ctl})
		if err != nil {
			t.Fatal(err)
		}
		if got := reportHits(rep); rep.Found != 1 || !slices.Equal(got, want) || rep.BytesVerified == 0 {
			t.Fatalf("report: %d found, data findings %v (want %v), %d bytes verified", rep.Found, got, want, rep.BytesVerified)
		}
		return seen, rep
	}
	seen, together := run(Rate{})
	if !slices.ContainsFunc(seen, func(p []string) bool { return len(p) == 2 }) {
		t.Fatalf("unlimited: parts %q, never the check and the data scrub together", seen)
	}
	seen, apart := run(Rate{BytesPerSec: 1 << 30})
	if want := [][]string{{"check"}, {"data"}}; !slices.EqualFunc(seen, want, slices.Equal) {
		t.Fatalf("rate-limited: parts %q, want %q", seen, want)
	}
	if together.BytesVerified != apart.BytesVerified {
		t.Fatalf("side by side: %d bytes verified; one after the other: %d", together.BytesVerified, apart.BytesVerified)
	}
}
