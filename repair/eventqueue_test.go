package repair

import (
	"math/rand/v2"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/xfile"
)

// TestEventQueue checks that events come back as pushed, in order, batch
// by batch, with pushes into the other array while a batch is read.
func TestEventQueue(t *testing.T) {
	q, err := newEventQueue(xfile.Options{Name: "test events"})
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
		if err := eachEvent(batch, func(ev engine.RmapEvent) error {
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
