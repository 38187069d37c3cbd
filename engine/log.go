package engine

import (
	"errors"
	"fmt"

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
// leaf-format blocks (as ZFS's intent log): the superblock names a head block
// allocated once and recorded in the alloc and rmap trees; each log block
// names the block the next one will go to, allocated before the block is
// written. So one fsync is: write the log blocks, flush. Log blocks are
// tagged with the committed generation they extend; a block with another tag
// ends the chain, so after a commit the old chain is simply dead and its
// blocks (other than the head) go back to the allocator. A record set is
// applied only if its last block (flag GroupEnd) is valid: a torn or damaged
// log is reported and skipped, never half-applied.

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
	cur       format.BlockNr   // where the next log block goes
	seq       uint32           // its sequence number
	transient []format.BlockNr // chain blocks other than the head
	deferred  []extent         // logged data extents freed since the log began
	appends   uint64
	blocks    uint64
}

// ReplayFunc applies the complete groups of a log to the running
// transaction at mount, in order. It must claim (Tx.ClaimExtent) every data
// extent the groups reference before it causes any allocation.
type ReplayFunc func(tx *Tx, groups [][]LogItem) error

// AppendLog writes one fsync group to the log and flushes. It returns
// ErrNoLog if the engine has no log.
func (e *Engine) AppendLog(items []LogItem) error {
	defer e.lockCommits()()
	return e.appendLogLocked(items)
}

// appendLogLocked appends with cmu and wmu held: no commit is in flight, so
// the log extends the generation on disk, and no commit can make it
// obsolete before it is durable.
func (e *Engine) appendLogLocked(items []LogItem) error {
	if err := e.writable(); err != nil {
		return err
	}
	if e.super.Log.Block == 0 || e.opts.NoLog {
		return ErrNoLog
	}
	tag := e.committedGen()
	buf := make([]byte, format.BlockSize)
	var n format.Node
	var at format.BlockNr
	start := func() error {
		next, err := e.alloc.allocate(1, e.flog.cur)
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
	if err := e.dev.Flush(); err != nil {
		e.countIOError(ioWrite)
		return err
	}
	e.flog.appends++
	return nil
}

func (e *Engine) committedGen() format.Gen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.committed.super.Gen
}

// readLog reads the log chain of the committed generation and returns its
// complete groups; notes say what ended the chain if it ended abnormally.
func (e *Engine) readLog() (groups [][]LogItem, blocks []format.BlockNr, notes []string, err error) {
	head := e.super.Log.Block
	if head == 0 {
		return nil, nil, nil, nil
	}
	tag := e.super.Gen
	buf := make([]byte, format.BlockSize)
	var cur []LogItem
	at, seq := head, uint32(1)
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
			if ce, ok := format.AsCorrupt(verr); ok && seq > 1 && ce.Kind != format.KindStale && ce.Kind != format.KindBadMagic && ce.Kind != format.KindBadChecksum {
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

// passReplayLog replays the fsync log onto the committed generation.
func passReplayLog(e *Engine) error {
	groups, blocks, notes, err := e.readLog()
	if err != nil {
		return err
	}
	e.mount.Notes = append(e.mount.Notes, notes...)
	if len(groups) == 0 {
		return nil
	}
	if e.opts.ReplayLog == nil {
		e.mount.Notes = append(e.mount.Notes, fmt.Sprintf("log holds %d fsync groups but no replayer is set; left unapplied", len(groups)))
		return nil
	}
	// The chain's blocks are free in the committed generation; keep the
	// allocator off them until the replay is committed.
	for _, b := range blocks[1:] {
		if err := e.alloc.claim(b, 1); err != nil {
			return fmt.Errorf("log block %d: %w", b, err)
		}
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
// rmap trees, owned by TreeLog) and commits, so that the superblock names it
// before any fsync writes there.
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
	return e.commitLocked()
}

// restartLog starts a new, empty chain at the head for the transaction
// after the one being committed, whose commit makes the old chain obsolete
// once it is durable, and returns the old chain's transient blocks and the
// data extents it kept: writeOut returns them to the allocator then (not
// before: a crash before the commit is durable replays the old chain). No
// append runs until then (cmu).
func (e *Engine) restartLog() []extent {
	var xs []extent
	for _, b := range e.flog.transient {
		xs = append(xs, extent{b, 1})
	}
	xs = append(xs, e.flog.deferred...)
	e.flog.transient = e.flog.transient[:0]
	e.flog.deferred = e.flog.deferred[:0]
	e.flog.cur, e.flog.seq = e.super.Log.Block, 1
	return xs
}

// resetLog starts a new, empty chain at the head when the old one is
// obsolete already (mount), and returns its transient blocks to the
// allocator.
func (e *Engine) resetLog() {
	for _, b := range e.flog.transient {
		e.alloc.release(b, 1)
	}
	e.flog.transient = e.flog.transient[:0]
	for _, x := range e.flog.deferred {
		e.alloc.release(x.start, x.n)
	}
	e.flog.deferred = e.flog.deferred[:0]
	e.flog.cur, e.flog.seq = e.super.Log.Block, 1
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
	a := newAllocator(e.totalBlocks)
	err := e.trees[format.TreeFree].Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
		a.release(format.BlockNr(k.Obj), k.Off)
		return true
	})
	if err != nil {
		return err
	}
	a.cursor = e.alloc.cursor
	e.alloc = a
	e.resetLog()
	return nil
}
