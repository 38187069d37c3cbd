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
	// Offset and Count: the part of the extent a file owner maps (Count
	// 0: not given). OpUpdate changes only these.
	Offset, Count uint64
}

// FreeEvent is a change to the free-space tree.
type FreeEvent struct {
	Gen   format.Gen
	Op    Op
	Start format.BlockNr
	Len   uint64
}

// InodeEvent is a change to an inode item (insert, update, delete).
type InodeEvent struct {
	Gen   format.Gen
	Op    Op
	Ino   uint64
	Inode format.InodeItem // the new item (zero on delete)
}

// DirentEvent is a directory entry added (insert) or removed (delete).
type DirentEvent struct {
	Gen   format.Gen
	Op    Op
	Dir   uint64
	Entry format.DirEntry
}

// ExtentEvent is a change to a file extent item: the mapping of file
// blocks [FileBlock, FileBlock+Extent.Count) of Ino.
type ExtentEvent struct {
	Gen       format.Gen
	Op        Op
	Ino       uint64
	FileBlock uint64
	Extent    format.FileExtent
}

// CsumEvent is the checksum record of a new data extent, as the filesystem
// computed it when it wrote the extent: published whether or not the
// csum tree took it (damage there makes the engine drop the change, see
// degraded.go), so a rebuild keeps checksums the damaged tree lost.
// Csums (crc32c per block, format.PutCsum) is valid only during the call.
// The record's removal has no event of its own: it goes when its extent
// is freed (an AllocEvent delete of a data extent).
type CsumEvent struct {
	Gen   format.Gen
	Start format.BlockNr
	Csums []byte
}

// Hooks are the engine's live-update hook chains. The engine calls each at
// the moment a change joins the running transaction, with that transaction's
// generation, from the writer's goroutine; a subscriber must not block and
// must not call back into the engine's writer.
//
// Alloc, Rmap and Free are called by the engine as delayed refs are
// applied; Inode, Dirent, Extent and Csum by the filesystem layer as it
// changes those items.
type Hooks struct {
	Alloc  hooks.Chain[AllocEvent]
	Rmap   hooks.Chain[RmapEvent]
	Free   hooks.Chain[FreeEvent]
	Inode  hooks.Chain[InodeEvent]
	Dirent hooks.Chain[DirentEvent]
	Extent hooks.Chain[ExtentEvent]
	Csum   hooks.Chain[CsumEvent]
	// Health is called when a structure goes sick (it was not before):
	// damage met in use, or a scrub's finding. It may be called with
	// the writer lock held: a subscriber must not block.
	Health hooks.Chain[HealthEvent]
}

// HealthEvent is a structure going sick.
type HealthEvent struct {
	Structure Structure
	Gen       format.Gen
	Findings  []ErrorID
}
