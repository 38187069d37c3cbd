package repair

import (
	"encoding/binary"
	"fmt"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// eventQueue holds the live rmap updates a rebuild has not applied yet, in
// the order they came, in xfile arrays rather than on the Go heap: a busy
// writer publishes tens of thousands a second, and a 10M-extent scan runs
// for half a minute (on the heap they took 30 MiB there). Two arrays take
// turns: take hands the filled one to the applier, whose reading needs no
// lock, while the hook appends to the other; give returns it emptied.
type eventQueue struct {
	cur, spare *xfile.Array
}

// eventRecSize is an encoded event: generation, op, start, length, and the
// owner's tree, inode and offset, 8 bytes each.
const eventRecSize = 7 * 8

func newEventQueue(opts xfile.Options) (*eventQueue, error) {
	a, err := xfile.NewArray(opts, eventRecSize)
	if err != nil {
		return nil, err
	}
	b, err := xfile.NewArray(opts, eventRecSize)
	if err != nil {
		a.Close()
		return nil, err
	}
	return &eventQueue{cur: a, spare: b}, nil
}

func (q *eventQueue) close() {
	for _, a := range []*xfile.Array{q.cur, q.spare} {
		if a != nil {
			a.Close()
		}
	}
}

func (q *eventQueue) len() uint64 { return q.cur.Len() }

func (q *eventQueue) push(ev engine.RmapEvent) error {
	var b [eventRecSize]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(ev.Gen))
	le.PutUint64(b[8:], uint64(ev.Op))
	le.PutUint64(b[16:], uint64(ev.Start))
	le.PutUint64(b[24:], ev.Len)
	le.PutUint64(b[32:], uint64(ev.Owner.Tree))
	le.PutUint64(b[40:], ev.Owner.Inode)
	le.PutUint64(b[48:], ev.Owner.Offset)
	_, err := q.cur.Append(b[:])
	return err
}

// take returns the events queued so far and starts a new batch; the
// caller reads them with each and hands the array back with give before
// the next take.
func (q *eventQueue) take() (*xfile.Array, error) {
	if q.spare == nil {
		return nil, fmt.Errorf("event queue: a batch taken before the last one was given back (internal error)")
	}
	a := q.cur
	q.cur, q.spare = q.spare, nil
	return a, nil
}

func (q *eventQueue) give(a *xfile.Array) error {
	q.spare = a
	return a.Truncate(0)
}

// eachEvent calls fn for every event of a, in order, until fn fails.
func eachEvent(a *xfile.Array, fn func(engine.RmapEvent) error) error {
	var ferr error
	err := a.Iterate(func(_ uint64, b []byte) bool {
		le := binary.LittleEndian
		ev := engine.RmapEvent{
			Gen:   format.Gen(le.Uint64(b[0:])),
			Op:    engine.Op(le.Uint64(b[8:])),
			Start: format.BlockNr(le.Uint64(b[16:])),
			Len:   le.Uint64(b[24:]),
			Owner: format.Owner{Tree: format.TreeID(le.Uint64(b[32:])), Inode: le.Uint64(b[40:]), Offset: le.Uint64(b[48:])},
		}
		ferr = fn(ev)
		return ferr == nil
	})
	if err != nil {
		return err
	}
	return ferr
}
