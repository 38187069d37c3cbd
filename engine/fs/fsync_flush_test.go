package fs

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/disk/disktest"
)

// An fsync flushes its log blocks with the writer lock released: a write
// to another file goes on while that flush is stalled, and the fsync still
// returns only once its flush has.
func TestFsyncFlushOutsideWriterLock(t *testing.T) {
	dev := disktest.NewFlushGate(newDev(t))
	f := mount(t, dev, Options{})
	defer f.Close()
	a, err := f.Create(RootIno, "a", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Create(RootIno, "b", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	// The log takes appends once a commit naming it is durable.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	block := make([]byte, bs)
	if _, err := f.Write(a.Ino, block, 0); err != nil {
		t.Fatal(err)
	}
	dev.Armed.Store(true)
	synced := make(chan error, 1)
	go func() { synced <- f.Fsync(a.Ino) }()
	<-dev.Entered // the fsync's flush is stalled
	wrote := make(chan error, 1)
	go func() {
		_, err := f.Write(b.Ino, block, 0)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(dev.Open)
		t.Fatal("a write waited for another file's fsync flush")
	}
	select {
	case err := <-synced:
		t.Fatalf("fsync returned (%v) before its flush did", err)
	default:
	}
	close(dev.Open)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	logged := f.stats.FsyncLogged
	f.mu.Unlock()
	if logged != 1 {
		t.Fatalf("%d fsyncs went through the log, want 1", logged)
	}
	mustClean(t, f)
}

// flushCounter counts the flushes that reached the device and returned.
type flushCounter struct {
	disk.Device
	n atomic.Int64
}

func (c *flushCounter) Flush() error {
	err := c.Device.Flush()
	c.n.Add(1)
	return err
}

// A second fsync of a file whose changes another fsync has logged, but
// not yet flushed, returns only once they are durable: when the first
// fsync's flush does, or after a flush of its own. (It once found the
// file's modified ranges cleared by the first and returned at once, with
// the records still unflushed.)
func TestFsyncWaitsForAnotherFsyncsFlush(t *testing.T) {
	count := &flushCounter{Device: newDev(t)}
	dev := disktest.NewFlushGate(count)
	f := mount(t, dev, Options{})
	defer f.Close()
	a, err := f.Create(RootIno, "a", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, make([]byte, bs), 0); err != nil {
		t.Fatal(err)
	}
	dev.Armed.Store(true)
	first := make(chan error, 1)
	go func() { first <- f.Fsync(a.Ino) }()
	<-dev.Entered // the first fsync's records are written, their flush stalled
	before := count.n.Load()
	second := make(chan error, 1)
	go func() { second <- f.Fsync(a.Ino) }()
	waits := []chan error{first, second}
	select {
	case err := <-second:
		if count.n.Load() == before {
			close(dev.Open)
			t.Fatalf("second fsync returned (%v) with the first's records unflushed", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		waits = waits[:1] // it flushed on its own
	case <-time.After(200 * time.Millisecond):
	}
	close(dev.Open)
	for _, c := range waits {
		select {
		case err := <-c:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an fsync did not return once the flush did")
		}
	}
	mustClean(t, f)
}
