package repair

import (
	"fmt"
	"sync"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
	"github.com/scrubd/scrubd/xfile"
)

// The shadow tree of an online rebuild, kept current by live hooks.
//
// A rebuild scans a pinned generation G into a shadow: an in-memory
// B-tree on an xfile (the engine's own B-tree code over
// xfile.BTreeStore, pages the kernel can reclaim, no Go heap per record).
// Meanwhile writers go on changing the filesystem, so the shadow
// subscribes to the hook chain that publishes the changes of the
// structure it mirrors, before G is pinned (so every change after G is
// published after the subscription), and goes through three states:
//
//   - buffering, while the scan fills the shadow: every event is appended
//     to the event queue (two xfile arrays taking turns), none applied —
//     the scan owns the tree;
//   - live, after catchUp: the buffered events are applied, those of G or
//     earlier skipped (the scan saw them), in chunks outside the lock
//     while the hook keeps appending, until the backlog is short; the
//     rest is applied under the lock, and from then on the hook applies
//     each event as it is published;
//   - frozen, from freeze on: the shadow stands still so that it can be
//     bulk-loaded; events after G go to the queue again, now the delta,
//     which is applied to the staged new tree (drainTo, as many rounds
//     as the rebuild likes) and, last, in the exclusive section, to the
//     new tree as the swap's transaction sees it (stop, then
//     applyPending).
//
// One apply function, the structure's, turns an event into B-tree
// operations on whichever tree it is given (the shadow, the staged tree,
// the swapped-in tree), so each change is applied exactly once to the
// tree that ends up swapped in: the scan saw those of G and earlier, the
// shadow those after G until the freeze, the delta the rest (the hook
// package's exactly-once guarantee does the rest, and Unregister in the
// exclusive section, with every writer held out and every change
// published, ends the stream).
//
// The shadow is generic over the event type; what a structure supplies is
// an eventCodec (a fixed-size encoding, so that events wait in xfile
// arrays and not on the Go heap), the event's generation and the apply
// function.

type shadowState uint8

const (
	shadowBuffering shadowState = iota
	shadowLive
	shadowFrozen
)

// shadow is the shadow tree of one rebuild and the hook subscription
// feeding it.
type shadow[E any] struct {
	mu    sync.Mutex
	tree  *eb.Tree
	store *xfile.BTreeStore
	q     *eventQueue[E]
	apply func(t *eb.Tree, ev E) error // the structure's
	gen   func(ev E) format.Gen        // an event's generation

	state  shadowState
	qerr   error      // a failure to queue an event (under mu: err is not)
	err    error      // a failure to apply one to the shadow
	after  format.Gen // the pinned generation: events of it or earlier are in the scan
	events uint64     // events applied to the shadow

	chain  *hooks.Chain[E]
	handle *hooks.Handle
}

// newShadow makes the shadow of tree id (named name in the xfiles' names)
// on xfiles in dir ("" for anonymous memory).
func newShadow[E any](dir, name string, id format.TreeID, codec eventCodec[E], gen func(E) format.Gen, apply func(t *eb.Tree, ev E) error) (*shadow[E], error) {
	store, err := xfile.NewBTreeStore(xfile.Options{Dir: dir, Name: name + " shadow"})
	if err != nil {
		return nil, err
	}
	tr, err := store.CreateTree(id)
	if err != nil {
		store.Close()
		return nil, err
	}
	q, err := newEventQueue(xfile.Options{Dir: dir, Name: name + " live updates"}, codec)
	if err != nil {
		store.Close()
		return nil, err
	}
	return &shadow[E]{tree: tr, store: store, q: q, apply: apply, gen: gen}, nil
}

// close unsubscribes (if stop did not) and frees the xfiles.
func (s *shadow[E]) close() {
	s.unsubscribe()
	s.q.close()
	s.store.Close()
}

// subscribe registers the shadow's hook on chain, then commits and pins a
// generation: every change not in it is published after the
// subscription. The caller releases the snapshot when its scan is done.
func (s *shadow[E]) subscribe(e *engine.Engine, chain *hooks.Chain[E]) (*engine.Snapshot, error) {
	s.chain, s.handle = chain, chain.Register(s.hook)
	if err := e.Sync(); err != nil {
		return nil, err
	}
	snap := e.Pin()
	s.mu.Lock()
	s.after = snap.Gen()
	s.mu.Unlock()
	return snap, nil
}

func (s *shadow[E]) unsubscribe() {
	if s.handle != nil {
		s.chain.Unregister(s.handle)
		s.handle = nil
	}
}

func (s *shadow[E]) hook(ev E) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state == shadowBuffering || s.state == shadowFrozen && s.gen(ev) > s.after:
		if s.qerr == nil {
			s.qerr = s.q.push(ev)
		}
	case s.state == shadowFrozen:
	default:
		s.applyLive(ev)
	}
}

// applyLive applies an event to the shadow unless the scan saw it; the
// first failure sticks in err.
func (s *shadow[E]) applyLive(ev E) error {
	if s.err != nil || s.gen(ev) <= s.after {
		return s.err
	}
	s.events++
	s.err = s.apply(s.tree, ev)
	return s.err
}

// drain hands the events queued so far to fn, outside the lock (the hook
// appends to the queue's other array meanwhile), and returns how many
// there were.
func (s *shadow[E]) drain(fn func(*xfile.Array) error) (int, error) {
	s.mu.Lock()
	if s.qerr != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("queue live updates: %w", s.qerr)
	}
	batch, err := s.q.take()
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n := int(batch.Len())
	err = fn(batch)
	s.mu.Lock()
	if gerr := s.q.give(batch); err == nil {
		err = gerr
	}
	s.mu.Unlock()
	return n, err
}

// catchUp applies what was buffered during the scan and goes live. In
// chunks: the events stay buffered (writers' hooks only append) while a
// chunk is applied outside the lock, so no writer's hook waits for the
// whole backlog; the last short stretch is applied under the lock.
func (s *shadow[E]) catchUp() error {
	for {
		s.mu.Lock()
		if s.err == nil {
			s.err = s.qerr
		}
		if s.err != nil || s.q.len() < 1024 {
			if s.err == nil {
				s.err = s.q.codec.each(s.q.cur, s.applyLive)
			}
			if s.err == nil {
				s.err = s.q.cur.Truncate(0)
			}
			s.state = shadowLive
			err := s.err
			s.mu.Unlock()
			if err != nil {
				return fmt.Errorf("apply live updates to the shadow: %w", err)
			}
			return nil
		}
		s.mu.Unlock()
		// applyLive works on the shadow, which nothing else touches now.
		if _, err := s.drain(func(a *xfile.Array) error { return s.q.codec.each(a, s.applyLive) }); err != nil {
			return fmt.Errorf("apply live updates to the shadow: %w", err)
		}
	}
}

// items returns how many records the shadow holds now.
func (s *shadow[E]) items() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tree.Items
}

// freeze stops applying events to the shadow: from now on those after
// the scanned generation go to the delta. It returns the records the
// shadow holds and a generation committed by then (the bulk load stamps
// its nodes with it: whatever the rebuild committed before the freeze —
// its reservation — is in it or earlier).
func (s *shadow[E]) freeze(e *engine.Engine) (records uint64, gen format.Gen, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, 0, fmt.Errorf("apply live updates to the shadow: %w", s.err)
	}
	s.state = shadowFrozen
	snap := e.Pin()
	gen = snap.Gen()
	snap.Release()
	return s.tree.Items, gen, nil
}

// drainTo applies the delta gathered so far to t (the staged new tree),
// outside the lock, and returns how many events it held.
func (s *shadow[E]) drainTo(t *eb.Tree) (int, error) {
	return s.drain(func(a *xfile.Array) error {
		return s.q.codec.each(a, func(ev E) error { return s.apply(t, ev) })
	})
}

// pending is how many events wait in the queue.
func (s *shadow[E]) pending() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.q.len()
}

// stop ends the subscription (in the exclusive section: every change has
// been published) and returns how many events the rebuild applied to the
// shadow plus those still pending in the delta.
func (s *shadow[E]) stop() (uint64, error) {
	s.unsubscribe()
	if s.qerr != nil {
		return 0, fmt.Errorf("queue live updates: %w", s.qerr)
	}
	return s.events + s.q.len(), nil
}

// applyPending applies what is left of the delta to t, after stop.
func (s *shadow[E]) applyPending(t *eb.Tree) error {
	return s.q.codec.each(s.q.cur, func(ev E) error { return s.apply(t, ev) })
}

// xfileBytes is the size of the shadow's xfile (0 if unknown).
func (s *shadow[E]) xfileBytes() int64 {
	st, err := s.store.Stats()
	if err != nil {
		return 0
	}
	return st.File.Allocated
}
