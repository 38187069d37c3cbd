package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// xattrImage makes an image with n files of two attributes each (and n
// more files, unlinked, whose attributes went with them): enough for
// interior nodes from n = 300 on. It returns the model: inode → name →
// value.
func xattrImage(t *testing.T, n int) (string, map[uint64]map[string]string) {
	t.Helper()
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	model := map[uint64]map[string]string{}
	for i := 0; i < 2*n; i++ {
		name := fmt.Sprintf("x%04d", i)
		a, err := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{
			"user.a":     strings.Repeat(name, 10),
			"security.s": name,
		}
		for k, v := range m {
			if err := f.SetXattr(a.Ino, k, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 1 {
			if err := f.Unlink(fs.RootIno, name); err != nil {
				t.Fatal(err)
			}
			continue
		}
		model[a.Ino] = m
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img, model
}

// smallImage makes a 16 MiB image: the checks these tests run are
// cheaper on it than on newImage's.
func smallImage(t *testing.T) string {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 16<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return img
}

// xattrSetter keeps setting and removing attributes of its own files
// until stop, recording what succeeded. An operation that meets the
// damage fails (EIO) and changes nothing.
func xattrSetter(t *testing.T, f *fs.FS, model map[uint64]map[string]string) (stop func()) {
	var inos []uint64
	for i := range 20 {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("live%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
		model[a.Ino] = map[string]string{}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var err error
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(3, 3))
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			ino := inos[r.IntN(len(inos))]
			name := fmt.Sprintf("user.l%d", r.IntN(2))
			var e error
			if r.IntN(3) == 0 {
				if e = f.RemoveXattr(ino, name); e == nil {
					delete(model[ino], name)
				}
				if errors.Is(e, syscall.ENODATA) {
					e = nil
				}
			} else {
				v := fmt.Sprint(i)
				if e = f.SetXattr(ino, name, []byte(v), 0); e == nil {
					model[ino][name] = v
				}
			}
			if e != nil && !errors.Is(e, syscall.EIO) {
				err = e
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	return func() {
		t.Helper()
		close(done)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestXattrDamageOnline: every kind of damage, at a leaf and at an
// interior node, to the xattr tree of a mount whose attributes keep
// changing: the scrub finds exactly the findings expected, repairs them
// online, and the next scrub and the offline check are clean; every
// attribute read back is one that was set, and only the items of a
// damaged leaf are lost (none when an interior node was damaged: the
// leaves below it are salvaged).
func TestXattrDamageOnline(t *testing.T) {
	n := 300 // interior nodes
	if testing.Short() {
		n = 60 // the race pass: damage at a leaf
	}
	img0, model0 := xattrImage(t, n)
	pristine, err := os.ReadFile(img0)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range inject.Kinds {
		for level := 0; level <= 1; level++ {
			if testing.Short() && (level > 0 || kind != inject.Bitflip) {
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", kind, level), func(t *testing.T) {
				model := map[uint64]map[string]string{}
				for ino, m := range model0 {
					model[ino] = m
				}
				xattrDamageOnline(t, pristine, model, kind, level)
			})
		}
	}
}

// The findings a check of the xattr tree reports after each kind of
// damage (inject.Options.Seed 3).
var xattrWantIDs = map[string][]string{
	"bitflip/0": {"node_bad_checksum"}, "bitflip/1": {"node_bad_checksum"},
	"zero/0": {"node_bad_magic"}, "zero/1": {"node_bad_magic"},
	"drop-record/0": {"tree_item_count"}, "drop-record/1": {"tree_item_count"},
	"wrong-owner/0": {"node_wrong_owner"}, "wrong-owner/1": {"node_wrong_owner"},
	"stale-gen/0": {"node_stale"}, "stale-gen/1": {"node_stale"},
}

func xattrDamageOnline(t *testing.T, pristine []byte, model map[uint64]map[string]string, kind string, level int) {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := xattrSetter(t, f, model)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	lv := level
	inj, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeXattr, Kind: kind, Seed: 3, Level: &lv})
	if err != nil {
		stop()
		f.Close()
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // the setter meets the damage
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.structure("xattr")
	if rep.Status != StatusCorrected || st == nil || st.Found == 0 || st.Repaired != st.Found {
		t.Fatalf("scrub --repair after %s at block %d: status %s, xattr %+v, notes %v", kind, inj.Block, rep.Status, st, rep.Notes)
	}
	var ids []string
	for _, fd := range st.Findings {
		if !slices.Contains(ids, fd.Name) {
			ids = append(ids, fd.Name)
		}
	}
	slices.Sort(ids)
	if want := xattrWantIDs[fmt.Sprintf("%s/%d", kind, level)]; !slices.Equal(ids, want) {
		t.Errorf("%s at level %d: findings %v, want %v", kind, level, ids, want)
	}
	var changes []string
	for _, rb := range rep.Rebuilds {
		if rb.Structure == "xattr" {
			changes = rb.Changes
			t.Logf("xattr repair: %d records, %d live updates, %d old blocks freed, writers paused %.2f ms; %v", rb.Records, rb.Events, rb.OldBlocks, rb.PauseMs, rb.Changes)
		}
	}
	if kind != inject.DropRecord && changes == nil && !slices.ContainsFunc(rep.Rebuilds, func(rb RebuildReport) bool { return rb.Structure == "xattr" }) {
		t.Fatalf("the xattr repairer did not run: notes %v", rep.Notes)
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil || rep.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep)
	}
	if f.Engine().Sick(engine.StructXattr) {
		t.Fatal("still sick after the repair")
	}
	stop()
	f = remountClean(t, f, img)
	defer f.Close()
	lost := 0
	for ino, m := range model {
		names, err := f.ListXattr(ino)
		if err != nil {
			t.Fatalf("inode %d: %v", ino, err)
		}
		for _, n := range names {
			v, err := f.GetXattr(ino, n)
			if err != nil {
				t.Fatalf("inode %d %q: %v", ino, n, err)
			}
			if want, ok := m[n]; !ok || string(v) != want {
				t.Fatalf("inode %d %q: %q, never set so (want %q, set %v)", ino, n, v, want, ok)
			}
		}
		lost += len(m) - len(names)
	}
	// One leaf holds at most MaxValueSize-sized items' worth of blocks:
	// a damaged leaf loses at most what fits in it.
	switch {
	case level > 0 && lost > 0:
		t.Errorf("%d attributes lost to damage at an interior node: the leaves below it were not salvaged", lost)
	case level == 0 && lost > format.BlockSize/30:
		t.Errorf("%d attributes lost to damage at one leaf", lost)
	case level == 0 && (kind == inject.Bitflip || kind == inject.Zero) && lost == 0:
		t.Errorf("nothing lost to a destroyed leaf: the check compares nothing")
	case level == 0 && kind == inject.DropRecord && lost != 1:
		t.Errorf("%d attributes lost to one record dropped", lost)
	}
	// A record dropped from a leaf is only a wrong item count to the
	// check (recounted; the record is gone either way, no repair runs).
	if lost > 0 && !(level == 0 && kind == inject.DropRecord) && !strings.Contains(strings.Join(changes, "\n"), "lost") {
		t.Errorf("%d attributes lost, the report does not say so: %v", lost, changes)
	}
	t.Logf("%d attributes lost", lost)
}

// TestXattrOrphanRepair: attributes left behind by an inode freed without
// them (as an older build would) are found as xattr_orphan and dropped by
// the repair; the other inodes' stay.
func TestXattrOrphanRepair(t *testing.T) {
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(fs.RootIno, "keep", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetXattr(a.Ino, "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	// Attributes of an inode that does not exist, and one under a key
	// its name does not hash to.
	if err := f.Engine().Update(func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeXattr)
		if err != nil {
			return err
		}
		for _, n := range []string{"user.a", "user.b"} {
			if err := tr.Put(format.XattrKey(999999, format.XattrHash(n), 0), format.XattrItem{Name: n, Value: []byte("x")}.Encode()); err != nil {
				return err
			}
		}
		return tr.Put(format.XattrKey(a.Ino, 12345, 0), format.XattrItem{Name: "user.bad", Value: []byte("x")}.Encode())
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.structure("xattr")
	if rep.Status != StatusCorrected || st == nil {
		t.Fatalf("scrub --repair: %s %+v %v", rep.Status, st, rep.Notes)
	}
	var ids []string
	for _, fd := range st.Findings {
		ids = append(ids, fd.Name)
	}
	slices.Sort(ids)
	if want := []string{"xattr_bad_key", "xattr_orphan"}; !slices.Equal(ids, want) {
		t.Fatalf("findings %v, want %v", ids, want)
	}
	f = remountClean(t, f, img)
	defer f.Close()
	names, err := f.ListXattr(a.Ino)
	if err != nil || !slices.Equal(names, []string{"user.k"}) {
		t.Fatalf("attributes after the repair: %q %v", names, err)
	}
}

// TestXattrLargeChunkRepair: a large value missing a chunk, a chunk of a
// value that no longer has it, and a chunk of no attribute are each found
// (xattr_chunk) and dropped by the repair; whole large values, small ones
// and the file's data stay.
func TestXattrLargeChunkRepair(t *testing.T) {
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(fs.RootIno, "keep", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("data"), 3000)
	if _, err := f.Write(a.Ino, data, 0); err != nil {
		t.Fatal(err)
	}
	whole := bytes.Repeat([]byte("w"), 9000)
	for name, v := range map[string][]byte{"user.whole": whole, "user.broken": bytes.Repeat([]byte("b"), 9000), "user.short": bytes.Repeat([]byte("s"), 3000), "user.small": []byte("x")} {
		if err := f.SetXattr(a.Ino, name, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Damage that keeps every block's checksum: chunk 3 of user.broken
	// gone, a fourth chunk left past user.short's end, and a chunk under
	// a hash no attribute has.
	if err := f.Engine().Update(func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeXattr)
		if err != nil {
			return err
		}
		head := func(name string) format.Key { return format.XattrKey(a.Ino, format.XattrHash(name), 0) }
		if ok, err := tr.Delete(format.XattrChunkKey(head("user.broken"), 3)); !ok || err != nil {
			return fmt.Errorf("delete chunk: %v %v", ok, err)
		}
		if err := tr.Put(format.XattrChunkKey(head("user.short"), 4), []byte("stray")); err != nil {
			return err
		}
		return tr.Put(format.XattrChunkKey(format.XattrKey(a.Ino, 777, 0), 1), []byte("lost"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetXattr(a.Ino, "user.broken"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("get of a value missing a chunk: %v, want EIO", err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st := rep.structure("xattr")
	if rep.Status != StatusCorrected || st == nil {
		t.Fatalf("scrub --repair: %s %+v %v", rep.Status, st, rep.Notes)
	}
	if len(st.Findings) != 3 {
		t.Errorf("%d findings, want 3: %+v", len(st.Findings), st.Findings)
	}
	for _, fd := range st.Findings {
		if fd.Name != "xattr_chunk" {
			t.Errorf("finding %s: %s", fd.Name, fd.Detail)
		}
	}
	f = remountClean(t, f, img)
	defer f.Close()
	names, err := f.ListXattr(a.Ino)
	slices.Sort(names)
	if err != nil || !slices.Equal(names, []string{"user.short", "user.small", "user.whole"}) {
		t.Fatalf("attributes after the repair: %q %v", names, err)
	}
	if v, err := f.GetXattr(a.Ino, "user.whole"); err != nil || !bytes.Equal(v, whole) {
		t.Fatalf("user.whole after the repair: %d bytes, %v", len(v), err)
	}
	got := make([]byte, len(data))
	if n, err := f.Read(a.Ino, got, 0); err != nil || !bytes.Equal(got[:n], data) {
		t.Fatalf("the file's data after the repair: %v", err)
	}
}
