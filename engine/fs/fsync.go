package fs

import (
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Fast fsync (see engine/log.go for the log itself).
//
// An inode written since the last durable commit has a cache entry whose
// modified list holds the file block ranges changed since then (those of a
// generation being committed are carried into the running transaction's
// entry, and an fsync logs them with the rest: its records must be
// complete on top of the generation before, if the crash comes first).
// Fsync logs, as one group: for each modified range, a "drop range" record
// and the file extent items now in the range (the write path splits old
// extents at range edges, so every item overlapping a range lies inside it),
// the checksum items of extents not yet durable, and the inode
// item. The file's data is already on disk; the log's single flush makes
// data and records durable together.
//
// Anything else — a new inode, a truncate, link, unlink, rename, setattr —
// sets the entry's full flag, and fsync commits instead. A rename sets it
// on every inode it touches (an exchange: both parents and both
// children), so an fsync of any of them commits the whole rename, and a
// crash leaves it done or not done, never half (a symlink's target,
// written with its new inode, is never logged either). So does an fsync
// when the engine has no log (--notreelog), and one whose group would
// lack the checksums of a new extent because damage to the csum tree
// dropped or hides them (engine/degraded.go): replay verifies a group's
// data against those checksums to tell whether it reached the disk, and
// without them it could only drop an acknowledged fsync or trust data it
// cannot check. A commit needs neither; every other fsync still logs.
//
// Replay (at mount) applies the groups to the last committed generation: it
// first claims every disk extent the records reference that the generation
// does not already hold, so no allocation can land on fsync'd data, then
// drops each range's old mapping through the same punch the write path
// uses, inserts the logged items with their references, and restores the
// checksums and inode items.

// Record types of the log (key types that do not occur in the trees).
const typeLogDropRange uint8 = 61 // (ino, 61, start block, end block)

// Fsync makes ino's data and attributes durable.
func (f *FS) Fsync(ino uint64) error {
	f.writes.Add(1)
	full, logged := false, false
	run := f.e.FsyncView
	if f.delayedOn() && !f.opts.ReadOnly {
		// The file's buffered blocks go to the trees first, in the same
		// hold of the writer lock (delalloc.go).
		run = f.e.FsyncUpdate
	}
	err := run(func(tx *engine.Tx) error {
		if f.dirty(ino) != nil {
			if err := f.flushIno(tx, ino); err != nil {
				return err
			}
		}
		if f.snapInvolved(ino) {
			// A snapshot's fill: the log's replay would not make the
			// copies the guard made before the changes (snapshot.go).
			full = true
			return nil
		}
		f.mu.Lock()
		c := f.caches[ino]
		if c == nil || f.e.Durable(c.gen) {
			f.mu.Unlock()
			return nil // nothing changed since the last durable commit
		}
		if c.full {
			full = true
			f.mu.Unlock()
			return nil
		}
		var ranges [][2]uint64
		c.modified.Scan(func(a, b uint64) bool {
			ranges = append(ranges, [2]uint64{a, b})
			return true
		})
		f.mu.Unlock()
		if len(ranges) == 0 {
			return nil
		}
		items, pins, err := f.logItems(tx, ino, ranges)
		if errors.Is(err, errNoCsums) {
			full = true
			return nil
		}
		if err != nil {
			return err
		}
		// The extents the records name must survive until the log is
		// obsolete, even if overwritten before the next commit.
		for _, p := range pins {
			tx.PinForLog(p)
		}
		if err := tx.AppendLog(items); err != nil {
			if err == engine.ErrNoLog {
				full = true
				return nil
			}
			return err
		}
		logged = true
		f.mu.Lock()
		c.modified.Clear()
		f.mu.Unlock()
		return nil
	})
	if err != nil {
		return errno(err)
	}
	f.mu.Lock()
	if logged {
		f.stats.FsyncLogged++
	} else if full {
		f.stats.FsyncFull++
	}
	f.mu.Unlock()
	if full {
		return errno(f.e.Sync())
	}
	return nil
}

// errNoCsums: the checksums of an extent a log group needs are not in the
// csum tree (damage dropped or hides them); the fsync commits instead.
var errNoCsums = errors.New("checksums of a new extent unreadable")

// logItems builds the log group for ino's modified ranges: per range a drop
// record and the extent items in it, the checksums of extents new in this
// transaction (which it also returns, to pin), and the inode item. It
// returns errNoCsums when damage to the csum tree keeps such checksums
// from it.
func (f *FS) logItems(tx *engine.Tx, ino uint64, ranges [][2]uint64) ([]engine.LogItem, []format.BlockNr, error) {
	in, err := mustInode(tx, ino)
	if err != nil {
		return nil, nil, err
	}
	var items []engine.LogItem
	var pins []format.BlockNr
	etr, _ := tx.ReadTree(format.TreeExtent)
	ctr, _ := tx.ReadTree(format.TreeCsum)
	for _, r := range ranges {
		items = append(items, engine.LogItem{Tree: format.TreeExtent, Key: format.Key{Obj: ino, Type: typeLogDropRange, Off: r[0], Aux: r[1]}})
		var derr error
		err := etr.Ascend(format.FileExtentKey(ino, r[0]), func(k format.Key, v []byte) bool {
			if k.Obj != ino || k.Type != format.TypeFileExtent || k.Off >= r[1] {
				return false
			}
			fe, err := format.DecodeFileExtent(v)
			if err != nil {
				derr = err
				return false
			}
			items = append(items, engine.LogItem{Tree: format.TreeExtent, Key: k, Value: slices.Clone(v)})
			if tx.IsNewExtent(fe.Start) {
				cs, ok, err := ctr.Get(format.CsumKey(fe.Start), nil)
				switch {
				case err != nil && tx.CsumDamaged(err), err == nil && !ok && f.e.Sick(engine.StructCsum):
					derr = errNoCsums
					return false
				case err != nil || !ok:
					derr = fmt.Errorf("extent %d has no checksums: %w", fe.Start, format.ErrCorrupt)
					return false
				}
				items = append(items, engine.LogItem{Tree: format.TreeCsum, Key: format.CsumKey(fe.Start), Value: cs})
				pins = append(pins, fe.Start)
			}
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return nil, nil, err
		}
	}
	items = append(items, engine.LogItem{Tree: format.TreeInode, Key: format.InodeKey(ino), Value: in.Encode()})
	return items, pins, nil
}

// durableGroups returns how many leading groups have all the data they
// name on disk: each group carries the checksums of the new extents it
// references, and a group whose data blocks do not match was written
// without its data reaching the disk (its flush never completed, so neither
// did any later group's).
func durableGroups(tx *engine.Tx, groups [][]engine.LogItem, allocated func(format.BlockNr) bool) (int, error) {
	buf := make([]byte, format.BlockSize)
	for g, group := range groups {
		sums := map[format.BlockNr][]byte{}
		for _, it := range group {
			if it.Tree == format.TreeCsum && it.Key.Type == format.TypeCsum {
				sums[format.BlockNr(it.Key.Obj)] = it.Value
			}
		}
		for _, it := range group {
			if it.Tree != format.TreeExtent || it.Key.Type != format.TypeFileExtent {
				continue
			}
			fe, err := format.DecodeFileExtent(it.Value)
			if err != nil {
				return 0, err
			}
			if allocated(fe.Start) {
				continue // committed data
			}
			cs, ok := sums[fe.Start]
			if !ok || uint64(len(cs)) != 4*fe.Len {
				return g, nil
			}
			for i := fe.Offset; i < fe.Offset+fe.Count; i++ {
				if _, err := tx.Device().ReadAt(buf, int64(fe.Start+format.BlockNr(i))*format.BlockSize); err != nil {
					return 0, err
				}
				if format.Checksum(buf) != format.CsumAt(cs, i) {
					return g, nil
				}
			}
		}
	}
	return len(groups), nil
}

// replay applies complete log groups at mount (engine.ReplayFunc).
func (f *FS) replay(tx *engine.Tx, groups [][]engine.LogItem) error {
	atr, _ := tx.ReadTree(format.TreeAlloc)
	allocatedErr := error(nil)
	allocated := func(b format.BlockNr) bool {
		k, _, ok, err := atr.First(format.Key{Obj: uint64(b), Type: format.TypeExtentItem})
		if err != nil && allocatedErr == nil {
			allocatedErr = err
		}
		return ok && k.Obj == uint64(b) && k.Type == format.TypeExtentItem
	}
	// 0. Keep only the groups whose data reached the disk.
	n, err := durableGroups(tx, groups, allocated)
	if err == nil {
		err = allocatedErr
	}
	if err != nil {
		return err
	}
	if n < len(groups) {
		tx.Note(fmt.Sprintf("log group %d of %d names data that never reached the disk (an fsync cut off before its flush): it and later groups skipped", n+1, len(groups)))
		groups = groups[:n]
	}
	// 1. Claim the disk extents the records need that are not allocated in
	// the committed generation, before anything allocates.
	type ext struct {
		start format.BlockNr
		n     uint64
	}
	var need []ext
	seen := map[format.BlockNr]bool{}
	for _, g := range groups {
		for _, it := range g {
			if it.Tree != format.TreeExtent || it.Key.Type != format.TypeFileExtent {
				continue
			}
			fe, err := format.DecodeFileExtent(it.Value)
			if err != nil {
				return err
			}
			if seen[fe.Start] {
				continue
			}
			seen[fe.Start] = true
			k, _, ok, err := atr.First(format.Key{Obj: uint64(fe.Start), Type: format.TypeExtentItem})
			if err != nil {
				return err
			}
			if ok && k.Obj == uint64(fe.Start) && k.Type == format.TypeExtentItem {
				if k.Off != fe.Len {
					return fmt.Errorf("log extent %d+%d disagrees with allocated extent of %d blocks: %w", fe.Start, fe.Len, k.Off, format.ErrCorrupt)
				}
				continue // already allocated: only references change
			}
			need = append(need, ext{fe.Start, fe.Len})
		}
	}
	slices.SortFunc(need, func(a, b ext) int { return int(int64(a.start) - int64(b.start)) })
	for i := 0; i < len(need); {
		s, e := need[i].start, need[i].start+format.BlockNr(need[i].n)
		j := i + 1
		for ; j < len(need) && need[j].start <= e; j++ {
			e = max(e, need[j].start+format.BlockNr(need[j].n))
		}
		if err := tx.ClaimRange(s, uint64(e-s)); err != nil {
			return fmt.Errorf("log references blocks %d..%d: %w", s, e-1, err)
		}
		for _, x := range need[i:j] {
			tx.MarkClaimed(x.start, x.n)
		}
		i = j
	}
	// 2. Apply the groups in order.
	for _, g := range groups {
		for _, it := range g {
			if err := f.replayItem(tx, it); err != nil {
				return fmt.Errorf("replay %s record %s: %w", it.Tree, it.Key, err)
			}
		}
	}
	return nil
}

func (f *FS) replayItem(tx *engine.Tx, it engine.LogItem) error {
	switch {
	case it.Tree == format.TreeExtent && it.Key.Type == typeLogDropRange:
		if it.Key.Aux <= it.Key.Off {
			return syscall.EINVAL
		}
		// The logged inode item that follows carries the block count.
		_, err := punch(tx, it.Key.Obj, it.Key.Off, it.Key.Aux)
		return err
	case it.Tree == format.TreeExtent && it.Key.Type == format.TypeFileExtent:
		fe, err := format.DecodeFileExtent(it.Value)
		if err != nil {
			return err
		}
		etr, err := tx.Tree(format.TreeExtent)
		if err != nil {
			return err
		}
		if err := putExtent(tx, etr, it.Key.Obj, it.Key.Off, fe, engine.OpInsert); err != nil {
			return err
		}
		tx.AddRef(format.Owner{Inode: it.Key.Obj, Offset: it.Key.Off}, fe)
		return nil
	case it.Tree == format.TreeCsum && it.Key.Type == format.TypeCsum:
		if _, err := format.DecodeCsums(it.Value); err != nil {
			return err
		}
		// As on the write path: damage in the csum tree drops the record
		// (the group's data was verified against it already).
		return f.putCsums(tx, format.BlockNr(it.Key.Obj), it.Value)
	case it.Tree == format.TreeInode && it.Key.Type == format.TypeInodeItem:
		if _, err := format.DecodeInodeItem(it.Value); err != nil {
			return err
		}
		itr, err := tx.Tree(format.TreeInode)
		if err != nil {
			return err
		}
		return itr.Put(it.Key, it.Value)
	}
	return fmt.Errorf("unknown log record type %d in tree %s: %w", it.Key.Type, it.Tree, format.ErrCorrupt)
}
