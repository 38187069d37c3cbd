package repair

import (
	"slices"
	"sync"

	"github.com/scrubd/scrubd/engine"
)

// touchedInodes collects the inode numbers the engine's Inode hook
// reports while a repair scans a pinned generation: the inodes writers
// changed since, which the repair's exclusive step looks at again.
type touchedInodes struct {
	mu   sync.Mutex
	inos []uint64
}

// watchInodes subscribes a touchedInodes to e's Inode hook; stop
// unsubscribes it.
func watchInodes(e *engine.Engine) (t *touchedInodes, stop func()) {
	t = &touchedInodes{}
	h := e.Hooks().Inode.Register(func(ev engine.InodeEvent) {
		t.mu.Lock()
		t.inos = append(t.inos, ev.Ino)
		t.mu.Unlock()
	})
	return t, func() { e.Hooks().Inode.Unregister(h) }
}

// take returns the inodes touched since the last take, sorted, each once.
func (t *touchedInodes) take() []uint64 {
	t.mu.Lock()
	s := t.inos
	t.inos = nil
	t.mu.Unlock()
	slices.Sort(s)
	return slices.Compact(s)
}
