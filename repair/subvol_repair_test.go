package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// svWant is what a subvolume image holds: its live subvolumes by path
// (their UUIDs), every file's content by path, and the subvolume being
// deleted.
type svWant struct {
	subvols map[string]fs.SubvolInfo
	files   map[string][]byte
	gone    uint64
}

// subvolImage makes an image with subvolumes: /a (a received UUID) with
// /a/d/b nested in it (a received UUID too), /c, files and directories in
// each and at the top level; manySubvols empty ones in /many; and /gone, 900 files in directories, deleted
// with the mount closed at once, which stops the reaper: its deletion is
// under way (pass subvol_reap set), its inodes partly freed or not yet.
func subvolImage(t *testing.T) (string, *svWant) {
	t.Helper()
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	w := &svWant{files: map[string][]byte{}}
	mkfile := func(dir uint64, p, name string, n int) {
		a, err := f.Create(dir, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte(p+"/"+name+" "), n)
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		w.files[p+"/"+name] = data
	}
	mkdir := func(dir uint64, name string) uint64 {
		a, err := f.Mkdir(dir, name, fs.NewInode{Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		return a.Ino
	}
	subvol := func(dir uint64, name string) fs.SubvolInfo {
		sv, err := f.CreateSubvol(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return sv
	}
	mkfile(fs.RootIno, "", "top", 100)
	a := subvol(fs.RootIno, "a")
	mkfile(a.RootIno, "/a", "f1", 300)
	d := mkdir(a.RootIno, "d")
	mkfile(d, "/a/d", "f2", 2000)
	b := subvol(d, "b")
	mkfile(b.RootIno, "/a/d/b", "f3", 50)
	e := mkdir(b.RootIno, "e")
	mkfile(e, "/a/d/b/e", "f4", 700)
	c := subvol(fs.RootIno, "c")
	mkfile(c.RootIno, "/c", "f5", 10)
	for i, sv := range []fs.SubvolInfo{a, b} {
		u, _ := format.ParseUUID(fmt.Sprintf("%032x", 0xabc0+i))
		if err := f.SetReceivedUUID(sv.ID, u); err != nil {
			t.Fatal(err)
		}
	}
	// Enough subvolumes for both trees to have interior nodes: empty
	// ones in a plain directory, every other one with a received UUID.
	many := mkdir(fs.RootIno, "many")
	for i := range manySubvols {
		sv := subvol(many, fmt.Sprintf("s%03d", i))
		if i%2 == 0 {
			u, _ := format.ParseUUID(fmt.Sprintf("%032x", 0xfeed0000+i))
			if err := f.SetReceivedUUID(sv.ID, u); err != nil {
				t.Fatal(err)
			}
		}
	}
	gone := subvol(fs.RootIno, "gone")
	for i := range 3 {
		dir := mkdir(gone.RootIno, fmt.Sprint("d", i))
		sub := mkdir(dir, "sub")
		for j := range goneFiles {
			for _, in := range []uint64{dir, sub} {
				x, err := f.Create(in, fmt.Sprint("f", j), fs.NewInode{Mode: 0o644})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.Write(x.Ino, []byte("doomed"), 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	list, err := f.Subvols()
	if err != nil {
		t.Fatal(err)
	}
	w.subvols = map[string]fs.SubvolInfo{}
	for _, sv := range list {
		if sv.ID != gone.ID {
			w.subvols[sv.Path] = sv
		}
	}
	if len(w.subvols) != 3+manySubvols || w.subvols["/a"].ReceivedUUID == "" || w.subvols["/a/d/b"].ReceivedUUID == "" {
		t.Fatalf("subvolumes made: %+v", list)
	}
	w.gone = gone.ID
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	pristine, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Delete /gone and close the mount after a while: the reaper stops
	// with the close. The delay grows until the deletion stops halfway
	// (some of its inodes freed, not all), or, if none does, the last
	// state stands (every state of a deletion must check clean).
	for delay := time.Duration(0); ; delay += 250 * time.Microsecond {
		if err := os.WriteFile(img, pristine, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.DeleteSubvol(fs.RootIno, "gone"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		if err := f.Close(); err != nil { // stops the reaper
			t.Fatal(err)
		}
		item, _, left := goneState(t, img, w.gone)
		if item && left > 0 && left < goneInodes || delay > 50*time.Millisecond {
			t.Logf("deleted /gone, closed after %v: %d of its %d inodes left", delay, left, goneInodes)
			return img, w
		}
	}
}

// /gone holds 3 directories of goneFiles files and a subdirectory of as
// many: 14 reaper batches.
const (
	manySubvols = 120
	goneFiles   = 150
	goneInodes  = 1 + 3*2*(1+goneFiles)
)

// goneState opens img read-only (no recovery pass runs) and says how far
// the deletion of subvolume id went: whether its item is there, marked
// being deleted, and how many of its inodes are left.
func goneState(t *testing.T, img string, id uint64) (item, deleting bool, inodes int) {
	t.Helper()
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = f.Engine().View(func(tx *engine.Tx) error {
		st, _ := tx.ReadTree(format.TreeSubvol)
		v, ok, err := st.Get(format.SubvolKey(id), nil)
		if err != nil || !ok {
			return err
		}
		it, err := format.DecodeSubvolItem(v)
		if err != nil {
			return err
		}
		item, deleting = true, it.Flags&format.SubvolDeleting != 0
		it2, _ := tx.ReadTree(format.TreeInode)
		return it2.Ascend(format.InodeKey(format.SubvolIno(id, 0)), func(k format.Key, _ []byte) bool {
			if k.Obj >= format.SubvolIno(id+1, 0) {
				return false
			}
			if k.Type == format.TypeInodeItem {
				inodes++
			}
			return true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return item, deleting, inodes
}

// lookupPath resolves an absolute path.
func lookupPath(f *fs.FS, p string) (fs.Attr, error) {
	a, err := f.GetAttr(fs.RootIno)
	for _, n := range strings.Split(strings.Trim(p, "/"), "/") {
		if err != nil || n == "" {
			break
		}
		a, err = f.Lookup(a.Ino, n)
	}
	return a, err
}

// verifySubvols checks that every live subvolume is at its path with its
// UUIDs (when uuids), that every file reads as written, and that the
// subvolume being deleted is still being deleted or gone.
func verifySubvols(t *testing.T, f *fs.FS, w *svWant, uuids bool) {
	t.Helper()
	list, err := f.Subvols()
	if err != nil {
		t.Fatalf("list the subvolumes: %v", err)
	}
	seen := 0
	for _, sv := range list {
		if sv.ID == w.gone {
			if !sv.Deleting {
				t.Errorf("the deleted subvolume is live again: %+v", sv)
			}
			continue
		}
		want, ok := w.subvols[sv.Path]
		if !ok || sv.ID != want.ID || sv.Deleting {
			t.Errorf("subvolume %+v, want %+v", sv, want)
			continue
		}
		seen++
		if sv.Generation != want.Generation || !sv.CTime.Equal(want.CTime) || sv.ReadOnly != want.ReadOnly {
			t.Errorf("subvolume %s: generation %d, ctime %v, read-only %v, want %d, %v, %v", sv.Path, sv.Generation, sv.CTime, sv.ReadOnly, want.Generation, want.CTime, want.ReadOnly)
		}
		if uuids && (sv.UUID != want.UUID || sv.ReceivedUUID != want.ReceivedUUID) {
			t.Errorf("subvolume %s: UUID %s received %s, want %s and %s", sv.Path, sv.UUID, sv.ReceivedUUID, want.UUID, want.ReceivedUUID)
		}
	}
	if seen != len(w.subvols) {
		t.Errorf("%d live subvolumes, want %d: %+v", seen, len(w.subvols), list)
	}
	for p, data := range w.files {
		a, err := lookupPath(f, p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		buf := make([]byte, a.Size+1)
		n, err := f.Read(a.Ino, buf, 0)
		if err != nil || !bytes.Equal(buf[:n], data) {
			t.Errorf("%s: reads %d bytes (%v), want %d", p, n, err, len(data))
		}
	}
}

// findingIDs lists the distinct finding ids of a report, sorted.
func findingIDs(rep *Report) []string {
	var ids []string
	for _, st := range rep.Structures {
		for _, fd := range st.Findings {
			if !slices.Contains(ids, fd.Name) {
				ids = append(ids, fd.Name)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// checkNames runs the offline check of img and returns its finding ids.
func checkNames(t *testing.T, img string) []string {
	t.Helper()
	rep, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return findingIDs(rep)
}

// TestSubvolDeletingChecksClean: a subvolume whose deletion is under way
// (its root unnamed with no link and not on the deleted list, its
// inodes partly freed, entries naming freed inodes) is reported by no
// checker: the offline check, the engine's check of a read-only mount
// and a scrub of it are clean; the mount that runs pass subvol_reap
// finishes the deletion and is clean too.
func TestSubvolDeletingChecksClean(t *testing.T) {
	img, w := subvolImage(t)
	item, deleting, left := goneState(t, img, w.gone)
	t.Logf("the deletion stopped with the item there %v, being deleted %v, %d inodes left", item, deleting, left)
	if !item || !deleting {
		t.Fatalf("the deletion is not under way: item %v, deleting %v", item, deleting)
	}
	if ids := checkNames(t, img); len(ids) != 0 {
		t.Fatalf("the offline check of a deletion under way finds %v", ids)
	}
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	mustClean(t, f.Engine())
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{TempDir: t.TempDir()})
	if err != nil || rep.Status != StatusClean {
		t.Fatalf("scrub of a deletion under way: %v %s %v %v", err, rep.Status, findingIDs(rep), rep.Notes)
	}
	verifySubvols(t, f, w, true)
	f.Close()
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	verifySubvols(t, f, w, true)
	if _, err := f.Subvol(w.gone); !errors.Is(err, fs.ErrNoSuchSubvol) {
		t.Errorf("the deleted subvolume after the pass: %v", err)
	}
	f = remountClean(t, f, img)
	f.Close()
}

// editImage changes img with the engine alone (no filesystem layer: no
// recovery pass frees anything), in one transaction.
func editImage(t *testing.T, img string, fn func(tx *engine.Tx) error) {
	t.Helper()
	dev, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(dev, engine.Options{CommitInterval: -1})
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	if err := e.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
}

// repairSubvolImage mounts img, scrubs it with repair and requires the
// findings want, a corrected report and a clean scrub after; it returns
// the mount and the report.
func repairSubvolImage(t *testing.T, img string, want []string) (*fs.FS, *Report) {
	t.Helper()
	if got := checkNames(t, img); !slices.Equal(got, want) {
		t.Errorf("the offline check finds %v, want %v", got, want)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	if got := findingIDs(rep); !slices.Equal(got, want) {
		t.Errorf("the scrub finds %v, want %v", got, want)
	}
	if rep.Status != StatusCorrected {
		t.Errorf("scrub --repair ended %s: notes %v", rep.Status, rep.Notes)
	}
	for _, rb := range rep.Rebuilds {
		t.Logf("%s repair: %d records, %d live updates, %d old blocks freed; %v", rb.Structure, rb.Records, rb.Events, rb.OldBlocks, rb.Changes)
	}
	if again, err := Scrub(context.Background(), f, "test", ScrubOptions{TempDir: t.TempDir()}); err != nil || again.Status != StatusClean {
		t.Errorf("the scrub after the repair: %v %v", err, findingIDs(again))
	}
	for _, st := range []engine.Structure{engine.StructSubvol, engine.StructUUID} {
		if f.Engine().Sick(st) {
			t.Errorf("%s still sick after the repair", st.Name())
		}
	}
	return f, rep
}

func svUUID(t *testing.T, s string) format.UUID {
	u, err := format.ParseUUID(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestUUIDMissingRepair: a subvolume's UUID key and another's received
// UUID key deleted from the uuid tree are uuid_missing; the repair
// rebuilds the tree from the subvolume items and both are found again.
func TestUUIDMissingRepair(t *testing.T) {
	img, w := subvolImage(t)
	a, b := w.subvols["/a"], w.subvols["/a/d/b"]
	editImage(t, img, func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeUUID)
		if err != nil {
			return err
		}
		for _, k := range []format.Key{format.UUIDKey(svUUID(t, a.UUID), format.TypeUUIDSubvol, a.ID),
			format.UUIDKey(svUUID(t, b.ReceivedUUID), format.TypeUUIDReceived, b.ID)} {
			if ok, err := tr.Delete(k); err != nil || !ok {
				return fmt.Errorf("delete %s: %v %v", k, ok, err)
			}
		}
		return nil
	})
	f, _ := repairSubvolImage(t, img, []string{"uuid_missing"})
	if own, _, err := f.FindSubvols(svUUID(t, a.UUID)); err != nil || !slices.Equal(own, []uint64{a.ID}) {
		t.Errorf("find /a by its UUID: %v %v", own, err)
	}
	if _, recv, err := f.FindSubvols(svUUID(t, b.ReceivedUUID)); err != nil || !slices.Equal(recv, []uint64{b.ID}) {
		t.Errorf("find /a/d/b by its received UUID: %v %v", recv, err)
	}
	f.WaitReaper()
	verifySubvols(t, f, w, true)
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, true)
	f.Close()
}

// TestUUIDOrphanRepair: uuid keys naming a subvolume that does not
// exist, and one naming /c under a UUID it does not have, are
// uuid_orphan; the repair drops them, /c's own key stays.
func TestUUIDOrphanRepair(t *testing.T) {
	img, w := subvolImage(t)
	c := w.subvols["/c"]
	stray := svUUID(t, "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e")
	editImage(t, img, func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeUUID)
		if err != nil {
			return err
		}
		for _, k := range []format.Key{format.UUIDKey(stray, format.TypeUUIDSubvol, 999),
			format.UUIDKey(stray, format.TypeUUIDReceived, c.ID)} {
			if err := tr.Put(k, nil); err != nil {
				return err
			}
		}
		return nil
	})
	f, _ := repairSubvolImage(t, img, []string{"uuid_orphan"})
	if own, recv, err := f.FindSubvols(stray); err != nil || len(own)+len(recv) != 0 {
		t.Errorf("the stray UUID still finds %v %v (%v)", own, recv, err)
	}
	if own, _, err := f.FindSubvols(svUUID(t, c.UUID)); err != nil || !slices.Equal(own, []uint64{c.ID}) {
		t.Errorf("find /c by its UUID: %v %v", own, err)
	}
	f.WaitReaper()
	verifySubvols(t, f, w, true)
	f = remountClean(t, f, img)
	f.Close()
}

// TestSubvolOrphanRepair: the item of /c removed with its inodes left is
// subvol_orphan (and its uuid keys, naming no subvolume, uuid_orphan);
// the repair makes the item again, live, with its UUID from the uuid
// tree, and /c's files read as before.
func TestSubvolOrphanRepair(t *testing.T) {
	img, w := subvolImage(t)
	c := w.subvols["/c"]
	editImage(t, img, func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeSubvol)
		if err != nil {
			return err
		}
		if ok, err := tr.Delete(format.SubvolKey(c.ID)); err != nil || !ok {
			return fmt.Errorf("delete the item: %v %v", ok, err)
		}
		return nil
	})
	f, rep := repairSubvolImage(t, img, []string{"subvol_orphan", "uuid_orphan"})
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, fmt.Sprintf("subvolume %d had no item", c.ID)) }) {
		t.Errorf("the report does not say the item was made again: %v", rep.Notes)
	}
	f.WaitReaper()
	verifySubvols(t, f, w, true)
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, true)
	f.Close()
}

// TestSubvolOrphanDeletingRepair: the item of a subvolume whose deletion
// is under way removed (its root unnamed, its inodes partly freed) is
// subvol_orphan; the repair makes it again being deleted, sets pass
// subvol_reap, and the next mount's pass frees what is left.
func TestSubvolOrphanDeletingRepair(t *testing.T) {
	img, w := subvolImage(t)
	_, _, left := goneState(t, img, w.gone)
	editImage(t, img, func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeSubvol)
		if err != nil {
			return err
		}
		if ok, err := tr.Delete(format.SubvolKey(w.gone)); err != nil || !ok {
			return fmt.Errorf("delete the item: %v %v", ok, err)
		}
		return nil
	})
	// The mount's pass finds no deletion under way and clears itself.
	f, _ := repairSubvolImage(t, img, []string{"subvol_orphan", "uuid_orphan"})
	// The repair made the item again, marked being deleted, and the
	// mount's reaper goes on with the deletion at once.
	f.WaitReaper()
	if _, err := f.Subvol(w.gone); !errors.Is(err, fs.ErrNoSuchSubvol) {
		t.Errorf("the subvolume after the repair and the reap: %v", err)
	}
	if f.Engine().PassRequired(engine.PassSubvolReap) {
		t.Error("pass subvol_reap still required after the reap")
	}
	verifySubvols(t, f, w, true)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if item, _, n := goneState(t, img, w.gone); item || n != 0 {
		t.Errorf("after the reap: item %v, %d inodes (%d before)", item, n, left)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, true)
	f.Close()
}

// The finding ids a check reports after each kind of damage to each tree
// (inject.Options.Seed 4; a level the tree does not have is skipped).
// A record dropped from an interior node orphans the leaf below it:
// its block is leaked (alloc_leaked, rmap_orphan: the alloc and rmap rows
// free it) and its items are gone (the subvolume and uuid rows make them
// again).
var subvolWantIDs = map[string][]string{
	"subvol/bitflip/0": {"node_bad_checksum"}, "subvol/bitflip/1": {"node_bad_checksum"},
	"subvol/zero/0": {"node_bad_magic"}, "subvol/zero/1": {"node_bad_magic"},
	"subvol/drop-record/0": {"subvol_orphan", "tree_item_count", "uuid_orphan"},
	"subvol/drop-record/1": {"alloc_leaked", "rmap_orphan", "subvol_orphan", "tree_item_count", "uuid_orphan"},
	"subvol/wrong-owner/0": {"node_wrong_owner"}, "subvol/wrong-owner/1": {"node_wrong_owner"},
	"subvol/stale-gen/0": {"node_stale"}, "subvol/stale-gen/1": {"node_stale"},
	"uuid/bitflip/0": {"node_bad_checksum"}, "uuid/bitflip/1": {"node_bad_checksum"},
	"uuid/zero/0": {"node_bad_magic"}, "uuid/zero/1": {"node_bad_magic"},
	"uuid/drop-record/0": {"tree_item_count", "uuid_missing"},
	"uuid/drop-record/1": {"alloc_leaked", "rmap_orphan", "tree_item_count", "uuid_missing"},
	"uuid/wrong-owner/0": {"node_wrong_owner"}, "uuid/wrong-owner/1": {"node_wrong_owner"},
	"uuid/stale-gen/0": {"node_stale"}, "uuid/stale-gen/1": {"node_stale"},
}

// TestSubvolDamageMatrix damages the subvolume tree and the uuid tree of
// an image with nested subvolumes, received UUIDs and a deletion under
// way, with every kind, at a leaf and at an interior node where the tree
// has one: the check finds the ids expected, scrub --repair ends
// corrected, the scrub after it and the offline check are clean, and
// every live subvolume is at its path with its UUIDs (the other tree was
// intact), every file reads as before, the deletion is still under way
// or done, and the next mount's pass finishes it. The full pass runs a
// slice; SCRUBD_MATRIX_ALL=1 runs every kind at both levels.
func TestSubvolDamageMatrix(t *testing.T) {
	base, w := subvolImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	// The uuid tree's damage is applied to the image after the deletion
	// is done: the reaper's last step removes the subvolume's UUIDs, and
	// a damaged uuid tree met there aborts its transaction, which fails
	// the mount's pass subvol_reap (the filesystem layer's to fix).
	f, err := fs.OpenPath(base, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	reaped, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	kinds, levels := inject.Kinds, []int{0, 1}
	if os.Getenv("SCRUBD_MATRIX_ALL") == "" {
		// A slice: a leaf lost whole, and a record dropped.
		kinds, levels = []string{inject.Zero, inject.DropRecord}, []int{0}
	}
	ran := 0
	for _, tree := range []format.TreeID{format.TreeSubvol, format.TreeUUID} {
		for _, kind := range kinds {
			for _, level := range levels {
				name := fmt.Sprintf("%s/%s/%d", tree, kind, level)
				t.Run(name, func(t *testing.T) {
					img := filepath.Join(t.TempDir(), "fs.img")
					src := pristine
					if tree == format.TreeUUID {
						src = reaped
					}
					if err := os.WriteFile(img, src, 0o600); err != nil {
						t.Fatal(err)
					}
					lv := level
					inj, err := inject.Offline(img, inject.Options{Tree: tree, Kind: kind, Seed: 4, Level: &lv})
					if errors.Is(err, inject.ErrRefused) {
						t.Skipf("not injectable: %v", err)
					}
					if err != nil {
						t.Fatal(err)
					}
					ran++
					want, ok := subvolWantIDs[name]
					if !ok {
						want = checkNames(t, img)
						t.Errorf("no expected findings for %s; the check finds %v", name, want)
					}
					f, rep := repairSubvolImage(t, img, want)
					t.Logf("%s at block %d: %v", kind, inj.Block, rep.Notes)
					f.WaitReaper()
					verifySubvols(t, f, w, true)
					f = remountClean(t, f, img)
					f.WaitReaper()
					verifySubvols(t, f, w, true)
					if _, err := f.Subvol(w.gone); !errors.Is(err, fs.ErrNoSuchSubvol) {
						t.Errorf("the deleted subvolume after the pass: %v", err)
					}
					f.Close()
				})
			}
		}
	}
	if ran == 0 {
		t.Fatal("no damage applied")
	}
}

// TestSubvolDeletingUnderOtherRepairs: while a deletion is under way
// (the reaper stopped by a damaged leaf of the subvolume tree, ahead of
// the deleted subvolume's item), the link-count repair and
// the deleted tree's rebuild leave the deletion's inodes to the reaper:
// none is linked into /lost+found or listed as deleted; the deletion is
// still under way after the repairs, and the next mount's pass finishes
// it.
func TestSubvolDeletingUnderOtherRepairs(t *testing.T) {
	img, w := subvolImage(t)
	_, _, left := goneState(t, img, w.gone)
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	top, err := f.Lookup(fs.RootIno, "top")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	editImage(t, img, func(tx *engine.Tx) error {
		_, _, err := fs.SetNlink(tx, top.Ino, 5)
		return err
	})
	// The deleted tree's leaf damaged: its repair lists the inodes with
	// no link, and must not list the deleted subvolume's.
	lv := 0
	if _, err := inject.Offline(img, inject.Options{Tree: format.TreeDeleted, Kind: inject.Bitflip, Seed: 1, Level: &lv}); err != nil {
		t.Fatal(err)
	}
	// A leaf of the subvolume tree damaged, not the one holding /gone's
	// item (the last: its id is the largest).
	clean, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for seed := uint64(1); ; seed++ {
		if err := os.WriteFile(img, clean, 0o600); err != nil {
			t.Fatal(err)
		}
		lv := 0
		if _, err := inject.Offline(img, inject.Options{Tree: format.TreeSubvol, Kind: inject.Bitflip, Seed: seed, Level: &lv}); err != nil {
			t.Fatal(err)
		}
		if goneReadable(t, img, w.gone) {
			break
		}
		if seed == 20 {
			t.Fatal("every seed damages the leaf of the deleted subvolume's item")
		}
	}
	f, rep := repairSubvolImage(t, img, []string{"nlink_mismatch", "node_bad_checksum"})
	if !slices.ContainsFunc(rep.Rebuilds, func(rb RebuildReport) bool { return rb.Structure == "deleted" }) {
		t.Errorf("the deleted tree was not rebuilt: %v", rep.Notes)
	}
	if err := f.Engine().View(func(tx *engine.Tx) error {
		dt, _ := tx.ReadTree(format.TreeDeleted)
		return dt.Ascend(format.Key{}, func(k format.Key, _ []byte) bool {
			if format.SubvolOf(k.Obj) == w.gone {
				t.Errorf("inode %d of the deleted subvolume listed as deleted", k.Obj)
			}
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range rep.Notes {
		if strings.Contains(n, "lost+found") {
			t.Errorf("a repair linked something into /lost+found: %s", n)
		}
	}
	// The subvolume tree repaired, the mount's reaper goes on with the
	// deletion at once and finishes it.
	f.WaitReaper()
	if _, err := f.Subvol(w.gone); !errors.Is(err, fs.ErrNoSuchSubvol) {
		t.Errorf("the deletion after the repairs and the reap: %v", err)
	}
	verifySubvols(t, f, w, true)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if item, _, n := goneState(t, img, w.gone); item || n != 0 {
		t.Errorf("after the reap: item %v, %d inodes (%d before)", item, n, left)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, true)
	if a, err := f.GetAttr(top.Ino); err != nil || a.Nlink != 1 {
		t.Errorf("/top after the repair: %+v %v", a, err)
	}
	f.Close()
}

// goneReadable says whether the item of subvolume id can be read.
func goneReadable(t *testing.T, img string, id uint64) bool {
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Engine().View(func(tx *engine.Tx) error {
		st, _ := tx.ReadTree(format.TreeSubvol)
		_, _, err := st.Get(format.SubvolKey(id), nil)
		return err
	}) == nil
}

// TestSubvolDataScrubPaths: a data block damaged in a file of a nested
// subvolume is found by the data scrub and named by its path from the
// top level.
func TestSubvolDataScrubPaths(t *testing.T) {
	img, _ := subvolImage(t)
	const p = "/a/d/b/e/f4"
	if _, err := inject.Offline(img, inject.Options{File: p, Offset: 100, Kind: inject.Bitflip, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, err := lookupPath(f, p)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Data: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, st := range rep.Structures {
		for _, fd := range st.Findings {
			got = append(got, fmt.Sprintf("%s %s %d", fd.Name, fd.Path, fd.Inode))
		}
	}
	if want := []string{fmt.Sprintf("data_checksum %s %d", p, a.Ino)}; !slices.Equal(got, want) {
		t.Fatalf("the data scrub finds %q, want %q", got, want)
	}
}

// TestSubvolRootUnnamedRepair: the deletion flag of a subvolume whose
// deletion is under way cleared (its root gone or unlinked and named
// nowhere, its inodes partly freed, the item live) is subvol_root and
// nothing else: the checkers leave the half-freed inodes alone. The
// repair marks the deletion again and the next mount's pass finishes it.
func TestSubvolRootUnnamedRepair(t *testing.T) {
	img, w := subvolImage(t)
	editImage(t, img, func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeSubvol)
		if err != nil {
			return err
		}
		v, ok, err := tr.Get(format.SubvolKey(w.gone), nil)
		if err != nil || !ok {
			return fmt.Errorf("the item: %v %v", ok, err)
		}
		it, err := format.DecodeSubvolItem(v)
		if err != nil {
			return err
		}
		it.Flags &^= format.SubvolDeleting
		return tr.Put(format.SubvolKey(w.gone), it.Encode())
	})
	f, rep := repairSubvolImage(t, img, []string{"subvol_root"})
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "marked being deleted") }) {
		t.Errorf("the report does not say the deletion was marked: %v", rep.Notes)
	}
	// Marked being deleted, the reaper goes on with it at once.
	f.WaitReaper()
	if _, err := f.Subvol(w.gone); !errors.Is(err, fs.ErrNoSuchSubvol) {
		t.Errorf("the subvolume after the repair and the reap: %v", err)
	}
	verifySubvols(t, f, w, true)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, true)
	f.Close()
}

// TestSubvolRepairUnderWriters damages the subvolume tree (and, in a
// second case, the uuid tree) of a mount whose writers keep making files
// in two subvolumes and, with the subvolume tree damaged, new subvolumes
// (which fail while the damage is in their way): scrub --repair ends corrected, the scrub after it is
// clean, and every file and every subvolume a writer made is there, the
// subvolumes with the UUIDs they were made with.
func TestSubvolRepairUnderWriters(t *testing.T) {
	base, w0 := subvolImage(t)
	f, err := fs.OpenPath(base, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tree := range []format.TreeID{format.TreeSubvol, format.TreeUUID} {
		t.Run(tree.String(), func(t *testing.T) {
			// The deletion is done (its id free for a new subvolume).
			w := &svWant{subvols: maps.Clone(w0.subvols), files: maps.Clone(w0.files)}
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			lv := 0
			if _, err := inject.Online(f.Engine(), inject.Options{Tree: tree, Kind: inject.Zero, Seed: 6, Level: &lv}); err != nil {
				f.Close()
				t.Fatal(err)
			}
			dirs := map[string]uint64{}
			for _, p := range []string{"/a/d", "/c"} {
				a, err := lookupPath(f, p)
				if err != nil {
					t.Fatal(err)
				}
				dirs[p] = a.Ino
			}
			done := make(chan struct{})
			var wg sync.WaitGroup
			var werr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					default:
					}
					// Not while the uuid tree is damaged: a create meets
					// that damage after changing the inode and directory
					// trees, and the aborted transaction turns the mount
					// read-only (the filesystem layer's to fix).
					if i%10 == 9 && tree == format.TreeSubvol {
						name := fmt.Sprintf("new%d", i)
						sv, err := f.CreateSubvol(fs.RootIno, name)
						switch {
						case err == nil:
							sv.Path = "/" + name
							w.subvols[sv.Path] = sv
						case !errors.Is(err, syscall.EIO):
							werr = fmt.Errorf("create subvolume %s: %w", name, err)
							return
						}
						continue
					}
					for p, dir := range dirs {
						name := fmt.Sprintf("w%d", i)
						a, err := f.Create(dir, name, fs.NewInode{Mode: 0o644})
						if errors.Is(err, syscall.EIO) {
							continue
						}
						if err != nil {
							werr = fmt.Errorf("create %s/%s: %w", p, name, err)
							return
						}
						data := []byte(strings.Repeat(p+name, 1+i%50))
						if _, err := f.Write(a.Ino, data, 0); err != nil {
							werr = err
							return
						}
						w.files[p+"/"+name] = data
					}
					time.Sleep(200 * time.Microsecond)
				}
			}()
			time.Sleep(20 * time.Millisecond)
			rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			time.Sleep(20 * time.Millisecond)
			close(done)
			wg.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if werr != nil {
				t.Fatalf("writer: %v", werr)
			}
			if rep.Status != StatusCorrected {
				t.Fatalf("scrub --repair ended %s: %v %v", rep.Status, findingIDs(rep), rep.Notes)
			}
			for _, rb := range rep.Rebuilds {
				t.Logf("%s repair: %d records, %d live updates, writers paused %.2f ms", rb.Structure, rb.Records, rb.Events, rb.PauseMs)
			}
			if again, err := Scrub(context.Background(), f, "test", ScrubOptions{TempDir: t.TempDir()}); err != nil || again.Status != StatusClean {
				t.Fatalf("the scrub after the repair: %v %v", err, findingIDs(again))
			}
			t.Logf("%d files, %d subvolumes made while the repair ran", len(w.files)-len(w0.files), len(w.subvols)-len(w0.subvols))
			verifySubvols(t, f, w, true)
			f = remountClean(t, f, img)
			verifySubvols(t, f, w, true)
			f.Close()
		})
	}
}

// TestSubvolDeletedWhileOpen: a subvolume deleted while one of its files
// is open is reaped but for that file, which goes to the deleted list:
// the state checks clean, the file reads until its last close, which
// frees it, and the deletion then ends; clean again.
func TestSubvolDeletedWhileOpen(t *testing.T) {
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { f.Close() }()
	sv, err := f.CreateSubvol(fs.RootIno, "v")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(sv.RootIno, "held", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte("still open"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Open(a.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := f.DeleteSubvol(fs.RootIno, "v"); err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	mustClean(t, f.Engine())
	buf := make([]byte, 20)
	if n, err := f.Read(a.Ino, buf, 0); err != nil || string(buf[:n]) != "still open" {
		t.Fatalf("the open file: %q %v", buf[:n], err)
	}
	if err := f.Release(a.Ino); err != nil {
		t.Fatal(err)
	}
	f.WaitReaper()
	mustClean(t, f.Engine())
	if _, err := f.GetAttr(a.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("the file after its last close: %v", err)
	}
	if s, err := f.Subvol(sv.ID); !errors.Is(err, fs.ErrNoSuchSubvol) {
		t.Fatalf("the subvolume after the last close: %+v %v", s, err)
	}
}

// TestSubvolAndUUIDBothDamaged: a leaf of each tree lost at once. The
// subvolume repair does not wait for the uuid tree (no input of its):
// the subvolumes whose items were lost are made again from their inodes,
// with their UUIDs from what is left of the uuid tree or new ones, and
// the uuid repair then indexes them. Every subvolume is at its path,
// every file reads as before.
func TestSubvolAndUUIDBothDamaged(t *testing.T) {
	img, w := subvolImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f.WaitReaper() // see TestSubvolDamageMatrix
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tree := range []format.TreeID{format.TreeSubvol, format.TreeUUID} {
		lv := 0
		if _, err := inject.Offline(img, inject.Options{Tree: tree, Kind: inject.Zero, Seed: 2, Level: &lv}); err != nil {
			t.Fatal(err)
		}
	}
	f, rep := repairSubvolImage(t, img, []string{"node_bad_magic"})
	var order []string
	for _, rb := range rep.Rebuilds {
		order = append(order, rb.Structure)
	}
	if !slices.Equal(order, []string{"subvol", "uuid"}) {
		t.Errorf("repairs %v, want the subvolume tree's, then the uuid tree's", order)
	}
	verifySubvols(t, f, w, false)
	f = remountClean(t, f, img)
	verifySubvols(t, f, w, false)
	f.Close()
}
