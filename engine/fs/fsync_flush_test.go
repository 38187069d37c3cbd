package fs

import (
	"testing"
	"time"

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
