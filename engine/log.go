package engine

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/scrubd/scrubd/engine/format"
)

// The fsync log (fast fsync).
//
// A full commit writes every dirty block of the transaction and two flushes.
// An fsync of one file needs far less: the file's inode item and the extent
// and checksum items it changed since the last commit. Those records go to
// a log, and one flush makes them durable with the file's data, which was
// already written to newly allocated blocks. Mount replays the log on top of
// the last committed generation (recovery pass replay_log).
//
// btrfs keeps its log as a tree whose root the superblock names, so every
// fsync also rewrites the superblock: two flushes. Here the log is a chain of
// leaf-format blocks (as ZFS's intent log): each log block names the block
// the next one will go to, allocated before the block is written, so one
// fsync is: write the log blocks, flush.
//
// The chain outlives commits (format 1.1, IncompatLogChain). A commit's
// superblock names the block where the part of the chain that extends its
// generation starts (the block the next append will use when the commit is
// prepared), with that block's sequence number and the chain's tag; the
// blocks before it go back to the allocator once the commit is durable. So
// an fsync never waits for a commit being written out: what it appends
// meanwhile lies after the start the committing superblock names, and
// mount reaches it whether the crash left that superblock or the one
// before. The records of such an fsync carry the file's changes of the
// committing generation too (the filesystem layer keeps them until that
// generation is durable), so they are complete on top of either.
//
// Every block carries the chain's tag and its sequence number; a block
// with another tag or sequence ends the chain. Each mount starts a new
// chain with a new random tag at the head block (allocated once, recorded
// in the alloc and rmap trees), appended to only once a commit naming it is
// durable (fsyncs commit until then), so blocks of
// an older chain — a crashed mount's unflushed appends among them — can
// never be mistaken for part of the current one. A record set is applied
// only if its last block (flag GroupEnd) is valid: a torn or damaged log is
// reported and skipped, never half-applied.

// LogItem is one record of an fsync log group.
type LogItem struct {
	Tree  format.TreeID
	Key   format.Key
	Value []byte
}

// ErrNoLog reports that the engine has no log (read-only, or --notreelog);
// the caller commits instead.
var ErrNoLog = errors.New("no fsync log")

type logState struct {
	cur format.BlockNr // where the next log block goes (0: no log)
	seq uint32         // its sequence number
	tag format.Gen     // the chain's tag
	// rewind sends the next block allocation back near the head (set by
	// each commit).
	rewind bool
	// named is the generation whose commit first named the chain; until
	// it is durable appends are refused (ErrNoLog: the fsync commits).
	named format.Gen
	// transient are the chain's blocks allocated since the last commit
	// was prepared, and the block that commit named if it was not the
	// head: they return to the allocator when the next commit is durable.
	transient []format.BlockNr
	deferred  []extent // logged data extents freed since the last commit was prepared
	appends   uint64
	blocks    uint64
}

// ReplayFunc applies the complete groups of a log to the running
// transaction at mount, in order. It must claim (Tx.ClaimExtent) every data
// extent the groups reference before it causes any allocation.
type ReplayFunc func(tx *Tx, groups [][]LogItem) error

// appendLogLocked appends with wmu held (FsyncView flushes once it is
// released), so no commit is prepared
// meanwhile: the records lie after the start a committing superblock
// names, and before the start the next one will name. A commit may be
// being written out (see the top of this file).
func (e *Engine) appendLogLocked(items []LogItem) error {
	if err := e.writable(); err != nil {
		return err
	}
	if e.flog.cur == 0 || e.opts.NoLog || e.flog.named == 0 || !e.Durable(e.flog.named) || e.flog.seq > math.MaxUint32-uint32(len(items))-1 {
		return ErrNoLog
	}
	tag := e.flog.tag
	buf := make([]byte, format.BlockSize)
	var n format.Node
	var at format.BlockNr
	start := func() error {
		// The next block goes right after this one (a write's data goes
		// after the next log block, so a write and its fsync dirty
		// adjacent blocks), except first after a commit: then near the
		// head, where the blocks earlier commits made obsolete come
		// free again. A chain that always followed its own tail would
		// wander over the whole device (on a sparse image file every
		// block it reached would cost the host an allocation, and the
		// fsync a journal commit).
		hint := e.flog.cur
		if e.flog.rewind {
			hint, e.flog.rewind = e.super.Log.Block, false
		}
		next, err := e.alloc.allocate(1, hint)
		if err != nil {
			return err
		}
		e.flog.transient = append(e.flog.transient, next)
		at = e.flog.cur
		n = format.InitLogBlock(buf, e.fsid, at, tag, e.flog.seq, next)
		e.flog.cur = next
		e.flog.seq++
		return nil
	}
	write := func(last bool) error {
		if last {
			n.SetLogFlags(format.LogFlagGroupEnd)
		}
		n.Seal()
		e.flog.blocks++
		if _, err := e.dev.WriteAt(n, int64(at)*format.BlockSize); err != nil {
			e.countIOError(ioWrite)
			return err
		}
		return nil
	}
	if err := start(); err != nil {
		return err
	}
	for _, it := range items {
		v := format.EncodeLogRecord(it.Tree, it.Key, it.Value)
		if len(v) > format.MaxValueSize {
			return fmt.Errorf("log record %s: value of %d bytes", it.Key, len(it.Value))
		}
		if n.LeafFree() < format.ItemSize(len(v)) {
			if err := write(false); err != nil {
				return err
			}
			if err := start(); err != nil {
				return err
			}
		}
		pos := n.NrItems()
		copy(n.InsertItem(pos, format.Key{Obj: uint64(pos), Type: format.TypeLogRecord}, len(v)), v)
	}
	if err := write(true); err != nil {
		return err
	}
	e.flog.appends++
	return nil // FsyncView flushes, out of the writer lock
}

// readLog reads the log chain of the committed generation and returns its
// complete groups; notes say what ended the chain if it ended abnormally.
func (e *Engine) readLog() (groups [][]LogItem, blocks []format.BlockNr, notes []string, err error) {
	start, seq, tag := e.super.LogChain()
	if start == 0 {
		return nil, nil, nil, nil
	}
	buf := make([]byte, format.BlockSize)
	var cur []LogItem
	at := start
	seen := map[format.BlockNr]bool{}
	for {
		if seen[at] {
			notes = append(notes, fmt.Sprintf("log chain loops back to block %d", at))
			break
		}
		seen[at] = true
		if _, err := e.dev.ReadAt(buf, int64(at)*format.BlockSize); err != nil {
			return nil, nil, nil, fmt.Errorf("read log block %d: %w", at, err)
		}
		if verr := format.VerifyLogBlock(buf, e.fsid, at, tag, seq, e.totalBlocks); verr != nil {
			// The normal end of a log is a block not (yet) written for
			// this generation; say more only for other damage.
			if ce, ok := format.AsCorrupt(verr); ok && at != start && ce.Kind != format.KindStale && ce.Kind != format.KindBadMagic && ce.Kind != format.KindBadChecksum {
				notes = append(notes, fmt.Sprintf("log ends at block %d: %v", at, verr))
			}
			break
		}
		n := format.Node(buf)
		blocks = append(blocks, at)
		for i := 1; i < n.NrItems(); i++ {
			if n.Key(i).Type != format.TypeLogRecord {
				return nil, nil, nil, fmt.Errorf("log block %d item %d: %w", at, i, format.ErrCorrupt)
			}
			tree, k, v, derr := format.DecodeLogRecord(n.Value(i))
			if derr != nil {
				notes = append(notes, fmt.Sprintf("log block %d: %v", at, derr))
				cur = nil
				goto end
			}
			cur = append(cur, LogItem{Tree: tree, Key: k, Value: append([]byte(nil), v...)})
		}
		if n.LogFlags()&format.LogFlagGroupEnd != 0 {
			groups = append(groups, cur)
			cur = nil
		}
		at, seq = n.LogNext(), seq+1
	}
end:
	if len(cur) > 0 {
		notes = append(notes, fmt.Sprintf("skipped an incomplete log group of %d records (a torn fsync that was never acknowledged)", len(cur)))
	}
	return groups, blocks, notes, nil
}

// passReplayLog replays the fsync log onto the committed generation and
// starts a new chain (see restartLog).
func passReplayLog(e *Engine) error {
	groups, blocks, notes, err := e.readLog()
	if err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, notes...)
	head := e.super.Log.Block
	if head == 0 {
		return nil
	}
	// The chain's blocks are free in the committed generation; keep the
	// allocator off them until the commit that names the new chain is
	// durable (until then a crash replays this one again).
	for _, b := range blocks {
		if b == head {
			continue
		}
		if err := e.alloc.claim(b, 1); err != nil {
			return fmt.Errorf("log block %d: %w", b, err)
		}
		e.flog.transient = append(e.flog.transient, b)
	}
	e.restartLog()
	if len(groups) == 0 {
		return nil
	}
	if e.opts.ReplayLog == nil {
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("log holds %d fsync groups but no replayer is set; left unapplied", len(groups)))
		return nil
	}
	// Until the allocator is reloaded below it holds back claimed ranges
	// that the trees may call free: skip the allocator invariant.
	e.replaying = true
	defer func() { e.replaying = false }()
	err = e.Update(func(tx *Tx) error {
		tx.touched = true
		return e.opts.ReplayLog(tx, groups)
	})
	if err != nil {
		return fmt.Errorf("replay %d log groups: %w", len(groups), err)
	}
	if err := e.Sync(); err != nil {
		return err
	}
	// Replay claimed whole ranges; what ended up unreferenced is free in
	// the free-space tree again. Nothing pins older generations during
	// mount, so the allocator can start over from the tree.
	if err := e.reloadAllocator(); err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("replayed %d fsync groups from %d log blocks", len(groups), len(blocks)))
	return nil
}

// ensureLogHead allocates the log's head block (recorded in the alloc and
// rmap trees, owned by TreeLog), starts a chain there and commits, so that
// the superblock names it before any fsync writes there.
func (e *Engine) ensureLogHead() error {
	if e.super.Log.Block != 0 || e.opts.NoLog {
		return nil
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	b, err := e.alloc.allocate(1, 0)
	if err != nil {
		return err
	}
	e.txn.newExtents[b] = &newExtent{n: 1}
	e.ref(b, 1, format.Owner{Tree: format.TreeLog}, format.ExtentMeta, +1)
	e.super.Log = format.RootPtr{Block: b, Gen: e.txn.gen}
	e.txn.superDirty = true
	e.restartLog()
	return e.commitLocked()
}

// restartLog starts a new chain at the head block with a new random tag,
// for the next commit to name; appends wait until that commit is durable
// (fsyncs commit until then). The old chain's blocks stay in transient
// until then.
func (e *Engine) restartLog() {
	e.flog.cur, e.flog.seq, e.flog.named = e.super.Log.Block, 1, 0
	for e.flog.tag = 0; e.flog.tag == 0; {
		e.flog.tag = format.Gen(rand.Uint64())
	}
}

// advanceLog records in sb, the superblock of the commit being prepared,
// where the chain goes on (the block the next append will use), and
// returns the chain blocks and logged data extents that commit makes
// obsolete: writeOut returns them to the allocator once it is durable (not
// before: a crash before then replays them). Called under wmu, so no
// append runs meanwhile.
func (e *Engine) advanceLog(sb *format.Super) []extent {
	if e.flog.cur == 0 {
		return nil
	}
	// Only an image with the log chain (format 1.1, versions.go) names
	// one; on a 1.0 image nothing is named, so appends stay refused and
	// an fsync commits.
	if sb.Incompat&format.IncompatLogChain != 0 {
		sb.LogStart, sb.LogSeq, sb.LogTag = e.flog.cur, e.flog.seq, e.flog.tag
		if e.flog.named == 0 {
			e.flog.named = sb.Gen
		}
	}
	e.flog.rewind = true
	var xs []extent
	keep := e.flog.transient[:0]
	for _, b := range e.flog.transient {
		if b == e.flog.cur {
			keep = append(keep, b)
			continue
		}
		xs = append(xs, extent{b, 1})
	}
	e.flog.transient = keep
	xs = append(xs, e.flog.deferred...)
	e.flog.deferred = e.flog.deferred[:0]
	return xs
}

// LogStats counts fsync log activity.
type LogStats struct {
	Appends uint64
	Blocks  uint64
}

// reloadAllocator rebuilds the allocator's index from the committed
// free-space tree. Only valid while no reader pins an older generation.
func (e *Engine) reloadAllocator() error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	a, _, err := e.loadAllocator(e.trees)
	if err != nil {
		return err
	}
	a.cursor = e.alloc.cursor
	// The commit before this made every block of the old chain obsolete
	// and returned them; what the chain holds now is allocated anew.
	for _, b := range e.flog.transient {
		if err := a.claim(b, 1); err != nil {
			return fmt.Errorf("log block %d: %w", b, err)
		}
	}
	e.alloc = a
	return nil
}
