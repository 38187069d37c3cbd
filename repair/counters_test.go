package repair

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// skewItemCount adds delta to the item count the root tree records for
// tree id in the image at path (the root tree's leaf resealed: a counter
// wrong, nothing else).
func skewItemCount(t *testing.T, path string, id format.TreeID, delta int64) {
	t.Helper()
	e, err := engine.OpenPath(path, engine.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	root := s.Super().Root
	s.Release()
	e.Close()
	if root.Level != 0 {
		t.Fatalf("root tree of level %d", root.Level)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := format.Node(img[int(root.Block)*format.BlockSize : int(root.Block+1)*format.BlockSize])
	for i := 0; i < n.NrItems(); i++ {
		if n.Key(i) == format.RootKey(id) {
			v := n.Value(i)
			binary.LittleEndian.PutUint64(v[24:], uint64(int64(binary.LittleEndian.Uint64(v[24:]))+delta))
			n.Seal()
			if err := os.WriteFile(path, img, 0o600); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no root item for %s", id)
}

// TestRecountItems: a tree's item count recorded wrong, nothing else
// wrong, on a mount with a writer: scrub finds exactly tree_item_count;
// scrub --repair recounts (exit 1, a note saying recorded and found); the
// next scrub is clean, and the writer's data survives a remount.
func TestRecountItems(t *testing.T) {
	for _, c := range []struct {
		tree  format.TreeID
		delta int64
	}{{format.TreeInode, 7}, {format.TreeExtent, -3}, {format.TreeAlloc, 2}} {
		t.Run(c.tree.String(), func(t *testing.T) {
			if testing.Short() && c.tree != format.TreeInode {
				t.Skip("one tree under -short (the race pass); the full pass recounts all three")
			}
			img := filepath.Join(t.TempDir(), "fs.img")
			pristine, err := os.ReadFile(populatedImage(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			skewItemCount(t, img, c.tree, c.delta)
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			w, stop := startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}}, 4, 100)
			rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Found != 1 || !hasFinding(rep, "tree_item_count") {
				t.Fatalf("scrub: found %d: %+v", rep.Found, rep.Structures)
			}
			rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != StatusCorrected || !strings.Contains(strings.Join(rep.Notes, "\n"), "recounted the "+c.tree.String()) {
				t.Fatalf("repair: %s, notes %v", rep.Status, rep.Notes)
			}
			if rep, err = Scrub(context.Background(), f, "test", ScrubOptions{}); err != nil || rep.Status != StatusClean {
				t.Fatalf("second scrub: %v %+v", err, rep)
			}
			stop()
			f = remountClean(t, f, img)
			defer f.Close()
			w.verify(t, f)
			verifyPopulated(t, f, nil)
		})
	}
}

// TestOpenRecountsFreeBlocks: every superblock copy counting the free
// blocks wrong (nothing else wrong): the offline check finds exactly
// super_free_count; fsck --repair's open recomputes it, and its report
// counts it found and repaired; the check after is clean.
func TestOpenRecountsFreeBlocks(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range format.SuperBlocks(uint64(len(pristine)) / format.BlockSize) {
		b := pristine[int(at)*format.BlockSize : int(at+1)*format.BlockSize]
		sb, err := format.DecodeSuper(b, at)
		if err != nil {
			t.Fatal(err)
		}
		sb.FreeBlocks -= 11
		sb.Encode(b)
	}
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckOffline(context.Background(), img, Options{})
	if err != nil || rep.Found != 1 || !hasFinding(rep, "super_free_count") {
		t.Fatalf("check: %v %+v", err, rep)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || rep.Status != StatusCorrected || rep.Found != 1 || rep.Repaired != 1 {
		t.Fatalf("fsck --repair: %v %s found %d repaired %d %v", err, rep.Status, rep.Found, rep.Repaired, rep.Notes)
	}
	if rep, err = CheckOffline(context.Background(), img, Options{}); err != nil || rep.Status != StatusClean {
		t.Fatalf("check after: %v %+v", err, rep)
	}
}
