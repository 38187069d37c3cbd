package hooks

// Why Unregister can wait, and why Call stays cheap
//
// The list of hooks is an immutable slice published through an
// atomic.Pointer; Register and Unregister copy it, change the copy, and
// publish it under a mutex. With no hooks the pointer is nil, so Call is one
// atomic load (a plain load on amd64 and arm64) and a nil check, inlined
// into the publisher; everything else is out of line in callAll, which
// loads the pointer once more and runs the slice it saw.
//
// A Call that loaded the old slice may still be running a hook when
// Unregister publishes the new one. Unregister must not return while that
// can happen: the subscriber typically frees what the hook touches (a shadow
// index on an xfile) right after unregistering. So every Handle has an
// in-flight counter and a removed flag, used like a tiny hazard pointer:
//
//	Call, per hook:          Unregister:
//	  active.Add(1)            removed.Store(true)
//	  if !removed.Load() {     publish slice without h
//	      fn(e)                wait until active.Load() == 0
//	  }
//	  active.Add(-1)
//
// Go's atomics are sequentially consistent, so of the two operations
// "Call's active.Add(1)" and "Unregister's active.Load()" one comes first.
// If the Add does, Unregister sees active > 0 and waits for the call to
// finish. If the Load does, Unregister's earlier removed.Store also precedes
// Call's removed.Load, which therefore sees true and skips fn. Either way no
// fn runs after Unregister returns. The cost is two uncontended atomic adds
// and a load per hook per call, paid only when someone listens.
//
// The decrement is deferred, so a hook that panics does not leave the
// counter raised and Unregister hanging.

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Chain is an ordered list of hooks called with events of type E. The zero
// value is an empty chain ready to use. A Chain must not be copied after
// first use.
type Chain[E any] struct {
	mu    sync.Mutex                 // serializes Register and Unregister
	hooks atomic.Pointer[[]entry[E]] // nil when empty; immutable once published
}

type entry[E any] struct {
	h  *Handle
	fn func(E)
}

// Handle identifies one registration. It is not generic, so a subscriber
// can keep the handles of chains of different event types together.
type Handle struct {
	owner   any // the *Chain[E] it belongs to
	removed atomic.Bool
	active  atomic.Int64 // Calls between their check of removed and the end of fn
}

// Register adds fn at the end of the chain and returns a handle for
// Unregister. Every Call that starts after Register returns calls fn, after
// the functions registered before it; Calls already in progress do not.
func (c *Chain[E]) Register(fn func(E)) *Handle {
	if fn == nil {
		panic("hooks: Register with nil function")
	}
	h := &Handle{owner: c}
	c.mu.Lock()
	defer c.mu.Unlock()
	var old []entry[E]
	if p := c.hooks.Load(); p != nil {
		old = *p
	}
	hs := make([]entry[E], len(old), len(old)+1)
	copy(hs, old)
	hs = append(hs, entry[E]{h, fn})
	c.hooks.Store(&hs)
	return h
}

// Unregister removes h from the chain and waits until no Call is running
// its function. When Unregister returns, h's function is not running and
// will never be called again, so the subscriber may free what it uses.
// Unregister is idempotent, and a nil h is ignored. It panics if h was
// registered on another chain.
//
// Inside a hook, do not Unregister a hook whose function is running
// further up the same goroutine's stack, in particular the hook itself:
// Unregister would wait for itself forever.
func (c *Chain[E]) Unregister(h *Handle) {
	if h == nil {
		return
	}
	if h.owner != any(c) {
		panic("hooks: Unregister with a handle from another chain")
	}
	h.removed.Store(true)
	c.mu.Lock()
	if p := c.hooks.Load(); p != nil {
		old := *p
		for i, x := range old {
			if x.h != h {
				continue
			}
			if len(old) == 1 {
				c.hooks.Store(nil)
			} else {
				hs := make([]entry[E], 0, len(old)-1)
				hs = append(append(hs, old[:i]...), old[i+1:]...)
				c.hooks.Store(&hs)
			}
			break
		}
	}
	c.mu.Unlock()
	// Wait for Calls already running the function. Hooks are short and
	// this is rare, so yielding, then sleeping briefly, is enough.
	for spins := 0; h.active.Load() != 0; spins++ {
		if spins < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// Active reports whether any hook is registered. Publishers can use it to
// skip building an event nobody will receive.
func (c *Chain[E]) Active() bool { return c.hooks.Load() != nil }

// Call calls every registered function with e, in registration order,
// synchronously in the caller's goroutine. With no hooks registered it
// costs one atomic load and is inlined. It is safe to call concurrently with
// itself and with Register and Unregister. A hook may call Call (on any
// chain) and Register; see Unregister for the one restriction. If a hook
// panics, the panic propagates to the caller of Call and later hooks of
// that Call are not run.
func (c *Chain[E]) Call(e E) {
	if c.hooks.Load() != nil {
		c.callAll(e)
	}
}

// callAll is kept out of line so that Call, its fast path, inlines into
// every publisher (the inliner's budget has no room for passing the loaded
// pointer along, so callAll loads it again; if it has become nil
// meanwhile, the hooks were all unregistered and none may be called).
//
//go:noinline
func (c *Chain[E]) callAll(e E) {
	p := c.hooks.Load()
	if p == nil {
		return
	}
	hs := *p
	for i := range hs {
		hs[i].call(e)
	}
}

func (x *entry[E]) call(e E) {
	h := x.h
	h.active.Add(1)
	defer h.active.Add(-1)
	if !h.removed.Load() {
		x.fn(e)
	}
}
