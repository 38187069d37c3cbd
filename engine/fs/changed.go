package fs

import "github.com/scrubd/scrubd/hooks"

// ChangedEvent is a change to names, inodes or data that did not come
// through the FS's own methods: an online repair rebuilt a structure
// (Structure names its ops row) and swapped it in. A cache of what the FS
// served — the kernel's, through FUSE — must drop what it holds, because
// no create, unlink, rename or setattr reply told it.
type ChangedEvent struct {
	Structure string
}

// Changed is the chain a cache of the FS subscribes to (see ChangedEvent).
// It is called after the change is committed to the running transaction
// and its repairer's locks are released, from the repairer's goroutine: a
// subscriber may take its time and call back into the FS, and when the
// call returns, the caches are coherent again.
func (f *FS) Changed() *hooks.Chain[ChangedEvent] { return &f.changed }

// ExternalChange publishes a ChangedEvent: a repairer calls it after each
// change it swapped in.
func (f *FS) ExternalChange(structure string) {
	f.changed.Call(ChangedEvent{Structure: structure})
}

type changedChain = hooks.Chain[ChangedEvent]
