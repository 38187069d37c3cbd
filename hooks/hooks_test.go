package hooks

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// event is shaped like the engine's events: a few words, passed by value.
type event struct {
	Gen, Start, Len uint64
	Op              uint8
}

func TestOrder(t *testing.T) {
	var c Chain[int]
	if c.Active() {
		t.Fatal("zero Chain is active")
	}
	c.Call(0) // no hooks: nothing happens
	var got []string
	rec := func(name string) func(int) {
		return func(e int) { got = append(got, name) }
	}
	a := c.Register(rec("a"))
	b := c.Register(rec("b"))
	c.Register(rec("c"))
	if !c.Active() {
		t.Fatal("Chain with hooks is not active")
	}
	c.Call(1)
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	got = nil
	c.Unregister(b)
	c.Unregister(b) // idempotent
	c.Unregister(nil)
	c.Register(rec("d"))
	c.Call(2)
	if want := []string{"a", "c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("after Unregister(b): got %v, want %v", got, want)
	}
	got = nil
	c.Unregister(a)
	c.Call(3)
	if want := []string{"c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("after Unregister(a): got %v, want %v", got, want)
	}
}

func TestEmptyAfterUnregister(t *testing.T) {
	var c Chain[event]
	h1 := c.Register(func(event) {})
	h2 := c.Register(func(event) {})
	c.Unregister(h1)
	c.Unregister(h2)
	if c.Active() {
		t.Error("Chain is active after all hooks were unregistered")
	}
}

func TestEventValue(t *testing.T) {
	var c Chain[event]
	var got event
	c.Register(func(e event) { got = e })
	want := event{Gen: 7, Start: 100, Len: 8, Op: 2}
	c.Call(want)
	if got != want {
		t.Errorf("hook saw %+v, want %+v", got, want)
	}
}

func TestForeignHandlePanics(t *testing.T) {
	var c1, c2 Chain[int]
	h := c1.Register(func(int) {})
	defer func() {
		if recover() == nil {
			t.Error("Unregister of another chain's handle did not panic")
		}
		if !c1.Active() {
			t.Error("failed Unregister removed the hook from its own chain")
		}
	}()
	c2.Unregister(h)
}

// TestHookMayRegisterAndCall checks the re-entrant uses Call allows.
func TestHookMayRegisterAndCall(t *testing.T) {
	var c Chain[int]
	var n atomic.Int64
	c.Register(func(e int) {
		n.Add(1)
		if e > 0 {
			c.Call(e - 1)
		}
	})
	c.Register(func(e int) {
		if e == 3 {
			c.Register(func(int) { n.Add(100) })
		}
	})
	c.Call(3) // 4 calls of the first hook; the new hook is not in this Call
	if n.Load() != 4 {
		t.Fatalf("n = %d, want 4", n.Load())
	}
	c.Call(0)
	if n.Load() != 105 {
		t.Fatalf("n = %d, want 105", n.Load())
	}
}

// TestPanicDoesNotWedgeUnregister checks that a hook that panics does not
// leave Unregister waiting forever.
func TestPanicDoesNotWedgeUnregister(t *testing.T) {
	var c Chain[int]
	h := c.Register(func(int) { panic("boom") })
	func() {
		defer func() { recover() }()
		c.Call(1)
	}()
	c.Unregister(h) // would hang if the in-flight count leaked
}

// TestExactlyOnceInOrder has several goroutines publish numbered events
// while subscribers come and go. A subscriber registered for the whole run
// must see every event exactly once, each publisher's events in order, and
// within one Call the hooks run in registration order.
func TestExactlyOnceInOrder(t *testing.T) {
	const publishers, perPublisher = 4, 2000
	type ev struct{ pub, seq int }
	var c Chain[ev]

	// Per publisher, hooks run in its goroutine, so these need no locks.
	var seen [publishers][]int
	var order [publishers][]byte
	first := c.Register(func(e ev) {
		seen[e.pub] = append(seen[e.pub], e.seq)
		order[e.pub] = append(order[e.pub], 'a')
	})
	second := c.Register(func(e ev) { order[e.pub] = append(order[e.pub], 'b') })

	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() { // transient subscribers, registered after first and second
		for {
			select {
			case <-stop:
				return
			default:
			}
			h := c.Register(func(e ev) { order[e.pub] = append(order[e.pub], 'x') })
			c.Unregister(h)
		}
	})
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for s := range perPublisher {
				c.Call(ev{p, s})
			}
		})
	}
	wg.Wait()
	close(stop)
	churn.Wait()
	c.Unregister(first)
	c.Unregister(second)

	for p := range publishers {
		if len(seen[p]) != perPublisher {
			t.Fatalf("publisher %d: %d events delivered, want %d", p, len(seen[p]), perPublisher)
		}
		for i, s := range seen[p] {
			if s != i {
				t.Fatalf("publisher %d: event %d delivered as number %d", p, i, s)
			}
		}
		// Each Call produced "ab" followed by at most one 'x'.
		o := order[p]
		for i := 0; i < len(o); {
			if i+1 >= len(o) || o[i] != 'a' || o[i+1] != 'b' {
				t.Fatalf("publisher %d: hooks ran out of registration order at %d: %q", p, i, o[i:min(i+8, len(o))])
			}
			i += 2
			if i < len(o) && o[i] == 'x' {
				i++
			}
		}
	}
}

// TestUnregisterUnderLoad checks the promise of Unregister under
// concurrent callers: once it returns, the function never runs again, not
// even in a Call that was already in progress.
func TestUnregisterUnderLoad(t *testing.T) {
	const rounds = 300
	var c Chain[int]
	var stop atomic.Bool
	var calls atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				c.Call(1)
				calls.Add(1)
				runtime.Gosched() // let Unregister run even on few CPUs
			}
		})
	}
	for r := range rounds {
		var gone atomic.Bool // set once Unregister has returned
		var ran atomic.Int64
		h := c.Register(func(int) {
			if gone.Load() {
				t.Errorf("round %d: hook ran after Unregister returned", r)
			}
			ran.Add(1)
			for range 2000 { // widen the window for in-flight calls
				if gone.Load() {
					t.Errorf("round %d: hook still running after Unregister returned", r)
					return
				}
			}
		})
		// Let the callers pick it up, then remove it mid-flight.
		for start := calls.Load(); calls.Load() < start+10; {
			runtime.Gosched()
		}
		c.Unregister(h)
		gone.Store(true)
		if ran.Load() == 0 {
			t.Errorf("round %d: hook never ran", r)
		}
	}
	stop.Store(true)
	wg.Wait()
	if c.Active() {
		t.Error("chain still active")
	}
}

func TestZeroAllocs(t *testing.T) {
	var c Chain[event]
	e := event{Gen: 1, Start: 2, Len: 3}
	if n := testing.AllocsPerRun(1000, func() { c.Call(e) }); n != 0 {
		t.Errorf("Call with no subscriber: %v allocs, want 0", n)
	}
	var sum uint64
	h := c.Register(func(e event) { sum += e.Len })
	if n := testing.AllocsPerRun(1000, func() { c.Call(e) }); n != 0 {
		t.Errorf("Call with one subscriber: %v allocs, want 0", n)
	}
	c.Register(func(e event) { sum += e.Start })
	if n := testing.AllocsPerRun(1000, func() { c.Call(e) }); n != 0 {
		t.Errorf("Call with two subscribers: %v allocs, want 0", n)
	}
	c.Unregister(h)
	if sum == 0 {
		t.Error("hooks did not run")
	}
}

var sink uint64

func BenchmarkCallNoSubscriber(b *testing.B) {
	var c Chain[event]
	e := event{Gen: 1, Start: 2, Len: 3}
	b.ReportAllocs()
	for b.Loop() {
		c.Call(e)
	}
}

func BenchmarkCallOneSubscriber(b *testing.B) {
	var c Chain[event]
	c.Register(func(e event) { sink += e.Len })
	e := event{Gen: 1, Start: 2, Len: 3}
	b.ReportAllocs()
	for b.Loop() {
		c.Call(e)
	}
}

// BenchmarkCallOneSubscriberParallel shows the cost of the shared in-flight
// counter when several goroutines publish at once.
func BenchmarkCallOneSubscriberParallel(b *testing.B) {
	var c Chain[event]
	var n atomic.Uint64
	c.Register(func(e event) { n.Store(e.Len) })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		e := event{Gen: 1, Start: 2, Len: 3}
		for pb.Next() {
			c.Call(e)
		}
	})
}
