package engine

import (
	"errors"
	"testing"
	"time"
)

// logFlushes: a wait returns once a flush at or past its group returned
// (flushes may end out of order), blocks until then, and a failed flush
// fails every wait not already satisfied.
func TestLogFlushesWait(t *testing.T) {
	var l logFlushes
	if err := l.wait(0); err != nil {
		t.Fatalf("nothing appended: %v", err)
	}
	l.flushed(2, nil) // group 2's flush returned before group 1's
	if err := l.wait(1); err != nil {
		t.Fatalf("group 1 under group 2's flush: %v", err)
	}
	l.flushed(1, nil)
	if l.done != 2 {
		t.Fatalf("done %d after an older flush, want 2", l.done)
	}
	waited := make(chan error, 1)
	go func() { waited <- l.wait(4) }()
	select {
	case err := <-waited:
		t.Fatalf("wait for group 4 returned (%v) before its flush", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.flushed(3, nil)
	select {
	case err := <-waited:
		t.Fatalf("wait for group 4 returned (%v) after group 3's flush", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.flushed(4, nil)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	go func() { waited <- l.wait(5) }()
	bad := errors.New("flush failed")
	time.Sleep(10 * time.Millisecond)
	l.flushed(5, bad)
	if err := <-waited; !errors.Is(err, bad) {
		t.Fatalf("wait after a failed flush: %v", err)
	}
	if err := l.wait(1); !errors.Is(err, bad) {
		t.Fatalf("a wait after the failure: %v, want the flush's error", err)
	}
}
