package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// snapWant is what the snapshot image holds: every file of the source and
// of the snapshot by path, and the paths the snapshot deleted mid-fill.
type snapWant struct {
	files   map[string][]byte
	deleted []string
	snap    uint64
}

// snapImage makes an image with subvolume /a (directories and files) and
// /s, a snapshot of it mid-fill (the fill never ran): /a changed after
// the snapshot (copies made first), /s changed too, three of its files
// deleted (whiteouts).
func snapImage(t *testing.T) (string, *snapWant) {
	t.Helper()
	img := smallImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, NoBackgroundFill: true})
	if err != nil {
		t.Fatal(err)
	}
	w := &snapWant{files: map[string][]byte{}}
	a, err := f.CreateSubvol(fs.RootIno, "a")
	if err != nil {
		t.Fatal(err)
	}
	for d := 0; d < 4; d++ {
		dir, err := f.Mkdir(a.RootIno, fmt.Sprint("d", d), fs.NewInode{Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 12; i++ {
			c, err := f.Create(dir.Ino, fmt.Sprint("f", i), fs.NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			data := bytes.Repeat([]byte(fmt.Sprintf("d%d/f%d ", d, i)), 40*(i+1))
			if _, err := f.Write(c.Ino, data, 0); err != nil {
				t.Fatal(err)
			}
			w.files[fmt.Sprintf("/a/d%d/f%d", d, i)] = data
			w.files[fmt.Sprintf("/s/d%d/f%d", d, i)] = data
		}
	}
	s, err := f.CreateSnapshot(a.RootIno, fs.RootIno, "s", false)
	if err != nil {
		t.Fatal(err)
	}
	w.snap = s.ID
	write := func(p string, data []byte) {
		at, err := f.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(at.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		w.files[p] = append(data, w.files[p][len(data):]...)
	}
	write("/a/d0/f3", []byte("SOURCE"))
	write("/s/d1/f4", []byte("SNAP"))
	for _, p := range []string{"/s/d2/f5", "/s/d2/f6", "/s/d3/f7"} {
		dir, err := f.Resolve(filepath.Dir(p))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink(dir.Ino, filepath.Base(p)); err != nil {
			t.Fatal(err)
		}
		delete(w.files, p)
		w.deleted = append(w.deleted, p)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img, w
}

// verifySnap requires every file of w to read as w says, through a fill
// run to its end, and the deleted ones gone from their paths.
func verifySnap(t *testing.T, f *fs.FS, w *snapWant) {
	t.Helper()
	for p, data := range w.files {
		at, err := f.Resolve(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got := make([]byte, len(data)+1)
		n, err := f.Read(at.Ino, got, 0)
		if err != nil || !bytes.Equal(got[:n], data) {
			t.Fatalf("%s: read %d bytes (%v), want %d", p, n, err, len(data))
		}
	}
	for _, p := range w.deleted {
		if _, err := f.Resolve(p); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("%s, deleted in the snapshot: %v", p, err)
		}
	}
}

// snapCopy writes pristine to a new image file in the test's directory.
func snapCopy(t *testing.T, pristine []byte) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	return img
}

// snapRepair mounts img without the background fill, scrubs it with
// repair and requires want (nil: any findings) and a corrected report;
// then it runs the fill to its end. It returns the mount and the report.
func snapRepair(t *testing.T, img string, want []string) (*fs.FS, *Report) {
	t.Helper()
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, NoBackgroundFill: true})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	if got := findingIDs(rep); want != nil && !slices.Equal(got, want) || rep.Status != StatusCorrected {
		f.Close()
		t.Fatalf("scrub --repair: %s %v, want corrected %v; notes %v", rep.Status, got, want, rep.Notes)
	}
	if err := f.Engine().RunPass(context.Background(), "snapshot_fill"); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f, rep
}

// snapWantIDs: the findings of each injection into the snapshot tree (one
// leaf) of snapImage.
var snapWantIDs = map[string][]string{
	"bitflip":     {"node_bad_checksum"},
	"zero":        {"node_bad_magic"},
	"drop-record": {"tree_item_count"},
	"wrong-owner": {"node_wrong_owner"},
	"stale-gen":   {"node_stale"},
}

// TestSnapshotTreeDamage damages the snapshot tree of an image with a
// snapshot mid-fill with every inject kind, and repairs it online through
// the ops table: exact finding ids, a corrected report and a clean scrub
// after; then the fill runs to its end (fsck --pass snapshot_fill's
// work) and every file of the source and of the snapshot reads as it
// did. A lost fill item is made again from the snapshot's item (the fill
// starts over); a lost whiteout lets the fill copy a deleted file back,
// unnamed, and the next scrub's link-count repair adopts it into
// lost+found: the deleted paths stay deleted.
func TestSnapshotTreeDamage(t *testing.T) {
	base, w := snapImage(t)
	if ids := checkNames(t, base); len(ids) != 0 {
		t.Fatalf("the image mid-fill checks with %v", ids)
	}
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range inject.Kinds {
		t.Run(kind, func(t *testing.T) {
			img := snapCopy(t, pristine)
			lv := 0
			if _, err := inject.Offline(img, inject.Options{Tree: format.TreeSnapshot, Kind: kind, Seed: 3, Level: &lv}); err != nil {
				if errors.Is(err, inject.ErrRefused) {
					t.Skipf("not injectable: %v", err)
				}
				t.Fatal(err)
			}
			want := snapWantIDs[kind]
			if got := checkNames(t, img); !slices.Equal(got, want) {
				t.Fatalf("the offline check finds %v, want %v", got, want)
			}
			f, rep := snapRepair(t, img, want)
			defer func() { f.Close() }()
			t.Logf("notes: %v", rep.Notes)
			if f.Engine().Sick(engine.StructSnapshot) {
				t.Fatal("the snapshot tree is still sick")
			}
			verifySnap(t, f, w)
			// Whiteouts lost: the deleted files came back unnamed; the
			// link-count repair adopts them.
			again, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil || again.Status == StatusUncorrected {
				t.Fatalf("scrub after the fill: %v %s %v %v", err, again.Status, findingIDs(again), again.Notes)
			}
			t.Logf("after the fill: %s %v", again.Status, findingIDs(again))
			verifySnap(t, f, w)
			f = remountClean(t, f, img)
			verifySnap(t, f, w)
		})
	}
}

// TestSnapshotItemFindings: each finding of the snapshot checker, made by
// editing the image, is reported with its id and repaired: a fill item of
// a subvolume that does not exist (snapshot_fill: dropped), whiteouts of a
// subvolume with no fill (snapshot_whiteout: dropped), a snapshot marked
// being filled whose fill item is gone (snapshot_fill, and its whiteouts
// snapshot_whiteout: the item made again, the whiteouts kept, the fill
// starts over), a fill item whose subvolume is not marked
// (snapshot_fill: marked again). The snapshot then reads as it did.
func TestSnapshotItemFindings(t *testing.T) {
	base, w := snapImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(tx *engine.Tx) error
		want []string
		note string
	}{
		{"fill of no subvolume", func(tx *engine.Tx) error {
			tr, err := tx.Tree(format.TreeSnapshot)
			if err != nil {
				return err
			}
			return tr.Put(format.SnapFillKey(77), (&format.SnapFillItem{Source: 1, Limit: 9}).Encode())
		}, []string{"snapshot_fill"}, "dropped 1"},
		{"whiteout of no fill", func(tx *engine.Tx) error {
			tr, err := tx.Tree(format.TreeSnapshot)
			if err != nil {
				return err
			}
			return tr.Put(format.SnapWhiteoutKey(1, 300), nil)
		}, []string{"snapshot_whiteout"}, "dropped 1"},
		{"fill item lost", func(tx *engine.Tx) error {
			tr, err := tx.Tree(format.TreeSnapshot)
			if err != nil {
				return err
			}
			_, err = tr.Delete(format.SnapFillKey(w.snap))
			return err
		}, []string{"snapshot_fill", "snapshot_whiteout"}, "made again from its item"},
		{"mark lost", func(tx *engine.Tx) error {
			tr, err := tx.Tree(format.TreeSubvol)
			if err != nil {
				return err
			}
			v, _, err := tr.Get(format.SubvolKey(w.snap), nil)
			if err != nil {
				return err
			}
			it, err := format.DecodeSubvolItem(v)
			if err != nil {
				return err
			}
			it.Flags &^= format.SubvolFilling
			return tr.Put(format.SubvolKey(w.snap), it.Encode())
		}, []string{"snapshot_fill"}, "marked being filled again"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := snapCopy(t, pristine)
			editImage(t, img, c.edit)
			if got := checkNames(t, img); !slices.Equal(got, c.want) {
				t.Fatalf("the offline check finds %v, want %v", got, c.want)
			}
			f, rep := snapRepair(t, img, c.want)
			defer func() { f.Close() }()
			if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, c.note) }) {
				t.Errorf("no note saying %q: %v", c.note, rep.Notes)
			}
			verifySnap(t, f, w)
			f = remountClean(t, f, img)
			verifySnap(t, f, w)
		})
	}
}

// TestSnapshotInodeTreeDamage: the inode tree's leaves damaged on an
// image with a snapshot mid-fill: the inode repair reconstructs what the
// damage took, but not the snapshot's inodes that only a name of its
// own names (it still reads those from its source: made up, they would
// hide the source's files); after the fill every file of the snapshot
// reads its bytes (a reconstructed size may round up to a block, with
// zeros).
func TestSnapshotInodeTreeDamage(t *testing.T) {
	base, w := snapImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			img := snapCopy(t, pristine)
			lv := 0
			if _, err := inject.Offline(img, inject.Options{Tree: format.TreeInode, Kind: inject.Zero, Seed: seed, Level: &lv}); err != nil {
				if errors.Is(err, inject.ErrRefused) {
					t.Skipf("not injectable: %v", err)
				}
				t.Fatal(err)
			}
			ran++
			f, _ := snapRepair(t, img, nil)
			defer func() { f.Close() }()
			for p, data := range w.files {
				if !strings.HasPrefix(p, "/s/") {
					continue
				}
				at, err := f.Resolve(p)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				got := make([]byte, at.Size)
				n, err := f.Read(at.Ino, got, 0)
				if err != nil || n < len(data) || !bytes.Equal(got[:len(data)], data) || len(bytes.Trim(got[len(data):n], "\x00")) != 0 {
					t.Fatalf("%s: read %d bytes (%v), want %d: %q…", p, n, err, len(data), got[:min(n, 12)])
				}
			}
			again, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil || again.Status == StatusUncorrected {
				t.Fatalf("scrub after the fill: %v %s %v", err, again.Status, findingIDs(again))
			}
		})
	}
	if ran == 0 {
		t.Fatal("no damage applied")
	}
}
