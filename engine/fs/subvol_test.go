package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TestSubvolBasics: a subvolume is a directory with its own inode space,
// listed with its UUID, found by it; the btrfs rules hold at its edges;
// a deletion returns at once, the reaper frees everything, and the
// image checks clean at every step and after a remount.
func TestSubvolBasics(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	sv, err := f.CreateSubvol(RootIno, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if sv.ID != 1 || sv.Path != "/vol" || sv.RootIno != format.SubvolRootIno(1) || sv.UUID == "" || sv.Generation == 0 {
		t.Fatalf("created: %+v", sv)
	}
	if _, err := f.CreateSubvol(RootIno, "vol"); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("again: %v", err)
	}
	a, err := f.Lookup(RootIno, "vol")
	if err != nil || a.Ino != sv.RootIno || a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("lookup: %+v %v", a, err)
	}
	d, err := f.Mkdir(sv.RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatal(err)
	}
	fa, err := f.Create(d.Ino, "file", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if SubvolOf(d.Ino) != 1 || SubvolOf(fa.Ino) != 1 {
		t.Fatalf("inodes %#x %#x not in subvolume 1", d.Ino, fa.Ino)
	}
	data := bytes.Repeat([]byte("subvolume data "), 3000)
	if _, err := f.Write(fa.Ino, data, 0); err != nil {
		t.Fatal(err)
	}
	top, err := f.Create(RootIno, "top", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	// The edges: rename and link across are EXDEV, rmdir is EPERM; a
	// subvolume in a subvolume; renaming the root within its parent works.
	if err := f.Rename(d.Ino, "file", RootIno, "moved", 0); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename across: %v", err)
	}
	if err := f.Rename(RootIno, "top", d.Ino, "top", RenameExchange); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("exchange across: %v", err)
	}
	if _, err := f.Link(top.Ino, d.Ino, "link"); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("link across: %v", err)
	}
	if err := f.Rmdir(RootIno, "vol"); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("rmdir of a subvolume: %v", err)
	}
	if err := f.Rename(RootIno, "top", RootIno, "vol", 0); err == nil {
		t.Fatal("rename over a subvolume worked")
	}
	inner, err := f.CreateSubvol(d.Ino, "inner")
	if err != nil {
		t.Fatal(err)
	}
	if inner.Path != "/vol/d/inner" {
		t.Fatalf("inner: %+v", inner)
	}
	if err := f.Rename(RootIno, "vol", RootIno, "vol2", 0); err != nil {
		t.Fatal(err)
	}
	list, err := f.Subvols()
	if err != nil || len(list) != 2 || list[0].Path != "/vol2" || list[1].Path != "/vol2/d/inner" {
		t.Fatalf("list: %+v %v", list, err)
	}
	u, _ := format.ParseUUID(inner.UUID)
	own, recv, err := f.FindSubvols(u)
	if err != nil || !slices.Equal(own, []uint64{inner.ID}) || len(recv) != 0 {
		t.Fatalf("find: %v %v %v", own, recv, err)
	}
	ru, _ := format.ParseUUID("0123456789abcdef0123456789abcdef")
	if err := f.SetReceivedUUID(sv.ID, ru); err != nil {
		t.Fatal(err)
	}
	if err := f.SetReceivedUUID(inner.ID, ru); err != nil {
		t.Fatal(err)
	}
	if own, recv, err := f.FindSubvols(ru); err != nil || len(own) != 0 || !slices.Equal(recv, []uint64{sv.ID, inner.ID}) {
		t.Fatalf("find received: %v %v %v", own, recv, err)
	}
	if own, recv, err := f.ScanSubvols(ru); err != nil || len(own) != 0 || !slices.Equal(recv, []uint64{sv.ID, inner.ID}) {
		t.Fatalf("scan received: %v %v %v", own, recv, err)
	}
	mustClean(t, f)
	// A subvolume holding another is not deleted.
	if _, err := f.DeleteSubvol(RootIno, "vol2"); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("delete of a subvolume holding one: %v", err)
	}
	if _, err := f.DeleteSubvol(RootIno, "top"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("delete of a file: %v", err)
	}
	before := f.StatFS()
	if _, err := f.DeleteSubvol(d.Ino, "inner"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.DeleteSubvol(RootIno, "vol2"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Lookup(RootIno, "vol2"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup after delete: %v", err)
	}
	f.WaitReaper()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if list, err := f.Subvols(); err != nil || len(list) != 0 {
		t.Fatalf("after the reap: %+v %v", list, err)
	}
	if after := f.StatFS(); after.BlocksFree <= before.BlocksFree {
		t.Fatalf("free blocks %d before, %d after the reap", before.BlocksFree, after.BlocksFree)
	}
	if own, recv, _ := f.FindSubvols(ru); len(own)+len(recv) != 0 {
		t.Fatalf("uuids left: %v %v", own, recv)
	}
	if pin := f.Engine().Pin(); pin.Super().RecoveryPasses&(1<<engine.PassSubvolReap) != 0 {
		pin.Release()
		t.Fatal("pass subvol_reap still required")
	} else {
		pin.Release()
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	defer f.Close()
	if _, err := f.GetAttr(fa.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("a reaped inode: %v", err)
	}
	// Ids are reused once a subvolume is gone.
	if sv, err := f.CreateSubvol(RootIno, fmt.Sprint("again")); err != nil || sv.ID != 1 {
		t.Fatalf("again: %+v %v", sv, err)
	}
	mustClean(t, f)
}

// TestSubvolNeedsFormat17: an older image refuses subvolumes, saying how
// to upgrade.
func TestSubvolNeedsFormat17(t *testing.T) {
	dev := newDev(t)
	e, err := engine.Open(nopClose{dev}, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetFormatVersion(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	e.Close()
	f := mount(t, nopClose{dev}, Options{})
	defer f.Close()
	if _, err := f.CreateSubvol(RootIno, "v"); !errors.Is(err, ErrNoSubvols) || !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("create on 1.6: %v", err)
	}
}

// svState is what a crash test compares: the live subvolumes' paths and
// the content of every file in them.
type svState map[string]string

func svStateOf(t *testing.T, f *FS) svState {
	t.Helper()
	st := svState{}
	list, err := f.Subvols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Deleting {
			continue
		}
		st[s.Path] = "subvol"
		// Listed first, read after: fn runs inside ReadDir's view, and a
		// read there would take the writer lock shared a second time
		// (a writer waiting between the two would deadlock them).
		var files []DirEntry
		if err := f.ReadDir(s.RootIno, 0, func(de DirEntry) bool {
			if de.Mode&syscall.S_IFMT == syscall.S_IFREG {
				files = append(files, de)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		for _, de := range files {
			st[s.Path+"/"+de.Name] = string(fileBytes(t, f, de.Ino))
		}
	}
	return st
}

// strayInodes counts inodes of subvolumes that have no item.
func strayInodes(t *testing.T, f *FS) int {
	t.Helper()
	n := 0
	err := f.Engine().View(func(tx *engine.Tx) error {
		live := map[uint64]bool{0: true}
		str, _ := tx.ReadTree(format.TreeSubvol)
		if err := str.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			live[k.Obj] = true
			return true
		}); err != nil {
			return err
		}
		itr, _ := tx.ReadTree(format.TreeInode)
		return itr.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			if k.Type == format.TypeInodeItem && !live[format.SubvolOf(k.Obj)] {
				n++
			}
			return true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSubvolCrashAtEveryFlush makes two subvolumes with files and deletes
// them (the reaper in small batches, so over many commits); at every
// flush boundary the crashed image must mount with the deletions under
// way finished by the mount's pass, hold a state no older than the last
// acknowledged one, check clean and keep no inode of a gone subvolume.
func TestSubvolCrashAtEveryFlush(t *testing.T) {
	defer func(b, c int) { reapBatch, reapCommitEvery = b, c }(reapBatch, reapCommitEvery)
	reapBatch, reapCommitEvery = 2, 1
	rec := disk.NewRecorder(smallDev(t).Bytes())
	f := mount(t, nopClose{rec}, Options{})
	keep, err := f.Create(RootIno, "keep", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(keep.Ino, bytes.Repeat([]byte("k"), 3*bs), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	states := []svState{{}}
	acks := []crashAck{{rec.Flushes(), 0}}
	r := rand.New(rand.NewPCG(31, 7))
	fill := func(sv SubvolInfo, files int) {
		d, err := f.Mkdir(sv.RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < files; i++ {
			dir := sv.RootIno
			if i%2 == 1 {
				dir = d.Ino
			}
			a, err := f.Create(dir, fmt.Sprint("f", i), NewInode{Mode: syscall.S_IFREG | 0o644})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(a.Ino, randBytes(r, 1+r.IntN(3*bs)), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	record := func(fsync bool) {
		if fsync {
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		states = append(states, svStateOf(t, f))
		if fsync {
			acks = append(acks, crashAck{rec.Flushes(), len(states) - 1})
		}
	}
	a, err := f.CreateSubvol(RootIno, "a")
	if err != nil {
		t.Fatal(err)
	}
	record(false)
	fill(a, 9)
	record(true)
	b, err := f.CreateSubvol(RootIno, "b")
	if err != nil {
		t.Fatal(err)
	}
	fill(b, 4)
	record(true)
	if _, err := f.DeleteSubvol(RootIno, "a"); err != nil {
		t.Fatal(err)
	}
	record(false)
	f.WaitReaper()
	record(true)
	if _, err := f.DeleteSubvol(RootIno, "b"); err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	record(true)
	rng := rand.New(rand.NewPCG(31, 8))
	stride := 1
	if testing.Short() || raceEnabled {
		stride = 3
	}
	t.Logf("%d flushes, %d states", rec.Flushes(), len(states))
	resumed := 0
	for pi, k := range crashPoints(rec.Flushes(), 31) {
		if k < acks[0].flush || (pi%stride != 0 && k != rec.Flushes()) {
			continue
		}
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d %v", k, mode)
			img := rec.CrashImage(k, mode, rng)
			ro, err := Open(disk.NewMemFrom(slices.Clone(img)), Options{ReadOnly: true})
			if err != nil {
				t.Fatalf("%s: read-only mount: %v", name, err)
			}
			if ro.reapPending() {
				resumed++
			}
			ro.Close()
			cf, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			if cf.reapPending() {
				t.Fatalf("%s: a deletion left after the mount", name)
			}
			got := svStateOf(t, cf)
			ok := false
			for _, s := range states[lastAcked(acks, k):] {
				ok = ok || maps.Equal(got, s)
			}
			if !ok {
				t.Fatalf("%s: state %v matches none at or after the acknowledged one", name, slices.Sorted(maps.Keys(got)))
			}
			if n := strayInodes(t, cf); n > 0 {
				t.Fatalf("%s: %d inodes of gone subvolumes", name, n)
			}
			if got := fileBytes(t, cf, keep.Ino); len(got) != 3*bs {
				t.Fatalf("%s: keep has %d bytes", name, len(got))
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
	if resumed == 0 {
		t.Fatal("no crash image had a deletion under way: the mount's pass was never tested")
	}
	t.Logf("%d crash images had a deletion under way", resumed)
	if n := strayInodes(t, f); n > 0 {
		t.Fatalf("%d inodes of gone subvolumes", n)
	}
	mustClean(t, f)
	f.Close()
}

// TestSubvolDeleteWhileOpen: a file open in a deleted subvolume stays
// readable; the subvolume waits for it (its item stays, so no inode is
// ever in a subvolume without one) and goes at its last close, or, if
// the filesystem is closed first, at the next mount.
func TestSubvolDeleteWhileOpen(t *testing.T) {
	for _, closeFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("unmount first ", closeFirst), func(t *testing.T) {
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			sv, err := f.CreateSubvol(RootIno, "v")
			if err != nil {
				t.Fatal(err)
			}
			a, err := f.Create(sv.RootIno, "open", NewInode{Mode: syscall.S_IFREG | 0o644})
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte("still here "), 1000)
			if _, err := f.Write(a.Ino, data, 0); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				if _, err := f.Create(sv.RootIno, fmt.Sprint("f", i), NewInode{Mode: syscall.S_IFREG | 0o644}); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Open(a.Ino); err != nil {
				t.Fatal(err)
			}
			if _, err := f.DeleteSubvol(RootIno, "v"); err != nil {
				t.Fatal(err)
			}
			f.WaitReaper()
			if got := fileBytes(t, f, a.Ino); !bytes.Equal(got, data) {
				t.Fatal("the open file changed")
			}
			list, err := f.Subvols()
			if err != nil || len(list) != 1 || !list[0].Deleting {
				t.Fatalf("while the file is open: %+v %v", list, err)
			}
			if n := strayInodes(t, f); n != 0 {
				t.Fatalf("%d stray inodes", n)
			}
			if closeFirst {
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				f = mount(t, nopClose{dev}, Options{})
			} else if err := f.Release(a.Ino); err != nil {
				t.Fatal(err)
			}
			f.WaitReaper()
			if list, err := f.Subvols(); err != nil || len(list) != 0 {
				t.Fatalf("after the close: %+v %v", list, err)
			}
			if f.Engine().PassRequired(engine.PassSubvolReap) {
				t.Fatal("pass subvol_reap still required")
			}
			if n := strayInodes(t, f); n != 0 {
				t.Fatalf("%d stray inodes", n)
			}
			mustClean(t, f)
			f.Close()
		})
	}
}

// TestSubvolAdopt: an orphan of a subvolume is adopted into the
// subvolume's own lost+found (made in its root), never across the edge.
func TestSubvolAdopt(t *testing.T) {
	f := mount(t, newDev(t), Options{})
	defer f.Close()
	sv, err := f.CreateSubvol(RootIno, "vol")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(sv.RootIno, "orphan", NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Engine().Update(func(tx *engine.Tx) error {
		de, key, _, err := mustEntry(tx, sv.RootIno, "orphan")
		if err != nil {
			return err
		}
		return removeEntry(tx, sv.RootIno, key, de)
	}); err != nil {
		t.Fatal(err)
	}
	p, err := f.Adopt(a.Ino)
	if err != nil || p != fmt.Sprintf("/vol/%s/#%d", LostFoundName, a.Ino) {
		t.Fatalf("adopt: %q %v", p, err)
	}
	lf, err := f.Lookup(sv.RootIno, LostFoundName)
	if err != nil || SubvolOf(lf.Ino) != sv.ID {
		t.Fatalf("the subvolume's lost+found: %+v %v", lf, err)
	}
	if got, err := f.Resolve(p); err != nil || got.Ino != a.Ino {
		t.Fatalf("resolve %s: %+v %v", p, got, err)
	}
	if _, err := f.Lookup(RootIno, LostFoundName); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("a top-level lost+found: %v", err)
	}
	mustClean(t, f)
}
