package engine

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/scrubd/scrubd/engine/format"
)

// Health: every structure of the filesystem is healthy, sick or unchecked,
// with the generation and time of its last check and the findings that
// made it sick. A scrub marks what it checked; damage met during ordinary
// I/O marks the structure sick where it is met (the rmap's degraded mode
// reads it: while the rmap is sick the engine stops updating it and goes
// on publishing its events for a rebuild to follow). Writers ask "is X
// sick" on hot paths: that answer is one atomic bitmask load.

// Structure is one structure of the filesystem: a row of the repair ops
// table.
type Structure uint8

const (
	StructSuperblock Structure = iota
	StructRoot
	StructAlloc
	StructRmap
	StructFree
	StructInode
	StructDir
	StructExtent
	StructCsum
	StructSubvol
	StructSnapshot
	StructUUID
	StructDeleted
	StructLoggedOps
	StructData
	StructXattr
	numStructures
)

var structureNames = [numStructures]string{
	"superblock", "root", "alloc", "rmap", "free", "inode", "dir", "extent", "csum",
	"subvol", "snapshot", "uuid", "deleted", "logged_ops", "data", "xattr",
}

// Structures lists every structure in order.
func Structures() []Structure {
	out := make([]Structure, numStructures)
	for i := range out {
		out[i] = Structure(i)
	}
	return out
}

// Name is the structure's stable name, as reports, health and the ops
// table say it.
func (s Structure) Name() string {
	if s < numStructures {
		return structureNames[s]
	}
	return "structure?"
}

func (s Structure) String() string { return s.Name() }

// StructureByName returns the structure a name names.
func StructureByName(name string) (Structure, bool) {
	for i, n := range structureNames {
		if n == name {
			return Structure(i), true
		}
	}
	return 0, false
}

// StructureOfTree returns the structure a tree (or owner) belongs to. The
// fsync log has none of its own.
func StructureOfTree(t format.TreeID) (Structure, bool) {
	switch t {
	case format.OwnerSuper:
		return StructSuperblock, true
	case format.OwnerData:
		return StructData, true
	case format.TreeXattr:
		return StructXattr, true
	case format.TreeRoot, format.TreeAlloc, format.TreeRmap, format.TreeFree, format.TreeInode, format.TreeDir,
		format.TreeExtent, format.TreeCsum, format.TreeSubvol, format.TreeSnapshot, format.TreeUUID,
		format.TreeDeleted, format.TreeLoggedOps:
		return Structure(t - format.TreeRoot + format.TreeID(StructRoot)), true
	}
	return 0, false
}

// HealthState is a structure's state.
type HealthState uint8

const (
	Unchecked HealthState = iota
	Healthy
	Sick
)

func (h HealthState) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Sick:
		return "sick"
	}
	return "unchecked"
}

// StructureHealth is what the engine knows of one structure.
type StructureHealth struct {
	Structure Structure
	State     HealthState
	// Gen and CheckedAt are the generation and time of the last check,
	// or of the damage met in use (zero while unchecked).
	Gen       format.Gen
	CheckedAt time.Time
	// Findings are the finding ids that made the structure sick.
	Findings []ErrorID
}

type health struct {
	mu   sync.Mutex
	s    [numStructures]StructureHealth
	sick atomic.Uint32 // bit s: structure s is sick
	// degraded, bit s: the engine runs without s, or around its damage
	// (found damaged, not trusted until rebuilt: degraded.go); always a
	// subset of sick.
	degraded atomic.Uint32
	gen      atomic.Uint64 // the last committed generation, for marks made in use
}

// committedGen is the last committed generation, without a lock (damage
// met in use is marked from wherever it is met).
func (e *Engine) committedGen() format.Gen { return format.Gen(e.health.gen.Load()) }

// kindID is the finding id of a corruption kind.
func kindID(k format.Kind) ErrorID {
	if id, ok := kindIDs[k]; ok {
		return id
	}
	return ErrNodeBadLayout
}

func (h *health) init() {
	for i := range h.s {
		h.s[i].Structure = Structure(i)
	}
}

// set records st for s; it returns whether s was sick before.
func (h *health) set(s Structure, st HealthState, gen format.Gen, ids []ErrorID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	was := h.s[s].State == Sick
	h.s[s] = StructureHealth{Structure: s, State: st, Gen: gen, CheckedAt: time.Now(), Findings: append([]ErrorID(nil), ids...)}
	if st == Sick {
		h.sick.Or(1 << s)
	} else {
		h.sick.And(^uint32(1 << s))
	}
	return was
}

// MarkSick records that damage was found in s (at generation gen): ids
// are the findings. It returns whether s was sick already.
func (e *Engine) MarkSick(s Structure, gen format.Gen, ids ...ErrorID) bool {
	if s >= numStructures {
		return false
	}
	was := e.health.set(s, Sick, gen, ids)
	if degradable(s) && slices.ContainsFunc(ids, provesDamage) && e.health.degraded.Or(1<<s)&(1<<s) == 0 {
		e.degradedDirty.Store(true) // the next commit persists it
	}
	if !was {
		e.hooks.Health.Call(HealthEvent{Structure: s, Gen: gen, Findings: append([]ErrorID(nil), ids...)})
	}
	return was
}

// provesDamage says whether a finding proves its own tree damaged (only
// a tree whose blocks or items are bad produces it), as cross-reference
// findings do not: those may blame either tree.
func provesDamage(id ErrorID) bool {
	switch id {
	case ErrNodeBadMagic, ErrNodeBadChecksum, ErrNodeWrongFS, ErrNodeMisdirected,
		ErrNodeWrongOwner, ErrNodeStale, ErrNodeBadLevel, ErrNodeBadLayout,
		ErrNodeKeyOrder, ErrNodeUnreadable, ErrItemBad, ErrTreeItemCount,
		ErrTreeMissing, ErrTreeUntrusted, ErrRmapSick, ErrExtentOverlap, ErrExtentPastEOF:
		return true
	}
	return false
}

// ProvesDamage says whether a finding proves the tree it names damaged:
// only a tree whose own blocks or items are bad produces it. A
// cross-reference finding (a record in one tree without its twin in
// another) may be either tree's fault.
func (id ErrorID) ProvesDamage() bool { return provesDamage(id) }

// Degraded reports whether the engine runs without s (a space tree found
// damaged, no longer updated until it is rebuilt) or around its damage
// (the csum tree): see degraded.go.
func (e *Engine) Degraded(s Structure) bool { return e.health.degraded.Load()&(1<<s) != 0 }

// MarkRepaired records that s was rebuilt at generation gen: it is
// healthy, and, for a tree the engine ran degraded, trusted (a space
// tree: maintained) again from the next change on. Only a repairer calls
// it, in the exclusive section of its swap.
func (e *Engine) MarkRepaired(s Structure, gen format.Gen) {
	if s >= numStructures {
		return
	}
	e.health.set(s, Healthy, gen, nil)
	if s == StructFree {
		e.freeDamaged.Store(false)
	}
	if e.health.degraded.And(^uint32(1<<s))&(1<<s) != 0 {
		e.degradedDirty.Store(true)
	}
}

// MarkChecked records a check of s at generation gen: healthy when ids is
// empty, sick otherwise. A tree the engine runs degraded stays sick
// until its repairer says otherwise (see degraded.go).
func (e *Engine) MarkChecked(s Structure, gen format.Gen, ids []ErrorID) {
	if s >= numStructures {
		return
	}
	if len(ids) > 0 {
		e.MarkSick(s, gen, ids...)
		return
	}
	if e.Degraded(s) {
		return
	}
	e.health.set(s, Healthy, gen, ids)
}

// Sick reports whether s is marked sick.
func (e *Engine) Sick(s Structure) bool { return e.health.sick.Load()&(1<<s) != 0 }

// Health returns what the engine knows of every structure, in order.
func (e *Engine) Health() []StructureHealth {
	e.health.mu.Lock()
	defer e.health.mu.Unlock()
	out := make([]StructureHealth, numStructures)
	for i, h := range e.health.s {
		h.Findings = append([]ErrorID(nil), h.Findings...)
		out[i] = h
	}
	return out
}
