package repair

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// TestEventQueue checks that events come back as pushed, in order, batch
// by batch, with pushes into the other array while a batch is read.
func TestEventQueue(t *testing.T) {
	q, err := newEventQueue(xfile.Options{Name: "test events"}, rmapEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	r := rand.New(rand.NewPCG(1, 2))
	randEvent := func() engine.RmapEvent {
		ev := engine.RmapEvent{Gen: format.Gen(r.Uint64()), Op: engine.Op(r.IntN(2) + 1), Start: format.BlockNr(r.Uint64()), Len: r.Uint64()}
		if r.IntN(2) == 0 {
			ev.Owner = format.Owner{Tree: format.TreeID(1 + r.IntN(14))}
		} else {
			ev.Owner = format.Owner{Inode: r.Uint64(), Offset: r.Uint64()}
		}
		return ev
	}
	var want []engine.RmapEvent
	for round := 0; round < 5; round++ {
		for i := r.IntN(3000); i > 0; i-- {
			ev := randEvent()
			want = append(want, ev)
			if err := q.push(ev); err != nil {
				t.Fatal(err)
			}
		}
		if q.len() != uint64(len(want)) {
			t.Fatalf("round %d: %d queued, want %d", round, q.len(), len(want))
		}
		batch, err := q.take()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.take(); err == nil {
			t.Fatal("second take before give succeeded")
		}
		// Pushes during the read go to the next batch.
		next := randEvent()
		if err := q.push(next); err != nil {
			t.Fatal(err)
		}
		i := 0
		if err := rmapEvents.each(batch, func(ev engine.RmapEvent) error {
			if i >= len(want) || ev != want[i] {
				t.Fatalf("round %d event %d: got %+v", round, i, ev)
			}
			i++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if i != len(want) {
			t.Fatalf("round %d: read %d events, want %d", round, i, len(want))
		}
		if err := q.give(batch); err != nil {
			t.Fatal(err)
		}
		want = []engine.RmapEvent{next}
	}
}

// TestEventQueueOtherEvents: the queue is generic; free-space events go
// through it with a codec of their own.
func TestEventQueueOtherEvents(t *testing.T) {
	codec := eventCodec[engine.FreeEvent]{
		size: 32,
		put: func(b []byte, ev engine.FreeEvent) {
			le := binary.LittleEndian
			le.PutUint64(b[0:], uint64(ev.Gen))
			le.PutUint64(b[8:], uint64(ev.Op))
			le.PutUint64(b[16:], uint64(ev.Start))
			le.PutUint64(b[24:], ev.Len)
		},
		get: func(b []byte) engine.FreeEvent {
			le := binary.LittleEndian
			return engine.FreeEvent{Gen: format.Gen(le.Uint64(b[0:])), Op: engine.Op(le.Uint64(b[8:])),
				Start: format.BlockNr(le.Uint64(b[16:])), Len: le.Uint64(b[24:])}
		},
	}
	q, err := newEventQueue(xfile.Options{Name: "test free events"}, codec)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	var want []engine.FreeEvent
	for i := 0; i < 1000; i++ {
		ev := engine.FreeEvent{Gen: format.Gen(i), Op: engine.OpInsert, Start: format.BlockNr(3 * i), Len: uint64(i%7 + 1)}
		want = append(want, ev)
		if err := q.push(ev); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := q.take()
	if err != nil {
		t.Fatal(err)
	}
	var got []engine.FreeEvent
	if err := codec.each(batch, func(ev engine.FreeEvent) error { got = append(got, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d events back, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := newEventQueue(xfile.Options{}, eventCodec[engine.FreeEvent]{size: maxEventRec + 1}); err == nil {
		t.Fatal("a codec of oversized records was accepted")
	}
}
