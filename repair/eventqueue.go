package repair

import (
	"fmt"

	"github.com/scrubd/scrubd/xfile"
)

// eventQueue holds the live updates a rebuild has not applied yet, in the
// order they came, in xfile arrays rather than on the Go heap: a busy
// writer publishes tens of thousands a second, and a 10M-extent scan runs
// for half a minute (on the heap they took 30 MiB there). Two arrays take
// turns: take hands the filled one to the applier, whose reading needs no
// lock, while the hook appends to the other; give returns it emptied.
//
// It is one queue for every rebuild: a structure's events (rmap, alloc,
// free, file extent …) are fixed-size records through its eventCodec.
type eventQueue[E any] struct {
	cur, spare *xfile.Array
	codec      eventCodec[E]
}

// eventCodec encodes one kind of event as a fixed-size record.
type eventCodec[E any] struct {
	size int // bytes, at most maxEventRec
	put  func(b []byte, ev E)
	get  func(b []byte) E
}

// maxEventRec bounds an encoded event, so a push needs no allocation.
const maxEventRec = 128

func newEventQueue[E any](opts xfile.Options, c eventCodec[E]) (*eventQueue[E], error) {
	if c.size <= 0 || c.size > maxEventRec {
		return nil, fmt.Errorf("event queue: records of %d bytes (internal error)", c.size)
	}
	a, err := xfile.NewArray(opts, c.size)
	if err != nil {
		return nil, err
	}
	b, err := xfile.NewArray(opts, c.size)
	if err != nil {
		a.Close()
		return nil, err
	}
	return &eventQueue[E]{cur: a, spare: b, codec: c}, nil
}

func (q *eventQueue[E]) close() {
	for _, a := range []*xfile.Array{q.cur, q.spare} {
		if a != nil {
			a.Close()
		}
	}
}

func (q *eventQueue[E]) len() uint64 { return q.cur.Len() }

func (q *eventQueue[E]) push(ev E) error {
	var b [maxEventRec]byte
	q.codec.put(b[:q.codec.size], ev)
	_, err := q.cur.Append(b[:q.codec.size])
	return err
}

// take returns the events queued so far and starts a new batch; the
// caller reads them with each and hands the array back with give before
// the next take.
func (q *eventQueue[E]) take() (*xfile.Array, error) {
	if q.spare == nil {
		return nil, fmt.Errorf("event queue: a batch taken before the last one was given back (internal error)")
	}
	a := q.cur
	q.cur, q.spare = q.spare, nil
	return a, nil
}

func (q *eventQueue[E]) give(a *xfile.Array) error {
	q.spare = a
	return a.Truncate(0)
}

// each calls fn for every event of a, in order, until fn fails.
func (c eventCodec[E]) each(a *xfile.Array, fn func(E) error) error {
	var ferr error
	err := a.Iterate(func(_ uint64, b []byte) bool {
		ferr = fn(c.get(b))
		return ferr == nil
	})
	if err != nil {
		return err
	}
	return ferr
}
