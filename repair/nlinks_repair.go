package repair

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// The link-count repair (XFS's nlinks.c): every inode's link count is
// what the directory entries naming it imply. It scans the directory and
// inode trees of a pinned generation, counting per inode the names that
// point at it and per directory its subdirectories, while a dirent hook
// records every entry added or removed since (live updates, as XFS's
// nlink hooks); then, in one short transaction with the writers held,
// it applies what the hook saw after the pinned generation and fixes the
// inodes whose count is wrong: those found wrong by the scan and those
// the writers touched since. Inodes that no entry names and that are not
// unlinked-while-open (the deleted list) are not left to vanish: they
// are linked into /lost+found under their inode number.
//
// The counts: a file has one link per name; a directory two (its entry
// in its parent and its own ".") plus one per subdirectory (their ".."),
// the root three-less-one (no parent entry) — 2 plus its subdirectories.

// nlinkCounts are the directory tree's counts, at a generation and then
// kept current.
type nlinkCounts struct {
	names   map[uint64]int64 // names per inode
	subdirs map[uint64]int64 // subdirectories per directory
}

func (c *nlinkCounts) apply(op engine.Op, dir uint64, de format.DirEntry) {
	d := int64(1)
	if op == engine.OpDelete {
		d = -1
	}
	c.names[de.Ino] += d
	if uint32(de.Type) == modeDir>>12 {
		c.subdirs[dir] += d
	}
}

// want is the link count the counts imply for an inode of mode; zero
// means no name: deleted while open, or an orphan.
func (c *nlinkCounts) want(ino uint64, mode uint32) uint32 {
	names := max(c.names[ino], 0)
	if mode&modeType != modeDir {
		return uint32(names)
	}
	if names == 0 && ino != fs.RootIno {
		return 0
	}
	return uint32(2 + max(c.subdirs[ino], 0))
}

// repairNlinks is the inode row's repairer: it fixes link counts. Damage
// to the inode tree's own blocks is not its to repair (inodes lost with a
// leaf are reconstructed by the inode rebuild, not built yet): the row
// runs only for the findings it answers.
func repairNlinks(ctx context.Context, e *engine.Engine, opts ScrubOptions) (*RebuildReport, error) {
	start := time.Now()
	f := opts.fsys
	if f == nil {
		return nil, errors.New("the link-count repair needs the filesystem")
	}
	// Subscribe, commit, pin: every change after the pinned generation
	// is seen (those of it or before are in the scan).
	var mu sync.Mutex
	var events []engine.DirentEvent
	h := e.Hooks().Dirent.Register(func(ev engine.DirentEvent) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	})
	defer e.Hooks().Dirent.Unregister(h)
	var touched []uint64
	ih := e.Hooks().Inode.Register(func(ev engine.InodeEvent) {
		mu.Lock()
		touched = append(touched, ev.Ino)
		mu.Unlock()
	})
	defer e.Hooks().Inode.Unregister(ih)

	// Commit once subscribed: what the running transaction did before
	// the hooks were there is then in the pinned generation.
	if err := e.Sync(); err != nil {
		return nil, err
	}
	pin := e.Pin()
	gen := pin.Gen()
	counts := &nlinkCounts{names: map[uint64]int64{}, subdirs: map[uint64]int64{}}
	type inodeAt struct {
		mode, nlink uint32
	}
	inodes := map[uint64]inodeAt{}
	err := scanTree(pin, format.TreeDir, func(k format.Key, v []byte) error {
		if k.Type != format.TypeDirEntry {
			return nil
		}
		de, err := format.DecodeDirEntry(v)
		if err != nil {
			return err
		}
		counts.apply(engine.OpInsert, k.Obj, de)
		return nil
	})
	if err == nil {
		err = scanTree(pin, format.TreeInode, func(k format.Key, v []byte) error {
			if k.Type != format.TypeInodeItem {
				return nil
			}
			in, err := format.DecodeInodeItem(v)
			if err != nil {
				return err
			}
			inodes[k.Obj] = inodeAt{in.Mode, in.Nlink}
			return nil
		})
	}
	settled := settledInodes(pin) // subvol.go
	pin.Release()
	if err != nil {
		return nil, fmt.Errorf("scan the namespace at generation %d: %w", gen, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var candidates []uint64
	orphans := false
	for ino, in := range inodes {
		if w := counts.want(ino, in.mode); w != in.nlink && settled(ino) {
			candidates = append(candidates, ino)
			orphans = orphans || w == 0
		}
	}
	slices.Sort(candidates)
	var lf uint64
	if orphans {
		// Made in a transaction of its own, before the writers are held
		// (an orphan now is an orphan then: nothing names it to reach it).
		if lf, err = f.LostFound(); err != nil {
			return nil, fmt.Errorf("lost+found: %w", err)
		}
	}
	var changes []string
	var fixed, followed uint64
	held := time.Now()
	err = e.Update(func(tx *engine.Tx) error {
		held = time.Now()
		// The writers are held: what the hooks saw is all there is.
		mu.Lock()
		evs, more := events, touched
		events, touched = nil, nil
		mu.Unlock()
		for _, ev := range evs {
			if ev.Gen > gen {
				followed++
				counts.apply(ev.Op, ev.Dir, ev.Entry)
				more = append(more, ev.Entry.Ino, ev.Dir)
			}
		}
		inos := append(candidates, more...)
		slices.Sort(inos)
		inos = slices.Compact(inos)
		for _, ino := range inos {
			if !settled(ino) {
				continue // a subvolume being deleted, or without an item
			}
			in, err := inodeIn(tx, ino)
			if err != nil {
				return err
			}
			if in == nil {
				continue // freed since
			}
			w := counts.want(ino, in.Mode)
			if w == in.Nlink {
				continue
			}
			if w == 0 {
				if deleted, err := onDeletedList(tx, ino); err != nil {
					return err
				} else if deleted {
					if in.Nlink != 0 {
						if _, _, err := fs.SetNlink(tx, ino, 0); err != nil {
							return err
						}
						changes = append(changes, fmt.Sprintf("inode %d (unlinked while open): link count %d, set to 0", ino, in.Nlink))
						fixed++
					}
					continue
				}
				if lf == 0 {
					// Orphaned since the scan? A writer cannot reach an
					// inode no name names; leave it to the next run.
					continue
				}
				path, err := fs.AdoptTx(tx, ino, lf)
				if err != nil {
					return fmt.Errorf("adopt inode %d into lost+found: %w", ino, err)
				}
				counts.names[ino]++
				if in.Mode&modeType == modeDir {
					counts.subdirs[lf]++
				}
				changes = append(changes, fmt.Sprintf("inode %d was named by no directory (link count %d): linked as %s", ino, in.Nlink, path))
				fixed++
				continue
			}
			if _, _, err := fs.SetNlink(tx, ino, w); err != nil {
				return err
			}
			changes = append(changes, fmt.Sprintf("inode %d: link count %d, the directory entries imply %d: set", ino, in.Nlink, w))
			fixed++
		}
		// lost+found's own count, if it adopted directories.
		if lf != 0 {
			if in, err := inodeIn(tx, lf); err != nil {
				return err
			} else if in != nil {
				if w := counts.want(lf, in.Mode); w != in.Nlink {
					if _, _, err := fs.SetNlink(tx, lf, w); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	pause := time.Since(held)
	if err != nil {
		return nil, err
	}
	if err := e.Sync(); err != nil {
		return nil, err
	}
	return &RebuildReport{Structure: "inode", Action: "fixed link counts", Gen: uint64(gen), Records: fixed, Events: followed,
		DurationS: time.Since(start).Seconds(), PauseMs: float64(pause.Microseconds()) / 1000, Changes: changes}, nil
}

// scanTree walks every item of tree id in snapshot s.
func scanTree(s *engine.Snapshot, id format.TreeID, fn func(k format.Key, v []byte) error) error {
	t, ok := s.ScanTree(id)
	if !ok {
		return fmt.Errorf("no tree %s", id)
	}
	var ferr error
	err := t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		ferr = fn(k, v)
		return ferr == nil
	})
	if err == nil {
		err = ferr
	}
	return err
}

// inodeIn reads inode ino in tx; nil when there is none.
func inodeIn(tx *engine.Tx, ino uint64) (*format.InodeItem, error) {
	tr, _ := tx.ReadTree(format.TreeInode)
	v, ok, err := tr.Get(format.InodeKey(ino), nil)
	if err != nil || !ok {
		return nil, err
	}
	in, err := format.DecodeInodeItem(v)
	if err != nil {
		return nil, err
	}
	return &in, nil
}

// onDeletedList says whether ino was unlinked while open.
func onDeletedList(tx *engine.Tx, ino uint64) (bool, error) {
	tr, _ := tx.ReadTree(format.TreeDeleted)
	_, ok, err := tr.Get(format.DeletedKey(ino), nil)
	return ok, err
}
