package fs

import (
	"context"
	"crypto/rand"
	"fmt"
	"path"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// Subvolumes (format 1.7; the layout is in engine/format/subvol.go).
//
// A subvolume is made by CreateSubvol as a directory whose inode, and the
// inode of everything later made beneath it, carries the subvolume's id in
// its top bits. It is an ordinary directory to every other operation, with
// the btrfs rules at its edges: a rename or a hard link from one
// subvolume into another is EXDEV (a copy is what moves data between
// them; reflinks may share it), and rmdir of a subvolume's root is EPERM
// (DeleteSubvol deletes it).
//
// Deletion (the btrfs and bcachefs design) returns at once: one
// transaction removes the root's entry, marks the item SubvolDeleting and
// sets recovery pass subvol_reap in the superblock. A background reaper
// then frees the subvolume's inodes, a batch per transaction, recording in
// the item where it goes on; its last transaction removes the item and the
// UUIDs and clears the pass. A crash leaves the pass set, so the next
// mount finishes the work. The reaper runs only while some deletion is
// under way. An inode still open when its turn comes goes to the deleted
// list, as an unlinked open file does, and is freed at its last close.

// SubvolInfo describes a subvolume.
type SubvolInfo struct {
	ID uint64 `json:"id"`
	// Path is the root's path from the top level ("/a/b"); empty while
	// the subvolume is being deleted.
	Path         string    `json:"path"`
	RootIno      uint64    `json:"root_ino"`
	UUID         string    `json:"uuid"`
	ParentUUID   string    `json:"parent_uuid,omitempty"`
	ReceivedUUID string    `json:"received_uuid,omitempty"`
	Generation   uint64    `json:"generation"` // the commit that created it
	CTime        time.Time `json:"ctime"`
	ReadOnly     bool      `json:"readonly"`
	Deleting     bool      `json:"deleting,omitempty"`
	// Filling: a snapshot whose fill is under way (snapshot.go).
	Filling bool `json:"filling,omitempty"`
}

// Errors of the subvolume calls (each also an errno for the mount).
var (
	ErrNoSubvols = fmt.Errorf("the image's format predates subvolumes (1.7): upgrade it first (scrubd upgrade IMAGE, or mount --version-upgrade incompatible): %w", syscall.EOPNOTSUPP)
	ErrNotSubvol = fmt.Errorf("not a subvolume: %w", syscall.EINVAL)
	// ErrSubvolBusy: a subvolume holding other subvolumes is not deleted
	// (as btrfs): delete those first.
	ErrSubvolBusy   = fmt.Errorf("the subvolume holds other subvolumes: delete them first: %w", syscall.ENOTEMPTY)
	ErrNoSuchSubvol = fmt.Errorf("no such subvolume: %w", syscall.ENOENT)
	ErrSubvolIDs    = fmt.Errorf("no subvolume id left: %w", syscall.ENOSPC)
)

// allocIno hands out the number of a new inode made in directory dir: in
// dir's subvolume.
func allocIno(tx *engine.Tx, dir uint64) (uint64, error) {
	if tx.PeekObjectID() >= 1<<format.SubvolShift {
		return 0, syscall.ENOSPC
	}
	return format.SubvolIno(format.SubvolOf(dir), tx.NextObjectID()), nil
}

// probeNewInode reads the inode tree's path to where a new inode made in
// dir goes, so that damage there fails the create before it changes
// anything instead of the transaction after it has.
func probeNewInode(tx *engine.Tx, dir uint64) error {
	tr, _ := tx.ReadTree(format.TreeInode)
	_, _, err := tr.Get(format.InodeKey(format.SubvolIno(format.SubvolOf(dir), tx.PeekObjectID())), nil)
	return err
}

// crossSubvol reports whether a name moving from a to b (both
// directories) would cross a subvolume's edge.
func crossSubvol(a, b uint64) bool { return format.SubvolOf(a) != format.SubvolOf(b) }

func getSubvol(tx *engine.Tx, id uint64) (*format.SubvolItem, bool, error) {
	tr, _ := tx.ReadTree(format.TreeSubvol)
	v, ok, err := tr.Get(format.SubvolKey(id), nil)
	if err != nil || !ok {
		return nil, false, err
	}
	it, err := format.DecodeSubvolItem(v)
	if err != nil {
		return nil, false, fmt.Errorf("subvolume %d: %w", id, err)
	}
	return it, true, nil
}

func putSubvol(tx *engine.Tx, id uint64, it *format.SubvolItem) error {
	tr, err := tx.Tree(format.TreeSubvol)
	if err != nil {
		return err
	}
	return tr.Put(format.SubvolKey(id), it.Encode())
}

// probeUUIDs reads the uuid tree's paths to subvolume id's keys (it as
// it is: the keys putUUIDs adds or removes), so that damage there fails a
// change before it has changed anything.
func probeUUIDs(tx *engine.Tx, id uint64, it *format.SubvolItem) error {
	tr, _ := tx.ReadTree(format.TreeUUID)
	keys := []format.Key{format.UUIDKey(it.UUID, format.TypeUUIDSubvol, id)}
	if !it.ReceivedUUID.IsZero() {
		keys = append(keys, format.UUIDKey(it.ReceivedUUID, format.TypeUUIDReceived, id))
	}
	for _, k := range keys {
		if _, _, err := tr.Get(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// putUUIDs adds (or with del removes) the uuid tree's keys of subvolume
// id.
func putUUIDs(tx *engine.Tx, id uint64, it *format.SubvolItem, del bool) error {
	tr, err := tx.Tree(format.TreeUUID)
	if err != nil {
		return err
	}
	keys := []format.Key{format.UUIDKey(it.UUID, format.TypeUUIDSubvol, id)}
	if !it.ReceivedUUID.IsZero() {
		keys = append(keys, format.UUIDKey(it.ReceivedUUID, format.TypeUUIDReceived, id))
	}
	for _, k := range keys {
		if del {
			if _, err := tr.Delete(k); err != nil {
				return err
			}
		} else if err := tr.Put(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// nextSubvolID is one more than the largest id in use (ids are reused
// only once a deleted subvolume is wholly gone, with its inodes).
func nextSubvolID(tx *engine.Tx) (uint64, error) {
	tr, _ := tx.ReadTree(format.TreeSubvol)
	last := uint64(0)
	err := tr.Descend(format.MaxKey, func(k format.Key, _ []byte) bool {
		if k.Type != format.TypeSubvolItem {
			return true
		}
		last = k.Obj
		return false
	})
	if err != nil {
		return 0, err
	}
	if last >= format.MaxSubvolID {
		return 0, ErrSubvolIDs
	}
	return last + 1, nil
}

func newUUID() format.UUID {
	var u format.UUID
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}

// CreateSubvol makes an empty subvolume called name in directory dir.
func (f *FS) CreateSubvol(dir uint64, name string) (SubvolInfo, error) {
	if err := checkName(name); err != nil {
		return SubvolInfo{}, err
	}
	if !f.e.HasFeatures(0, format.IncompatSubvols) {
		return SubvolInfo{}, ErrNoSubvols
	}
	if err := f.writable(dir); err != nil {
		return SubvolInfo{}, err
	}
	if err := f.prepare(dir); err != nil {
		return SubvolInfo{}, errno(err)
	}
	var info SubvolInfo
	var gen format.Gen
	err := f.e.Update(func(tx *engine.Tx) error {
		din, err := newEntryDir(tx, dir, name)
		if err != nil {
			return err
		}
		id, err := nextSubvolID(tx)
		if err != nil {
			return err
		}
		now := time.Now()
		it := &format.SubvolItem{CTransID: uint64(tx.Gen()), UUID: newUUID(), CTime: ts(now)}
		if err := probeUUIDs(tx, id, it); err != nil {
			return err
		}
		ino := format.SubvolRootIno(id)
		in := &format.InodeItem{Mode: syscall.S_IFDIR | 0o755, UID: din.UID, GID: din.GID, Nlink: 2, Parent: dir, NextIndex: 2,
			Generation: uint64(tx.Gen()), Atime: ts(now), Mtime: ts(now), Ctime: ts(now), Btime: ts(now)}
		if err := putInode(tx, ino, in); err != nil {
			return err
		}
		if err := linkSubvol(tx, dir, din, name, id, it, in.Mode, now); err != nil {
			return err
		}
		info, gen = subvolInfo(id, it), tx.Gen()
		return nil
	})
	if err != nil {
		return SubvolInfo{}, errno(f.dirDamage(err))
	}
	f.markFull(dir, gen)
	f.markFull(info.RootIno, gen)
	info.Path, _ = f.dirPath(dir, name)
	return info, nil
}

// linkSubvol names subvolume id's root (a directory of mode) name in
// directory dir (din, its inode), and stores the subvolume's item and
// UUID keys.
func linkSubvol(tx *engine.Tx, dir uint64, din *format.InodeItem, name string, id uint64, it *format.SubvolItem, mode uint32, now time.Time) error {
	if err := addEntry(tx, dir, din, name, format.SubvolRootIno(id), mode); err != nil {
		return err
	}
	din.Nlink++
	din.Mtime, din.Ctime = ts(now), ts(now)
	if err := putInode(tx, dir, din); err != nil {
		return err
	}
	if err := putSubvol(tx, id, it); err != nil {
		return err
	}
	return putUUIDs(tx, id, it, false)
}

func subvolInfo(id uint64, it *format.SubvolItem) SubvolInfo {
	s := SubvolInfo{ID: id, RootIno: format.SubvolRootIno(id), UUID: it.UUID.String(), Generation: it.CTransID,
		CTime:    time.Unix(it.CTime.Sec, int64(it.CTime.Nsec)),
		ReadOnly: it.Flags&format.SubvolReadOnly != 0, Deleting: it.Flags&format.SubvolDeleting != 0,
		Filling: it.Flags&format.SubvolFilling != 0}
	if !it.ParentUUID.IsZero() {
		s.ParentUUID = it.ParentUUID.String()
	}
	if !it.ReceivedUUID.IsZero() {
		s.ReceivedUUID = it.ReceivedUUID.String()
	}
	return s
}

// Subvols lists every subvolume by id, with paths.
func (f *FS) Subvols() ([]SubvolInfo, error) {
	var out []SubvolInfo
	err := f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeSubvol)
		var derr error
		err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeSubvolItem {
				return true
			}
			it, err := format.DecodeSubvolItem(v)
			if err != nil {
				derr = fmt.Errorf("subvolume %d: %w", k.Obj, err)
				return false
			}
			s := subvolInfo(k.Obj, it)
			if _, ok := f.snap.fillOf(k.Obj); ok {
				s.Filling = true
			}
			out = append(out, s)
			return true
		})
		if err != nil {
			return err
		}
		if derr != nil {
			return derr
		}
		return paths(tx, out)
	})
	return out, errno(f.dirDamage(err))
}

// paths fills in the paths of the live subvolumes in infos, reading each
// parent directory once (many subvolumes often share one).
func paths(tx *engine.Tx, infos []SubvolInfo) error {
	pc := pathCache{tx: tx, dirs: map[uint64]string{RootIno: "/"}, names: map[uint64]map[uint64]string{}}
	for i := range infos {
		if infos[i].Deleting {
			continue
		}
		p, err := pc.path(infos[i].RootIno)
		if err != nil {
			return err
		}
		infos[i].Path = p
	}
	return nil
}

// pathCache resolves directories to paths through their Parent links,
// listing each parent's entries at most once.
type pathCache struct {
	tx    *engine.Tx
	dirs  map[uint64]string            // directory → path
	names map[uint64]map[uint64]string // parent → child directory → name
}

func (pc *pathCache) path(dir uint64) (string, error) {
	var chain []uint64
	for d := dir; ; {
		if p, ok := pc.dirs[d]; ok {
			for i := len(chain) - 1; i >= 0; i-- {
				in, err := mustInode(pc.tx, chain[i])
				if err != nil {
					return "", err
				}
				name, err := pc.name(in.Parent, chain[i])
				if err != nil {
					return "", err
				}
				p = path.Join(p, name)
				pc.dirs[chain[i]] = p
			}
			return p, nil
		}
		if len(chain) > 4096 {
			return "", fmt.Errorf("directory %d: its parents loop: %w", dir, format.ErrCorrupt)
		}
		chain = append(chain, d)
		in, err := mustInode(pc.tx, d)
		if err != nil {
			return "", err
		}
		if in.Nlink == 0 {
			return "", syscall.ENOENT
		}
		d = in.Parent
	}
}

func (pc *pathCache) name(parent, child uint64) (string, error) {
	m, ok := pc.names[parent]
	if !ok {
		m = map[uint64]string{}
		tr, _ := pc.tx.ReadTree(format.TreeDir)
		var derr error
		err := tr.Ascend(format.Key{Obj: parent, Type: format.TypeDirIndex}, func(k format.Key, v []byte) bool {
			if k.Obj != parent || k.Type != format.TypeDirIndex {
				return false
			}
			de, err := format.DecodeDirEntry(v)
			if err != nil {
				derr = err
				return false
			}
			if de.Type == fileType(syscall.S_IFDIR) {
				m[de.Ino] = de.Name
			}
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return "", err
		}
		pc.names[parent] = m
	}
	n, ok := m[child]
	if !ok {
		return "", fmt.Errorf("directory %d: not named in its parent %d: %w", child, parent, format.ErrCorrupt)
	}
	return n, nil
}

// dirPath is the path of name in dir.
func (f *FS) dirPath(dir uint64, name string) (string, error) {
	var p string
	err := f.e.View(func(tx *engine.Tx) error {
		pc := pathCache{tx: tx, dirs: map[uint64]string{RootIno: "/"}, names: map[uint64]map[uint64]string{}}
		d, err := pc.path(dir)
		p = path.Join(d, name)
		return err
	})
	return p, err
}

// Subvol describes subvolume id.
func (f *FS) Subvol(id uint64) (SubvolInfo, error) {
	var info SubvolInfo
	err := f.e.View(func(tx *engine.Tx) error {
		it, ok, err := getSubvol(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNoSuchSubvol
		}
		infos := []SubvolInfo{subvolInfo(id, it)}
		if _, ok := f.snap.fillOf(id); ok {
			infos[0].Filling = true
		}
		if err := paths(tx, infos); err != nil {
			return err
		}
		info = infos[0]
		return nil
	})
	return info, errno(f.dirDamage(err))
}

// SubvolOf returns the subvolume inode ino belongs to (0: the top level,
// which has no item).
func SubvolOf(ino uint64) uint64 { return format.SubvolOf(ino) }

// FindSubvols returns the ids of the subvolumes whose UUID, or received
// UUID, is u: one descent of the uuid tree for each.
func (f *FS) FindSubvols(u format.UUID) (own, received []uint64, err error) {
	err = f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeUUID)
		for _, typ := range []uint8{format.TypeUUIDSubvol, format.TypeUUIDReceived} {
			from := format.UUIDKey(u, typ, 0)
			err := tr.Ascend(from, func(k format.Key, _ []byte) bool {
				if k.Obj != from.Obj || k.Type != typ || k.Off != from.Off {
					return false
				}
				if typ == format.TypeUUIDSubvol {
					own = append(own, k.Aux)
				} else {
					received = append(received, k.Aux)
				}
				return true
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return own, received, errno(err)
}

// ScanSubvols answers FindSubvols by reading every subvolume item (what
// a lookup costs without the uuid tree; the benchmark's baseline, and
// the scrub's cross-check).
func (f *FS) ScanSubvols(u format.UUID) (own, received []uint64, err error) {
	err = f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeSubvol)
		var derr error
		err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeSubvolItem {
				return true
			}
			it, err := format.DecodeSubvolItem(v)
			if err != nil {
				derr = err
				return false
			}
			if it.UUID == u {
				own = append(own, k.Obj)
			}
			if it.ReceivedUUID == u {
				received = append(received, k.Obj)
			}
			return true
		})
		if err == nil {
			err = derr
		}
		return err
	})
	return own, received, errno(err)
}

// SetReceivedUUID sets (zero: clears) subvolume id's received UUID and
// its uuid tree key.
func (f *FS) SetReceivedUUID(id uint64, u format.UUID) error {
	err := f.e.Update(func(tx *engine.Tx) error {
		it, ok, err := getSubvol(tx, id)
		if err != nil {
			return err
		}
		if !ok || it.Flags&format.SubvolDeleting != 0 {
			return ErrNoSuchSubvol
		}
		if it.ReceivedUUID == u {
			return nil
		}
		next := *it
		next.ReceivedUUID = u
		for _, x := range []*format.SubvolItem{it, &next} {
			if err := probeUUIDs(tx, id, x); err != nil {
				return err
			}
		}
		if err := putUUIDs(tx, id, it, true); err != nil {
			return err
		}
		it.ReceivedUUID = u
		if err := putUUIDs(tx, id, it, false); err != nil {
			return err
		}
		return putSubvol(tx, id, it)
	})
	return errno(f.dirDamage(err))
}

// DeleteSubvol deletes the subvolume whose root is name in dir: the name
// goes at once, the contents in the background (see the top of this
// file). A subvolume holding other subvolumes is refused
// (ErrSubvolBusy).
func (f *FS) DeleteSubvol(dir uint64, name string) (SubvolInfo, error) {
	if err := f.writable(dir); err != nil {
		return SubvolInfo{}, err
	}
	if err := f.prepare(dir); err != nil {
		return SubvolInfo{}, errno(err)
	}
	var info SubvolInfo
	var gen format.Gen
	filling := false
	err := f.e.Update(func(tx *engine.Tx) error {
		din, err := mustInode(tx, dir)
		if err != nil {
			return err
		}
		if !isDir(din) {
			return syscall.ENOTDIR
		}
		de, key, in, err := mustEntry(tx, dir, name)
		if err != nil {
			return err
		}
		if !format.IsSubvolRoot(de.Ino) {
			return ErrNotSubvol
		}
		id := format.SubvolOf(de.Ino)
		it, ok, err := getSubvol(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("subvolume %d: its root is linked but it has no item: %w", id, format.ErrCorrupt)
		}
		if busy, err := holdsSubvols(tx, id); err != nil {
			return err
		} else if busy {
			return ErrSubvolBusy
		}
		if len(f.snap.sourceFills(id)) > 0 {
			return ErrSnapSource
		}
		if err := probeDir(tx, format.DirIndexKey(dir, de.Index)); err != nil {
			return err
		}
		if err := removeEntry(tx, dir, key, de); err != nil {
			return err
		}
		now := ts(time.Now())
		din.Nlink--
		din.Mtime, din.Ctime = now, now
		if err := putInode(tx, dir, din); err != nil {
			return err
		}
		in.Nlink, in.Ctime = 0, now
		if err := putInode(tx, de.Ino, in); err != nil {
			return err
		}
		it.Flags = it.Flags&^format.SubvolFilling | format.SubvolDeleting
		it.ReapNext = format.SubvolIno(id, 0)
		if err := putSubvol(tx, id, it); err != nil {
			return err
		}
		if _, filling = f.snap.fillOf(id); filling {
			// What it has not copied is never needed now.
			if err := f.dropFill(tx, id); err != nil {
				return err
			}
			f.unregisterFill(id, tx.Gen())
		}
		tx.RequirePass(engine.PassSubvolReap)
		info, gen = subvolInfo(id, it), tx.Gen()
		return nil
	})
	if err != nil {
		return SubvolInfo{}, errno(f.dirDamage(err))
	}
	f.setReadOnly(info.ID, false)
	f.markFull(dir, gen)
	f.startReaper()
	return info, nil
}

// holdsSubvols reports whether a live subvolume's root is linked inside
// subvolume id.
func holdsSubvols(tx *engine.Tx, id uint64) (bool, error) {
	tr, _ := tx.ReadTree(format.TreeSubvol)
	var ids []uint64
	err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type == format.TypeSubvolItem && k.Obj != id {
			if it, err := format.DecodeSubvolItem(v); err == nil && it.Flags&format.SubvolDeleting == 0 {
				ids = append(ids, k.Obj)
			}
		}
		return true
	})
	if err != nil {
		return false, err
	}
	for _, o := range ids {
		in, ok, err := getInode(tx, format.SubvolRootIno(o))
		if err != nil {
			return false, err
		}
		if ok && format.SubvolOf(in.Parent) == id {
			return true, nil
		}
	}
	return false, nil
}

// startReaper runs the reaper in the background unless it runs already.
func (f *FS) startReaper() { f.reaper.start(f.e.Logger()) }

// reapBatch bounds the inodes one reaper transaction frees (a variable for
// the tests).
var reapBatch = 64

// reapCommitEvery is how many reaper transactions go into one commit.
var reapCommitEvery = 64

// reap frees the inodes of every subvolume being deleted, then the
// subvolume items and UUIDs, and clears pass subvol_reap. It is the pass
// too (Options.SubvolReap), with e the engine being mounted.
func (f *FS) reap(ctx context.Context, e *engine.Engine) error {
	waiting := map[uint64]bool{}
	for steps := 1; ; steps++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		done := false
		err := e.Update(func(tx *engine.Tx) error {
			var err error
			done, err = f.reapStep(tx, waiting)
			return err
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if steps%reapCommitEvery == 0 {
			// What is freed becomes allocatable only once committed, and
			// the progress recorded durable: a long deletion commits as it
			// goes rather than waiting for the commit interval.
			if err := e.Sync(); err != nil {
				return err
			}
		}
	}
}

// reapStep frees up to reapBatch inodes of the first subvolume being
// deleted that is not waiting, or finishes it; done reports that none is
// left to work on. A subvolume whose only inodes left are open (on the
// deleted list) waits: its item stays until they are freed — at their
// last close, which starts the reaper again, or by the next mount's
// deleted_inodes pass — so no inode is ever left in a subvolume without
// an item, and the pass stays required meanwhile.
func (f *FS) reapStep(tx *engine.Tx, waiting map[uint64]bool) (done bool, err error) {
	tr, _ := tx.ReadTree(format.TreeSubvol)
	var id uint64
	var it *format.SubvolItem
	var derr error
	deleting := false
	if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeSubvolItem {
			return true
		}
		s, err := format.DecodeSubvolItem(v)
		if err != nil {
			derr = fmt.Errorf("subvolume %d: %w", k.Obj, err)
			return false
		}
		if s.Flags&format.SubvolDeleting != 0 {
			deleting = true
			if !waiting[k.Obj] {
				id, it = k.Obj, s
				return false
			}
		}
		return true
	}); err != nil {
		return false, err
	}
	if derr != nil {
		return false, derr
	}
	if it == nil {
		if !deleting {
			tx.ClearPass(engine.PassSubvolReap)
		}
		return true, nil
	}
	// The next inodes of the subvolume, from where the last step ended.
	itr, _ := tx.ReadTree(format.TreeInode)
	end := format.SubvolIno(id+1, 0)
	var inos []uint64
	if err := itr.Ascend(format.InodeKey(max(it.ReapNext, format.SubvolIno(id, 0))), func(k format.Key, _ []byte) bool {
		if k.Obj >= end || len(inos) == reapBatch {
			return false
		}
		if k.Type == format.TypeInodeItem {
			inos = append(inos, k.Obj)
		}
		return true
	}); err != nil {
		return false, err
	}
	if len(inos) == 0 {
		// Inodes left behind the position are open ones, on the deleted
		// list: the subvolume waits for them.
		left := false
		if err := itr.Ascend(format.InodeKey(format.SubvolIno(id, 0)), func(k format.Key, _ []byte) bool {
			left = k.Obj < end
			return false
		}); err != nil {
			return false, err
		}
		if left {
			waiting[id] = true
			return false, nil
		}
		// Everything is freed: the subvolume goes.
		if err := probeUUIDs(tx, id, it); err != nil {
			return false, err
		}
		if err := putUUIDs(tx, id, it, true); err != nil {
			return false, err
		}
		str, err := tx.Tree(format.TreeSubvol)
		if err != nil {
			return false, err
		}
		if _, err := str.Delete(format.SubvolKey(id)); err != nil {
			return false, err
		}
		return false, nil
	}
	// Damage where the batch's changes go fails the step before anything
	// changes (the pass then waits for a repair).
	for _, ino := range inos {
		in, ok, err := getInode(tx, ino)
		if err != nil {
			return false, err
		}
		if ok && isReg(in) {
			if err := f.probeExtents(tx, ino, 0, ^uint64(0)>>12); err != nil {
				return false, err
			}
		}
	}
	for _, ino := range inos {
		if err := f.reapInode(tx, ino); err != nil {
			return false, err
		}
	}
	it.ReapNext = inos[len(inos)-1] + 1
	return false, putSubvol(tx, id, it)
}

// reapInode frees one inode of a deleted subvolume: its directory items
// if a directory, everything else as the last unlink would; an inode
// still open goes to the deleted list instead.
func (f *FS) reapInode(tx *engine.Tx, ino uint64) error {
	in, ok, err := getInode(tx, ino)
	if err != nil || !ok {
		return err
	}
	if isDir(in) {
		if err := dropDirItems(tx, ino); err != nil {
			return err
		}
	}
	f.mu.Lock()
	open := f.opens[ino] > 0
	f.mu.Unlock()
	if open && in.Nlink > 0 {
		in.Nlink = 0
		if err := putInode(tx, ino, in); err != nil {
			return err
		}
		dtr, err := tx.Tree(format.TreeDeleted)
		if err != nil {
			return err
		}
		if err := dtr.Put(format.DeletedKey(ino), nil); err != nil && !tx.DeletedDamaged(err) {
			return err
		}
		return nil
	}
	if open {
		return nil // on the deleted list already: its last close frees it
	}
	if in.Nlink == 0 {
		if err := unmarkDeleted(tx, ino); err != nil {
			return err
		}
	}
	return f.freeInode(tx, ino, in)
}

// dropDirItems removes every entry item of directory dir (the entries'
// inodes are the reaper's, in the same subvolume).
func dropDirItems(tx *engine.Tx, dir uint64) error {
	tr, err := tx.Tree(format.TreeDir)
	if err != nil {
		return err
	}
	var keys []format.Key
	var ents []format.DirEntry
	if err := tr.Ascend(format.Key{Obj: dir}, func(k format.Key, v []byte) bool {
		if k.Obj != dir {
			return false
		}
		if k.Type == format.TypeDirEntry {
			if de, err := format.DecodeDirEntry(v); err == nil {
				ents = append(ents, de)
			}
		}
		keys = append(keys, k)
		return true
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := tr.Delete(k); err != nil {
			return err
		}
	}
	for _, de := range ents {
		tx.Hooks().Dirent.Call(engine.DirentEvent{Gen: tx.Gen(), Op: engine.OpDelete, Dir: dir, Entry: de})
	}
	return nil
}

// stopReaper stops a running reaper and waits for it (Close): the work
// left stays recorded for the next mount.
func (f *FS) stopReaper() { f.reaper.stop() }

// WaitReaper waits until the background reaper, if one runs, has nothing
// left to do. Any number of callers may wait, while deletions start
// others.
func (f *FS) WaitReaper() { f.reaper.wait() }

// reapPending reports whether a deletion is under way (read at open, to
// restart the reaper on a mount that skipped the pass).
func (f *FS) reapPending() bool {
	pending := false
	f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeSubvol)
		return tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type == format.TypeSubvolItem {
				if it, err := format.DecodeSubvolItem(v); err == nil && it.Flags&format.SubvolDeleting != 0 {
					pending = true
					return false
				}
			}
			return true
		})
	})
	return pending
}
