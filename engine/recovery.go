package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// Recovery passes (the bcachefs design): mount runs an enumerated list of
// passes. A pass runs when it is always-on or when its bit is set in the
// superblock's recovery_passes_required; the bit is cleared, in the next
// commit, only after the pass succeeded. Pass ids are stable on disk: a pass
// keeps its id forever, new passes take new ids.

// RecoveryPass is one step mount can run.
type RecoveryPass struct {
	ID     uint
	Name   string
	Always bool // runs at every read-write mount
	// Marker: the bit is a state the mount reads (see degraded.go), not
	// work to do; it is not run, and only a repair clears it.
	Marker bool
	run    func(ctx context.Context, e *Engine) error
}

// Recovery pass ids (stable on disk).
const (
	// PassCheckAllocations re-verifies that the free-space, alloc and rmap
	// trees agree before the allocator trusts them.
	PassCheckAllocations uint = 0
	// PassReplayLog applies the fsync log to the committed generation.
	PassReplayLog uint = 1
	// PassDeletedInodes frees inodes unlinked while open (registered by the
	// filesystem layer through Options.DeletedInodes).
	PassDeletedInodes uint = 2
	// PassLoggedOps completes logged operations a crash interrupted (the
	// block reservations and reaping of online rebuilds).
	PassLoggedOps uint = 3
	// PassRmapMaps writes into every file's reverse mapping the range it
	// maps (an upgrade to format 1.2, IncompatRmapMaps: versions.go).
	PassRmapMaps uint = 8
	// PassSubvolReap frees what deleted subvolumes still hold (set while
	// a deletion is under way; registered by the filesystem layer through
	// Options.SubvolReap).
	PassSubvolReap uint = 9
	// PassSnapshotFill finishes filling snapshots (set while one is being
	// filled; engine/fs/snapshot.go, Options.SnapshotFill).
	PassSnapshotFill uint = 10
)

// sickPasses names, for a structure whose damage a pass meets and leaves
// for a repair, that pass: while the structure is sick the pass's bit
// stays set, so the next mount runs the pass again (the sickness is
// persisted).
var sickPasses = map[Structure]uint{StructDeleted: PassDeletedInodes, StructLoggedOps: PassLoggedOps}

// passSick reports whether pass id's structure is sick.
func (e *Engine) passSick(id uint) bool {
	for s, p := range sickPasses {
		if p == id && e.Sick(s) {
			return true
		}
	}
	return false
}

var recoveryPasses = []RecoveryPass{
	{ID: PassCheckAllocations, Name: "check_allocations", run: passCheckAllocations},
	{ID: PassReplayLog, Name: "replay_log", Always: true, run: func(_ context.Context, e *Engine) error { return passReplayLog(e) }},
	{ID: PassLoggedOps, Name: "logged_ops", Always: true, run: passLoggedOps},
	{ID: PassDeletedInodes, Name: "deleted_inodes", Always: true, run: passDeletedInodes},
	{ID: PassRmapMaps, Name: "rmap_maps", run: passRmapMaps},
	{ID: PassSubvolReap, Name: "subvol_reap", run: passSubvolReap},
	{ID: PassSnapshotFill, Name: "snapshot_fill", run: passSnapshotFill},
	{ID: PassFreeUntrusted, Name: "free_untrusted", Marker: true},
	{ID: PassAllocUntrusted, Name: "alloc_untrusted", Marker: true},
	{ID: PassRmapUntrusted, Name: "rmap_untrusted", Marker: true},
	{ID: PassCsumUntrusted, Name: "csum_untrusted", Marker: true},
}

// passDeletedInodes frees the inodes unlinked while open (the filesystem
// layer's Options.DeletedInodes). Damage met reading the deleted tree
// does not refuse the mount: the filesystem returns it before changing
// anything, the deleted structure is marked sick and the mount goes on
// with nothing freed (see DeletedDamaged); its repairer rebuilds the list
// from the inodes with no links, and a later mount runs the pass normally.
// An error after a change is the transaction's, as in any writer.
func passDeletedInodes(_ context.Context, e *Engine) error {
	if e.opts.DeletedInodes == nil {
		return nil
	}
	var damage error
	if err := e.Update(func(tx *Tx) error {
		err := e.opts.DeletedInodes(tx)
		if err != nil && !tx.touched && errors.Is(err, format.ErrCorrupt) {
			damage = err
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	if damage != nil {
		e.DeletedDamaged(damage)
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("the deleted tree is damaged (%v): inodes unlinked while open are not freed until it is rebuilt", damage))
	}
	return e.Sync()
}

// passSubvolReap finishes the deletions of subvolumes a crash or an
// unmount interrupted (engine/fs/subvol.go): their inodes are freed in
// batches of transactions, each recording how far it went in the
// subvolume's item, so the pass resumes where the last commit left it.
func passSubvolReap(ctx context.Context, e *Engine) error {
	if e.opts.SubvolReap == nil {
		pending, err := e.subvolDeletePending()
		if err != nil || !pending {
			return err
		}
		return &deferredPass{why: "has no filesystem layer to run it (the image was opened by the engine alone)"}
	}
	if err := e.opts.SubvolReap(ctx, e); err != nil {
		if !errors.Is(err, format.ErrCorrupt) || !e.NoteDamage(err) {
			return err
		}
		// Damage met before a change: the deletion waits for the repair,
		// the mount goes on (what is left stays allocated, never freed
		// wrongly).
		if serr := e.Sync(); serr != nil {
			return serr
		}
		return &deferredPass{why: fmt.Sprintf("met damage (%v): the deletion resumes at a mount after the repair (scrubd fsck --repair)", err)}
	}
	return e.Sync()
}

// passSnapshotFill fills the snapshots a crash or an unmount left half
// filled. At a mount it only defers to the filesystem layer, which fills
// in the background once the mount is up (a snapshot is readable while
// it is filled: what it has not copied yet it reads from its source); run
// explicitly (fsck --pass snapshot_fill) it fills everything.
func passSnapshotFill(ctx context.Context, e *Engine) error {
	if e.opts.SnapshotFill == nil {
		pending, err := e.snapshotFillPending()
		if err != nil || !pending {
			return err
		}
		return &deferredPass{why: "has no filesystem layer to run it (the image was opened by the engine alone)"}
	}
	if e.mountPasses {
		return &deferredPass{why: "continues in the background after the mount", background: true}
	}
	if err := e.opts.SnapshotFill(ctx, e); err != nil {
		if !errors.Is(err, format.ErrCorrupt) || !e.NoteDamage(err) {
			return err
		}
		if serr := e.Sync(); serr != nil {
			return serr
		}
		return &deferredPass{why: fmt.Sprintf("met damage (%v): the fill resumes after the repair (scrubd fsck --repair)", err)}
	}
	return e.Sync()
}

// snapshotFillPending reports whether a snapshot is being filled.
func (e *Engine) snapshotFillPending() (bool, error) {
	pending := false
	err := e.View(func(tx *Tx) error {
		tr, ok := tx.ReadTree(format.TreeSnapshot)
		if !ok {
			return nil
		}
		return tr.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			pending = k.Type == format.TypeSnapFill
			return !pending
		})
	})
	return pending, err
}

// subvolDeletePending reports whether a subvolume is being deleted.
func (e *Engine) subvolDeletePending() (bool, error) {
	pending := false
	err := e.View(func(tx *Tx) error {
		tr, _ := tx.ReadTree(format.TreeSubvol)
		return tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type == format.TypeSubvolItem {
				it, err := format.DecodeSubvolItem(v)
				pending = err != nil || it.Flags&format.SubvolDeleting != 0
			}
			return !pending
		})
	})
	return pending, err
}

// Damage to the deleted and logged_ops trees.
//
// Neither tree is read by anything a file's contents depend on: the
// deleted tree lists inodes unlinked while open (the deleted_inodes pass
// frees them at the next mount), the logged_ops tree the multi-commit
// steps of online rebuilds (the logged_ops pass completes them) and the
// scrub cursor. What each holds can be derived again from the rest of the
// image — the deleted list from the inodes with no links, the logged
// operations' blocks as the metadata blocks no tree reaches — so damage
// to either never refuses a mount or fails a writer: the recovery pass
// that meets it marks the structure sick and goes on, leaving its work
// for after the repair (a block or an inode left allocated a while
// longer, never one freed wrongly), and the repairer (repair/
// deleted_repair.go, repair/loggedops_repair.go) replaces the tree online
// with one written from scratch and frees the blocks of the old one,
// which may be unreadable, by reachability (Exclusive.ResetTree).

// treeDamaged marks s sick for the corruption err names (its kind's
// finding, else tree_untrusted) and reports whether err was corruption.
func (e *Engine) treeDamaged(s Structure, what string, err error) bool {
	if !errors.Is(err, format.ErrCorrupt) {
		return false
	}
	id := ErrTreeUntrusted
	if ce, ok := format.AsCorrupt(err); ok {
		id = kindID(ce.Kind)
	}
	if !e.Sick(s) {
		e.reportDamage(id, what, "err", err)
	}
	e.MarkSick(s, e.committedGen(), id)
	e.requireSickPass(s)
	return true
}

// requireSickPass persists the sickness of s that a recovery pass would
// meet: its bit in recovery_passes_required, written by the next commit,
// makes the next mount run the pass again (it clears the bit once it ran
// with s healthy). Callers hold wmu (a writer's transaction) or run at
// mount, as every caller of treeDamaged does.
func (e *Engine) requireSickPass(s Structure) {
	if id, ok := sickPasses[s]; ok && e.super.RecoveryPasses&(1<<id) == 0 {
		e.super.RecoveryPasses |= 1 << id
		if e.txn != nil {
			e.txn.superDirty = true
		}
	}
}

// DeletedDamaged handles an error met reading or changing the deleted
// tree: corruption marks the deleted structure sick and reports true, the
// caller going on without the change; any other error is the caller's.
//
// Going on is safe both ways. An entry that cannot be added (an unlink
// of an open inode) leaves an inode with no links and no entry: the last
// close frees it as usual, and if a crash comes first it is left
// allocated — not freed wrongly — until the repairer, which lists every
// inode with no links, puts it back on the list for the next mount to
// free. An entry that cannot be removed (the last close, a link of an
// open unlinked file) stays behind the damage, where no lookup reaches
// it (a B-tree Put or Delete fails at the damaged block before changing
// anything below it, and every later path to that key meets the same
// block); the repairer drops it, and the pass frees only an inode whose
// link count is still zero anyway.
func (e *Engine) DeletedDamaged(err error) bool {
	return e.treeDamaged(StructDeleted, "deleted tree is damaged: marked sick; inodes unlinked while open are freed at their last close, or after the repair", err)
}

// DeletedDamaged is Engine.DeletedDamaged, for a filesystem in a
// transaction.
func (tx *Tx) DeletedDamaged(err error) bool { return tx.e.DeletedDamaged(err) }

// LoggedOpsDamaged handles an error met reading the logged_ops tree:
// corruption marks the logged_ops structure sick and reports true.
func (e *Engine) LoggedOpsDamaged(err error) bool {
	return e.treeDamaged(StructLoggedOps, "logged_ops tree is damaged: marked sick; the interrupted operations it holds are left until it is rebuilt", err)
}

// ResetTree replaces tree id, in this exclusive section, with a new empty
// tree for the caller to fill, and frees those of the candidate blocks
// (each with the tree that owns it in the rmap) that, with the new tree in
// place, no tree reaches, that are not a superblock copy or the log head,
// and that are still allocated as one-block metadata extents: the old
// tree's blocks, readable or not, and any other block leaked — what the
// logged_ops recovery pass does for its conditional operations. It
// returns the new tree and how many blocks it freed. Reachability is
// established before anything changes: damage met walking the other trees
// fails it with nothing done. The caller makes sure no other rebuild has
// blocks reserved and not linked in yet (one repair runs at a time). It
// refuses the trees the engine maintains itself.
func (x *Exclusive) ResetTree(id format.TreeID, cands map[format.BlockNr]format.TreeID) (*eb.Tree, int, error) {
	e := x.e
	switch id {
	case format.TreeRoot, format.TreeAlloc, format.TreeRmap, format.TreeFree:
		return nil, 0, fmt.Errorf("tree %s is maintained by the engine", id)
	}
	old, ok := e.trees[id]
	if !ok {
		return nil, 0, fmt.Errorf("no tree %s", id)
	}
	var un map[format.TreeID][]format.BlockNr
	if len(cands) > 0 {
		// Walk every tree but the one replaced (the new one, empty, is
		// made of a block no candidate can be: it is free now).
		delete(e.trees, id)
		var err error
		un, err = e.unreachableMeta(cands)
		e.trees[id] = old
		if err != nil {
			return nil, 0, err
		}
	}
	t, err := eb.Create(txnStore{e}, id)
	if err != nil {
		return nil, 0, err
	}
	x.touched = true
	e.trees[id] = t
	n := 0
	for _, owner := range slices.Sorted(maps.Keys(un)) {
		x.FreeMeta(owner, un[owner])
		n += len(un[owner])
	}
	return t, n, nil
}

// RecoveryPasses lists the passes this build knows, in run order.
func RecoveryPasses() []RecoveryPass { return recoveryPasses }

func (e *Engine) runRecovery() error {
	required := e.super.RecoveryPasses
	known := uint64(0)
	for _, p := range recoveryPasses {
		known |= 1 << p.ID
	}
	if unknown := required &^ known; unknown != 0 {
		return fmt.Errorf("superblock requires recovery passes %#x unknown to this build: %w", unknown, format.ErrCorrupt)
	}
	e.mountPasses = true
	_, err := e.runPasses(context.Background(), required, true)
	e.mountPasses = false
	return err
}

// deferredPass is a pass's answer when damage keeps it from its work: the
// mount goes on, the pass's bit stays set for the next mount.
type deferredPass struct {
	why        string
	background bool // not damage: the work goes on after the mount
}

func (d *deferredPass) Error() string { return "deferred: " + d.why }

// runPasses runs, in table order, the passes whose bits required sets
// (and with always the always-on ones), clearing each bit once its pass
// ran — unless the pass was deferred or left its structure sick. It
// returns the names of the passes that ran.
func (e *Engine) runPasses(ctx context.Context, required uint64, always bool) ([]string, error) {
	var ran []string
	for _, p := range recoveryPasses {
		bit := uint64(1) << p.ID
		if p.Marker || !(always && p.Always) && required&bit == 0 {
			continue
		}
		start := time.Now()
		err := p.run(ctx, e)
		var d *deferredPass
		if errors.As(err, &d) {
			e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("recovery pass %s %s", p.Name, d.why))
			if d.background {
				e.log.Info("recovery pass continues in the background", "pass", p.Name)
			} else {
				e.log.Warn("recovery pass deferred", "pass", p.Name, "why", d.why)
			}
			continue
		}
		if err != nil {
			return ran, fmt.Errorf("recovery pass %s: %w", p.Name, err)
		}
		ran = append(ran, p.Name)
		e.mount.PassesRun = append(e.mount.PassesRun, p.Name)
		e.log.Info("recovery pass done", "pass", p.Name, "took", time.Since(start))
		if e.passSick(p.ID) {
			continue
		}
		e.wmu.Lock()
		if e.super.RecoveryPasses&bit != 0 {
			e.super.RecoveryPasses &^= bit
			e.txn.superDirty = true
		}
		e.wmu.Unlock()
	}
	return ran, nil
}

// ErrUnknownPass: RunPass was given a name the pass table does not hold.
var ErrUnknownPass = errors.New("unknown recovery pass")

// ErrMarkerPass: RunPass was given a marker, which is state, not work.
var ErrMarkerPass = errors.New("marker pass")

// PassNames lists the names of the passes RunPass can run.
func PassNames() []string {
	var out []string
	for _, p := range recoveryPasses {
		if !p.Marker {
			out = append(out, p.Name)
		}
	}
	return out
}

// PassByName returns the pass RunPass runs for name: ErrUnknownPass
// (listing the names) for a name the table does not hold, ErrMarkerPass
// for a marker.
func PassByName(name string) (RecoveryPass, error) {
	for _, p := range recoveryPasses {
		if p.Name != name {
			continue
		}
		if p.Marker {
			return p, fmt.Errorf("%w %s: its bit records that a tree is untrusted (the engine runs without it), it is no work to run; repairing the tree clears it (scrubd fsck --repair)", ErrMarkerPass, name)
		}
		return p, nil
	}
	return RecoveryPass{}, fmt.Errorf("%w %q: known passes: %s", ErrUnknownPass, name, strings.Join(PassNames(), ", "))
}

// RunPass runs the recovery pass called name now (on a read-write engine)
// and commits; its bit in recovery_passes_required is cleared when it
// succeeds, as at mount. A marker pass is refused: its bit is a state the
// repair of its tree clears.
func (e *Engine) RunPass(ctx context.Context, name string) error {
	p, err := PassByName(name)
	if err != nil {
		return err
	}
	if e.opts.ReadOnly {
		return ErrReadOnly
	}
	ran, err := e.runPasses(ctx, 1<<p.ID, false)
	if err != nil {
		return err
	}
	if !slices.Contains(ran, name) {
		return fmt.Errorf("recovery pass %s was deferred (see the log): its bit stays set for the next mount: %w", name, format.ErrCorrupt)
	}
	if e.passSick(p.ID) {
		return fmt.Errorf("recovery pass %s met damage it leaves for a repair (scrubd fsck --repair): %w", name, format.ErrCorrupt)
	}
	return e.Sync()
}

// PassRequired reports whether pass id's bit is set in the superblock
// (after a mount: the pass was deferred, or its work is under way).
func (e *Engine) PassRequired(id uint) bool {
	e.lockReader()
	defer e.wmu.RUnlock()
	return e.super.RecoveryPasses&(1<<id) != 0
}

// RequirePasses sets passes to run at the next mount; it is persisted by the
// next commit.
func (e *Engine) RequirePasses(ids ...uint) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	for _, id := range ids {
		e.super.RecoveryPasses |= 1 << id
	}
	if e.txn != nil {
		e.txn.superDirty = true
	}
}

func passCheckAllocations(ctx context.Context, e *Engine) error {
	snap := &Snapshot{e: e, v: e.committed}
	var first *Finding
	n := 0
	_, err := snap.Check(ctx, func(f Finding) {
		if f.ID >= ErrAllocMissing && first == nil {
			ff := f
			first = &ff
		}
		if f.ID >= ErrAllocMissing {
			n++
		}
	})
	if err != nil {
		return err
	}
	if first != nil {
		return fmt.Errorf("%d allocation inconsistencies, first: %s: %w", n, first, format.ErrCorrupt)
	}
	return nil
}

// reportDamage counts one occurrence of error id and logs msg with args
// about it: at error level, or at info level (with silenced=true) when id
// is in the superblock's errors_silent — silenced damage is still counted
// and still repaired, only not shouted. Every line the engine logs about
// damage it met goes through here. Callers hold wmu or run at mount
// (errors_silent changes under wmu).
func (e *Engine) reportDamage(id ErrorID, msg string, args ...any) {
	e.CountError(id, 1)
	lvl := slog.LevelError
	if e.super.Silent(uint32(id)) {
		lvl = slog.LevelInfo
		args = append(args, "silenced", true)
	}
	e.log.Log(context.Background(), lvl, msg, append(args, "error", id.Name())...)
}

// ErrorIDByName returns the error id called name (ErrorID.Name) or given
// as its number.
func ErrorIDByName(name string) (ErrorID, bool) {
	for _, id := range ErrorIDs() {
		if id.Name() == name || strconv.Itoa(int(id)) == name {
			return id, true
		}
	}
	return 0, false
}

// SetErrorsSilent adds ids to the superblock's errors_silent (or, with
// silent false, removes them) and commits: damage of a silenced id is
// logged at info level instead of error level, and counted as before.
func (e *Engine) SetErrorsSilent(silent bool, ids ...ErrorID) error {
	if e.opts.ReadOnly {
		return ErrReadOnly
	}
	e.wmu.Lock()
	for _, id := range ids {
		if id >= 256 {
			e.wmu.Unlock()
			return fmt.Errorf("error id %d: errors_silent holds ids below 256", id)
		}
		w, bit := &e.super.ErrorsSilent[id/64], uint64(1)<<(id%64)
		if silent {
			*w |= bit
		} else {
			*w &^= bit
		}
	}
	e.txn.superDirty = true
	e.wmu.Unlock()
	return e.Sync()
}

// CountError records n occurrences of error id in the superblock's error
// section (persisted by the next commit). It is safe to call from inside
// Update and View.
func (e *Engine) CountError(id ErrorID, n uint64) {
	e.errMu.Lock()
	e.errCounts = append(e.errCounts, countedError{id: uint32(id), n: n, at: time.Now()})
	e.errMu.Unlock()
}

type countedError struct {
	id uint32
	n  uint64
	at time.Time
}

// takeErrorCounts moves counted errors into the superblock; wmu held.
func (e *Engine) takeErrorCounts() bool {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	for _, c := range e.errCounts {
		e.super.CountError(c.id, c.n, c.at)
	}
	had := len(e.errCounts) > 0
	e.errCounts = e.errCounts[:0]
	return had
}
