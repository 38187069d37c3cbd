package fs

import (
	"fmt"
	"slices"
	"syscall"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Fast fsync (see engine/log.go for the log itself).
//
// An inode written in the running transaction has a cache entry whose
// modified list holds the file block ranges changed since the last commit.
// Fsync logs, as one group: for each modified range, a "drop range" record
// and the file extent items now in the range (the write path splits old
// extents at range edges, so every item overlapping a range lies inside it),
// the checksum items of extents allocated in this transaction, and the inode
// item. The file's data is already on disk; the log's single flush makes
// data and records durable together.
//
// Anything else — a new inode, a truncate, link, unlink, rename, setattr —
// sets the entry's full flag, and fsync commits instead. So does an fsync
// when the engine has no log (--notreelog).
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
	var items []engine.LogItem
	full := false
	err := f.e.View(func(tx *engine.Tx) error {
		gen := tx.Gen()
		f.mu.Lock()
		c := f.caches[ino]
		if c == nil || c.gen != gen {
			f.mu.Unlock()
			return nil // nothing changed since the last commit
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
		in, err := mustInode(tx, ino)
		if err != nil {
			return err
		}
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
					if err != nil || !ok {
						derr = fmt.Errorf("extent %d has no checksums: %w", fe.Start, format.ErrCorrupt)
						return false
					}
					items = append(items, engine.LogItem{Tree: format.TreeCsum, Key: format.CsumKey(fe.Start), Value: cs})
				}
				return true
			})
			if err == nil {
				err = derr
			}
			if err != nil {
				return err
			}
		}
		items = append(items, engine.LogItem{Tree: format.TreeInode, Key: format.InodeKey(ino), Value: in.Encode()})
		return nil
	})
	if err != nil {
		return errno(err)
	}
	if !full && items == nil {
		return nil
	}
	if !full {
		err = f.e.AppendLog(items)
		if err == nil {
			f.mu.Lock()
			f.stats.FsyncLogged++
			if c := f.caches[ino]; c != nil {
				c.modified.Clear()
			}
			f.mu.Unlock()
			return nil
		}
		if err != engine.ErrNoLog {
			return errno(err)
		}
	}
	f.mu.Lock()
	f.stats.FsyncFull++
	f.mu.Unlock()
	return errno(f.e.Sync())
}

// replay applies complete log groups at mount (engine.ReplayFunc).
func (f *FS) replay(tx *engine.Tx, groups [][]engine.LogItem) error {
	// 1. Claim the disk extents the records need that are not allocated in
	// the committed generation, before anything allocates.
	atr, _ := tx.ReadTree(format.TreeAlloc)
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
		unmapped, err := punch(tx, it.Key.Obj, it.Key.Off, it.Key.Aux)
		if err != nil {
			return err
		}
		_ = unmapped // the logged inode item carries the block count
		return nil
	case it.Tree == format.TreeExtent && it.Key.Type == format.TypeFileExtent:
		fe, err := format.DecodeFileExtent(it.Value)
		if err != nil {
			return err
		}
		etr, err := tx.Tree(format.TreeExtent)
		if err != nil {
			return err
		}
		if err := etr.Put(it.Key, it.Value); err != nil {
			return err
		}
		tx.AddRef(fe.Start, fe.Len, format.Owner{Inode: it.Key.Obj, Offset: it.Key.Off})
		return nil
	case it.Tree == format.TreeCsum && it.Key.Type == format.TypeCsum:
		if _, err := format.DecodeCsums(it.Value); err != nil {
			return err
		}
		ctr, err := tx.Tree(format.TreeCsum)
		if err != nil {
			return err
		}
		return ctr.Put(it.Key, it.Value)
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
