package engine

import (
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
)

// Op is what a change did to a tree item.
type Op uint8

const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return "op?"
}

// AllocEvent is a change to the alloc tree: an extent's record was created,
// its reference count changed, or it was removed.
type AllocEvent struct {
	Gen   format.Gen
	Op    Op
	Start format.BlockNr
	Len   uint64
	Refs  uint64
	Flags uint64
}

// RmapEvent is a change to the reverse mapping: Owner gained (insert) or
// lost (delete) the extent. It is published even while the rmap tree is
// marked sick and not updated, so a rebuild can follow along.
type RmapEvent struct {
	Gen   format.Gen
	Op    Op
	Start format.BlockNr
	Len   uint64
	Owner format.Owner
}

// FreeEvent is a change to the free-space tree.
type FreeEvent struct {
	Gen   format.Gen
	Op    Op
	Start format.BlockNr
	Len   uint64
}

// Hooks are the engine's live-update hook chains. The engine calls each at
// the moment a change joins the running transaction, with that transaction's
// generation, from the writer's goroutine; a subscriber must not block and
// must not call back into the engine's writer.
type Hooks struct {
	Alloc hooks.Chain[AllocEvent]
	Rmap  hooks.Chain[RmapEvent]
	Free  hooks.Chain[FreeEvent]
}
