package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/disk/disktest"
	"github.com/scrubd/scrubd/engine/format"
)

// slowFlush makes every flush take a while, as a disk's does.
type slowFlush struct{ disk.Device }

func (d slowFlush) Flush() error {
	time.Sleep(2 * time.Millisecond)
	return d.Device.Flush()
}

// deadline fails the test if ch does not close within a generous bound:
// a guard against deadlock, not a timing assertion.
func deadline(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still blocked after 30 s (deadlock?)", what)
	}
}

// TestWritersRunDuringWriteOut holds a commit inside its write-out (the
// device's flush blocks) and checks that writers go on meanwhile (reading
// and copying the committing generation's blocks), that readers still see
// the previous generation, that an fsync view runs meanwhile, and that
// everything lands.
func TestWritersRunDuringWriteOut(t *testing.T) {
	base := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(base, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	g := disktest.NewFlushGate(nopClose{base})
	e, err := Open(g, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(5)
	for i := 0; i < 300; i++ {
		if err := e.Update(w.step); err != nil {
			t.Fatal(err)
		}
	}
	before := e.Pin()
	prevGen := before.Gen()
	before.Release()
	first := w.clone()

	g.Armed.Store(true)
	synced := make(chan error, 1)
	go func() { synced <- e.Sync() }()
	deadline(t, g.Entered, "commit reaching its flush")

	// The commit is inside its write-out. Writers go on: the workload
	// rewrites keys of the committing generation's blocks.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := 0; i < 300; i++ {
			if err := e.Update(w.step); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline(t, wrote, "writers during the write-out")
	if s := e.Pin(); s.Gen() != prevGen {
		t.Errorf("readers see generation %d during the write-out of %d", s.Gen(), prevGen+1)
		s.Release()
	} else {
		s.Release()
	}
	// An fsync view does not wait for the write-out (its log appends go
	// after the start the committing superblock names), and it sees the
	// committing generation as not yet durable.
	viewed := make(chan struct{})
	go func() {
		defer close(viewed)
		err := e.FsyncView(func(tx *Tx) error {
			if e.Durable(prevGen + 1) {
				t.Error("generation being written out reported durable")
			}
			if !e.Durable(prevGen) {
				t.Error("generation before the write-out reported not durable")
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}()
	deadline(t, viewed, "fsync view during the write-out")
	close(g.Open)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	// The held write-out outlasted the writers' 300 updates; the hold did
	// not include it.
	if st := e.Stats(); st.CommitWrite == 0 || st.CommitHold == 0 || st.CommitWriteMax < st.CommitWrite || st.CommitHoldMax < st.CommitHold {
		t.Errorf("commit timings not recorded: %+v", st)
	}
	s := e.Pin()
	if s.Gen() != prevGen+1 {
		t.Fatalf("after the commit readers see generation %d, want %d", s.Gen(), prevGen+1)
	}
	got := contents(t, s, format.TreeInode)
	s.Release()
	if len(got) != len(first) {
		t.Fatalf("committed generation has %d items, want %d", len(got), len(first))
	}
	for k, v := range first {
		if got[k] != v {
			t.Fatalf("committed generation: item %s differs", k)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	re := reopen(t, base.Bytes(), Options{})
	defer re.Close()
	s = re.Pin()
	got = contents(t, s, format.TreeInode)
	s.Release()
	want := w.clone()
	if len(got) != len(want) {
		t.Fatalf("reopened: %d items, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("reopened: item %s differs", k)
		}
	}
	mustCheck(t, re)
}

// counterKey holds the number of workload steps applied so far.
var counterKey = format.Key{Obj: 1 << 62, Type: 1}

// TestConcurrentCommitCrashAtEveryFlush runs a writer and a committer
// concurrently (so writes land during write-outs) on a recording device,
// then crashes at every flush: the image opens with exactly the state after
// some prefix of the writer's steps, at least every step before the last
// commit that had returned, and passes self-check.
func TestConcurrentCommitCrashAtEveryFlush(t *testing.T) {
	base := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(base, MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(base.Bytes())
	// Slow flushes widen each write-out, so that the writer's updates land
	// in the middle of them.
	e, err := Open(slowFlush{nopClose{rec}}, Options{CommitInterval: -1, MaxDelayedRefs: 200})
	if err != nil {
		t.Fatal(err)
	}
	steps := 800
	if testing.Short() {
		steps = 250
	}
	w := newWorkload(11)
	states := []map[format.Key]string{{}}
	var done atomic.Int64
	type mark struct{ flushes, steps int }
	var marks []mark // after flush count flushes, at least steps are durable
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := int(done.Load())
			if len(marks) > 0 && n < marks[len(marks)-1].steps+25 {
				runtime.Gosched() // let the writer get ahead: a commit per ~25 steps
				continue
			}
			if err := e.Sync(); err != nil {
				t.Error(err)
				return
			}
			marks = append(marks, mark{rec.Flushes(), n})
		}
	}()
	for i := 1; i <= steps; i++ {
		err := e.Update(func(tx *Tx) error {
			if err := w.step(tx); err != nil {
				return err
			}
			tr, err := tx.Tree(format.TreeInode)
			if err != nil {
				return err
			}
			return tr.Put(counterKey, binary.LittleEndian.AppendUint64(nil, uint64(i)))
		})
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, w.clone())
		done.Store(int64(i))
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	atLeast, mi := 0, 0
	for k := 0; k <= rec.Flushes(); k++ {
		for mi < len(marks) && marks[mi].flushes <= k {
			atLeast = marks[mi].steps
			mi++
		}
		if !checkBoundary(k, rec.Flushes()) {
			continue
		}
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d mode %v", k, mode)
			ce, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			s := ce.Pin()
			got := contents(t, s, format.TreeInode)
			s.Release()
			m := 0
			if v, ok := got[counterKey]; ok {
				m = int(binary.LittleEndian.Uint64([]byte(v)))
				delete(got, counterKey)
			}
			if m < atLeast || m > steps {
				t.Fatalf("%s: image holds %d steps, at least %d were durable", name, m, atLeast)
			}
			want := states[m]
			if len(got) != len(want) {
				t.Fatalf("%s: %d items after %d steps, want %d", name, len(got), m, len(want))
			}
			for key, v := range want {
				if got[key] != v {
					t.Fatalf("%s: item %s differs after %d steps", name, key, m)
				}
			}
			mustCheck(t, ce)
			ce.Close()
		}
	}
}
