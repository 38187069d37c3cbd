package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// manualFill keeps the filler from starting for the test, with batches
// of n inodes.
func manualFill(t *testing.T, n int) {
	t.Helper()
	auto, batch := fillAuto, fillBatch
	fillAuto, fillBatch = false, n
	t.Cleanup(func() { fillAuto, fillBatch = auto, batch })
}

func mustCreate(t *testing.T, f *FS, dir uint64, name string, data []byte) Attr {
	t.Helper()
	a, err := f.Create(dir, name, NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 {
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func readPath(t *testing.T, f *FS, path string) []byte {
	t.Helper()
	a, err := f.Resolve(path)
	if err != nil {
		t.Fatalf("resolve %s: %v", path, err)
	}
	p := make([]byte, a.Size)
	n, err := f.Read(a.Ino, p, 0)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return p[:n]
}

// TestSnapshotBasics: a snapshot reads as its source was when it was
// taken, while its fill is under way and after; changes on either side
// stay on that side; a read-only snapshot refuses changes; the image
// checks clean at every step and after a remount.
func TestSnapshotBasics(t *testing.T) {
	manualFill(t, 2)
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	sv, err := f.CreateSubvol(RootIno, "vol")
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.Mkdir(sv.RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatal(err)
	}
	one := bytes.Repeat([]byte("one "), 5000)
	two := bytes.Repeat([]byte("two "), 3000)
	a := mustCreate(t, f, d.Ino, "a", one)
	mustCreate(t, f, sv.RootIno, "b", two)
	if _, err := f.Link(a.Ino, sv.RootIno, "a-link"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Symlink(d.Ino, "sym", "../b", NewInode{Mode: syscall.S_IFLNK | 0o777}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetXattr(a.Ino, "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		mustCreate(t, f, d.Ino, string(rune('m'+i)), []byte{byte(i)})
	}
	mustClean(t, f)
	free0 := f.StatFS().BlocksFree

	snap, err := f.CreateSnapshot(sv.RootIno, RootIno, "snap", false)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Filling || snap.Path != "/snap" || snap.ParentUUID != sv.UUID {
		t.Fatalf("snapshot: %+v", snap)
	}
	if _, err := f.CreateSnapshot(snap.RootIno, RootIno, "snap2", false); !errors.Is(err, ErrSnapFilling) {
		t.Fatalf("snapshot of a snapshot being filled: %v", err)
	}
	if _, err := f.DeleteSubvol(RootIno, "vol"); !errors.Is(err, ErrSnapSource) {
		t.Fatalf("delete of a source: %v", err)
	}
	mustClean(t, f)

	// The source changes before the snapshot read anything.
	if _, err := f.Write(a.Ino, []byte("CHANGED"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(sv.RootIno, "b"); err != nil {
		t.Fatal(err)
	}
	if err := f.Rename(d.Ino, "m", sv.RootIno, "m-moved", 0); err != nil {
		t.Fatal(err)
	}
	if err := f.SetXattr(a.Ino, "user.k", []byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, f, d.Ino, "new-in-source", []byte("x"))
	mustClean(t, f)

	// The snapshot, mid-fill, is the source as it was.
	if got := readPath(t, f, "/snap/d/a"); !bytes.Equal(got, one) {
		t.Fatalf("snapshot's a: %q…", got[:16])
	}
	if got := readPath(t, f, "/snap/b"); !bytes.Equal(got, two) {
		t.Fatal("snapshot's b differs")
	}
	if v, err := f.GetXattr(mustResolve(t, f, "/snap/d/a").Ino, "user.k"); err != nil || string(v) != "v" {
		t.Fatalf("snapshot's xattr: %q %v", v, err)
	}
	if _, err := f.Resolve("/snap/d/new-in-source"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("a file made after the snapshot: %v", err)
	}
	if _, err := f.Resolve("/snap/d/m"); err != nil {
		t.Fatalf("renamed after: %v", err)
	}
	if tg, err := f.Readlink(mustResolve(t, f, "/snap/d/sym").Ino); err != nil || tg != "../b" {
		t.Fatalf("symlink %q %v", tg, err)
	}
	if la := mustResolve(t, f, "/snap/a-link"); la.Nlink != 2 || la.Ino != mustResolve(t, f, "/snap/d/a").Ino {
		t.Fatalf("hard link in snapshot: %+v", la)
	}
	// The snapshot changes; the source does not see it.
	sa := mustResolve(t, f, "/snap/d/n")
	if _, err := f.Write(sa.Ino, []byte("snap side"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(mustResolve(t, f, "/snap/d").Ino, "o"); err != nil {
		t.Fatal(err)
	}
	if got := readPath(t, f, "/vol/d/n"); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("source's n: %q", got)
	}
	if _, err := f.Resolve("/vol/d/o"); err != nil {
		t.Fatalf("source's o: %v", err)
	}
	mustClean(t, f)

	// The fill ends.
	if err := f.fillAll(context.Background(), f.e); err != nil {
		t.Fatal(err)
	}
	if info, err := f.Subvol(snap.ID); err != nil || info.Filling {
		t.Fatalf("after the fill: %+v %v", info, err)
	}
	mustClean(t, f)
	if _, err := f.Resolve("/snap/d/o"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("unlinked in the snapshot, back after the fill: %v", err)
	}
	if got := readPath(t, f, "/snap/d/n"); !bytes.Equal(got, []byte("snap side")) {
		t.Fatalf("snapshot's n: %q", got)
	}

	// Read-only.
	ro, err := f.CreateSnapshot(sv.RootIno, RootIno, "ro", true)
	if err != nil {
		t.Fatal(err)
	}
	roa := mustResolve(t, f, "/ro/d/a")
	if _, err := f.Write(roa.Ino, []byte("no"), 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write in a read-only snapshot: %v", err)
	}
	if _, err := f.Create(ro.RootIno, "x", NewInode{Mode: syscall.S_IFREG | 0o644}); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("create in a read-only snapshot: %v", err)
	}
	if err := f.Unlink(ro.RootIno, "b"); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("unlink in a read-only snapshot: %v", err)
	}
	if got := readPath(t, f, "/ro/d/a"); !bytes.Equal(got[:7], []byte("CHANGED")) {
		t.Fatalf("read-only snapshot's a: %q", got[:16])
	}
	mustClean(t, f)
	// Data is shared: two snapshots cost no data blocks (metadata only).
	if used := free0 - f.StatFS().BlocksFree; used > 200 {
		t.Errorf("two snapshots used %d blocks", used)
	}
	if _, err := f.DeleteSubvol(RootIno, "ro"); err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	if got := readPath(t, f, "/snap/d/a"); !bytes.Equal(got, one) {
		t.Fatal("snapshot's a after remount")
	}
	mustClean(t, f)
	f.Close()
}

func mustResolve(t *testing.T, f *FS, path string) Attr {
	t.Helper()
	a, err := f.Resolve(path)
	if err != nil {
		t.Fatalf("resolve %s: %v", path, err)
	}
	return a
}

var _ = format.SubvolOf

// treeStateOf maps every path of every live subvolume (the top level
// too) to its file's bytes, or "dir".
func treeStateOf(t *testing.T, f *FS) map[string]string {
	t.Helper()
	st := map[string]string{}
	var walk func(ino uint64, path string)
	walk = func(ino uint64, path string) {
		var ents []DirEntry
		if err := f.ReadDir(ino, 0, func(de DirEntry) bool {
			if de.Name != "." && de.Name != ".." {
				ents = append(ents, de)
			}
			return true
		}); err != nil {
			t.Fatalf("readdir %s: %v", path, err)
		}
		for _, de := range ents {
			p := path + "/" + de.Name
			switch de.Mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				st[p] = "dir"
				walk(de.Ino, p)
			case syscall.S_IFREG:
				st[p] = string(fileBytes(t, f, de.Ino))
			default:
				st[p] = "other"
			}
		}
	}
	walk(RootIno, "")
	return st
}

// TestSnapshotCrashAtEveryFlush: snapshots taken, filled (two inodes a
// transaction, a commit after each), their sources changed mid-fill,
// one deleted mid-fill and one after. At every flush boundary, in two
// crash modes, the image must mount, hold a state no older than the last
// acknowledged one, keep that state while the mount finishes the fills
// it found under way, and check clean with no inode of a gone subvolume
// left.
func TestSnapshotCrashAtEveryFlush(t *testing.T) {
	defer func(b, c, rb, rc int, auto bool) {
		fillBatch, fillCommitEvery, reapBatch, reapCommitEvery, fillAuto = b, c, rb, rc, auto
	}(fillBatch, fillCommitEvery, reapBatch, reapCommitEvery, fillAuto)
	fillBatch, fillCommitEvery, reapBatch, reapCommitEvery, fillAuto = 2, 1, 2, 1, false
	rec := disk.NewRecorder(smallDev(t).Bytes())
	f := mount(t, nopClose{rec}, Options{})
	r := rand.New(rand.NewPCG(41, 7))
	states := []map[string]string{treeStateOf(t, f)}
	acks := []crashAck{{rec.Flushes(), 0}}
	record := func(sync bool) {
		if sync {
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		states = append(states, treeStateOf(t, f))
		if sync {
			acks = append(acks, crashAck{rec.Flushes(), len(states) - 1})
		}
	}
	a, err := f.CreateSubvol(RootIno, "a")
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.Mkdir(a.RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatal(err)
	}
	var files []Attr
	for i := 0; i < 8; i++ {
		dir := a.RootIno
		if i%2 == 1 {
			dir = d.Ino
		}
		files = append(files, mustCreate(t, f, dir, fmt.Sprint("f", i), randBytes(r, 1+r.IntN(3*bs))))
	}
	record(true)
	if _, err := f.CreateSnapshot(a.RootIno, RootIno, "s1", false); err != nil {
		t.Fatal(err)
	}
	record(true) // CreateSnapshot commits
	// The source changes mid-fill: the guard copies first.
	if _, err := f.Write(files[0].Ino, []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(d.Ino, "f1"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, f, d.Ino, "late", []byte("late"))
	record(true)
	for i := 0; i < 2; i++ {
		if err := f.e.Update(func(tx *engine.Tx) error { _, err := f.fillStep(tx); return err }); err != nil {
			t.Fatal(err)
		}
		record(true)
	}
	s2, err := f.CreateSnapshot(a.RootIno, RootIno, "s2", true)
	if err != nil {
		t.Fatal(err)
	}
	record(true)
	if err := f.fillAll(t.Context(), f.e); err != nil {
		t.Fatal(err)
	}
	record(true)
	if _, err := f.DeleteSubvol(RootIno, "s1"); err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	record(true)
	if _, err := f.CreateSnapshot(s2.RootIno, RootIno, "s3", false); err != nil {
		t.Fatal(err)
	}
	record(true)
	if _, err := f.DeleteSubvol(RootIno, "s3"); err != nil { // mid-fill
		t.Fatal(err)
	}
	f.WaitReaper()
	record(true)
	rng := rand.New(rand.NewPCG(41, 8))
	stride := 1
	if testing.Short() || raceEnabled {
		stride = 3
	}
	t.Logf("%d flushes, %d states", rec.Flushes(), len(states))
	midFill := 0
	for pi, k := range crashPoints(rec.Flushes(), 41) {
		if k < acks[0].flush || (pi%stride != 0 && k != rec.Flushes()) {
			continue
		}
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d %v", k, mode)
			img := rec.CrashImage(k, mode, rng)
			cf, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			got := treeStateOf(t, cf)
			ok := false
			for _, s := range states[lastAcked(acks, k):] {
				ok = ok || maps.Equal(got, s)
			}
			if !ok {
				t.Fatalf("%s: state %v matches none at or after the acknowledged one", name, slices.Sorted(maps.Keys(got)))
			}
			mustClean(t, cf)
			if cf.snap.fills.Load() > 0 {
				midFill++
				if !cf.e.PassRequired(engine.PassSnapshotFill) {
					t.Fatalf("%s: a fill under way without its pass", name)
				}
			}
			if err := cf.fillAll(t.Context(), cf.e); err != nil {
				t.Fatalf("%s: fill: %v", name, err)
			}
			cf.WaitReaper()
			if after := treeStateOf(t, cf); !maps.Equal(after, got) {
				t.Fatalf("%s: the fill changed what the mount showed", name)
			}
			if cf.e.PassRequired(engine.PassSnapshotFill) {
				t.Fatalf("%s: pass snapshot_fill left set", name)
			}
			if n := strayInodes(t, cf); n > 0 {
				t.Fatalf("%s: %d inodes of gone subvolumes", name, n)
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
	if midFill == 0 {
		t.Fatal("no crash image had a fill under way")
	}
	t.Logf("%d crash images had a fill under way", midFill)
	mustClean(t, f)
	f.Close()
}

// TestSnapshotFillConcurrent: the background filler runs (two inodes a
// transaction) while one writer rewrites every file of the source, a
// second writes into the snapshot's own copies, and readers read the
// snapshot: a reader only ever sees the snapshot-time bytes or the
// snapshot's own writes, never the source's; afterwards both sides hold
// exactly what their writers left. Run with the race detector in CI.
func TestSnapshotFillConcurrent(t *testing.T) {
	defer func(b int) { fillBatch = b }(fillBatch)
	fillBatch = 2
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{CommitInterval: 5 * time.Millisecond})
	sv, err := f.CreateSubvol(RootIno, "src")
	if err != nil {
		t.Fatal(err)
	}
	const n = 60
	orig := make([][]byte, n)
	for i := range orig {
		orig[i] = bytes.Repeat([]byte{byte(i)}, 100+i*50)
		mustCreate(t, f, sv.RootIno, fmt.Sprint("f", i), orig[i])
	}
	if _, err := f.CreateSnapshot(sv.RootIno, RootIno, "snap", false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	wg.Add(3)
	go func() { // the source's writer
		defer wg.Done()
		for i := 0; i < n; i++ {
			a, err := f.Resolve(fmt.Sprint("/src/f", i))
			if err == nil {
				_, err = f.Write(a.Ino, []byte("SOURCE"), 0)
			}
			if err != nil {
				errs <- fmt.Errorf("source write %d: %w", i, err)
				return
			}
		}
	}()
	go func() { // the snapshot's writer, on odd files
		defer wg.Done()
		for i := 1; i < n; i += 2 {
			a, err := f.Resolve(fmt.Sprint("/snap/f", i))
			if err == nil {
				_, err = f.Write(a.Ino, []byte("SNAP"), 0)
			}
			if err != nil {
				errs <- fmt.Errorf("snapshot write %d: %w", i, err)
				return
			}
		}
	}()
	go func() { // a reader of the snapshot
		defer wg.Done()
		for round := 0; round < 3; round++ {
			for i := 0; i < n; i += 2 {
				a, err := f.Resolve(fmt.Sprint("/snap/f", i))
				if err != nil {
					errs <- err
					return
				}
				p := make([]byte, a.Size)
				k, err := f.Read(a.Ino, p, 0)
				if err != nil || !bytes.Equal(p[:k], orig[i]) {
					errs <- fmt.Errorf("snapshot's f%d read %q… (%v)", i, p[:min(k, 8)], err)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	f.WaitFill()
	if f.snap.fills.Load() != 0 {
		t.Fatal("fill not finished")
	}
	for i := 0; i < n; i++ {
		want := slices.Clone(orig[i])
		copy(want, "SOURCE")
		if got := readPath(t, f, fmt.Sprint("/src/f", i)); !bytes.Equal(got, want) {
			t.Fatalf("source f%d: %q…", i, got[:8])
		}
		want = slices.Clone(orig[i])
		if i%2 == 1 {
			copy(want, "SNAP")
		}
		if got := readPath(t, f, fmt.Sprint("/snap/f", i)); !bytes.Equal(got, want) {
			t.Fatalf("snapshot f%d: %q…", i, got[:8])
		}
	}
	mustClean(t, f)
	f.Close()
}

// TestSnapshotFsyncCommitsUntilFillDurable: while a fill is under way, and
// after it ended until that end is committed, an fsync in its source
// commits rather than logging (a crash would replay the log onto the
// fill under way, without the copies the guard made); after the commit
// fsync logs again. A crash right after each fsync leaves the snapshot
// as it was taken.
func TestSnapshotFsyncCommitsUntilFillDurable(t *testing.T) {
	manualFill(t, 2)
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	sv, err := f.CreateSubvol(RootIno, "src")
	if err != nil {
		t.Fatal(err)
	}
	orig := bytes.Repeat([]byte("orig "), 2000)
	a := mustCreate(t, f, sv.RootIno, "f", orig)
	for i := 0; i < 6; i++ {
		mustCreate(t, f, sv.RootIno, fmt.Sprint("g", i), []byte{byte(i)})
	}
	if _, err := f.CreateSnapshot(sv.RootIno, RootIno, "snap", false); err != nil {
		t.Fatal(err)
	}
	fsync := func(what string, wantFull bool) {
		t.Helper()
		before := f.Stats()
		if _, err := f.Write(a.Ino, []byte(what), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Fsync(a.Ino); err != nil {
			t.Fatal(err)
		}
		after := f.Stats()
		if full := after.FsyncFull > before.FsyncFull; full != wantFull {
			t.Fatalf("fsync %q: full commit %v, want %v (logged %d→%d)", what, full, wantFull, before.FsyncLogged, after.FsyncLogged)
		}
		// A crash now: the snapshot is as it was taken.
		k := mount(t, nopClose{disk.NewMemFrom(slices.Clone(dev.Bytes()))}, Options{})
		if got := readPath(t, k, "/snap/f"); !bytes.Equal(got, orig) {
			t.Fatalf("after %q and a crash, the snapshot's f reads %q…", what, got[:8])
		}
		mustClean(t, k)
		k.Close()
	}
	fsync("mid-fill", true)
	if err := f.fillAll(t.Context(), f.e); err != nil {
		t.Fatal(err)
	}
	fsync("ended, not committed", true)
	fsync("ended, committed", false)
	mustClean(t, f)
	f.Close()
}
