package repair

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkCheckImageCPU runs the offline check of the image
// SCRUBD_CHECK_IMAGE (for instance one BenchmarkCheck kept with
// SCRUBD_BENCH_IMAGE) b.N times in this process, for CPU profiles:
//
//	SCRUBD_CHECK_IMAGE=fs.img go test ./repair -run '^$' -bench CheckImageCPU -benchtime 5x -cpuprofile cpu.prof
func BenchmarkCheckImageCPU(b *testing.B) {
	img := os.Getenv("SCRUBD_CHECK_IMAGE")
	if img == "" {
		b.Skip("SCRUBD_CHECK_IMAGE names the image to check")
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rep, err := CheckOffline(context.Background(), img, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Found != 0 {
			b.Fatalf("%d findings", rep.Found)
		}
	}
}

// TestCheckJoinSeekerSmallBuffers is TestCheckJoinSeeker with a sort
// buffer of a few records, so that the sort merges many runs, and the
// arrays' windows crossed all the time.
func TestCheckJoinSeekerSmallBuffers(t *testing.T) {
	defer func(n int) { sortBufSize = n }(sortBufSize)
	sortBufSize = 16 * 1000
	TestCheckJoinSeeker(t)
}

// TestCheckWalkStops: a check canceled in the middle of its walk (the
// walk of a tree runs ahead in a goroutine of its own, engine/check.go)
// returns the cancellation, leaves no walk running, and a check of the
// same generation afterwards is complete and clean; the ticks of a full
// check are the snapshot's item count, in one goroutine's order.
func TestCheckWalkStops(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	n := 3000
	if testing.Short() {
		n = 400
	}
	if err := buildCheckImage(img, n, 1); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := f.Engine().Pin()
	defer s.Release()
	items := s.ItemCount()
	before := runtime.NumGoroutine()
	for _, stopAt := range []uint64{1, items / 3, items - 1} {
		ctx, cancel := context.WithCancel(context.Background())
		var ticks uint64
		_, err := CheckTicked(ctx, s, func(fd engine.Finding) { t.Errorf("finding: %v", fd) }, func() {
			if ticks++; ticks == stopAt {
				cancel()
			}
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled at item %d of %d: %v", stopAt, items, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines after the canceled checks, %d before", g, before)
	}
	var ticks uint64
	res, err := CheckTicked(context.Background(), s, func(fd engine.Finding) { t.Errorf("finding: %v", fd) }, func() { ticks++ })
	if err != nil || !res.Complete || res.Findings != 0 {
		t.Fatalf("check after the canceled ones: %+v %v", res, err)
	}
	if ticks != items {
		t.Fatalf("%d ticks, the trees hold %d items", ticks, items)
	}
}
