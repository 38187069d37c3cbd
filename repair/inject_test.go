package repair

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// populatedImage makes an image whose trees are at least two levels deep:
// 600 files of 1-5 small extents each, every other one removed again so
// that the free space is fragmented too.
func populatedImage(t *testing.T) string {
	t.Helper()
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 600; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%04d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		// Writes at gaps make several extents per file.
		for j := 0; j <= i%5; j++ {
			if _, err := f.Write(a.Ino, populatedBuf[:4096+j*100], int64(j)*3*format.BlockSize); err != nil {
				t.Fatal(err)
			}
		}
		// An attribute per file: the xattr tree has interior nodes (the
		// unlinks below drop half of them).
		if err := f.SetXattr(a.Ino, "user.p", populatedBuf[:40+i%20], 0); err != nil {
			t.Fatal(err)
		}
	}
	// Written out (delayed allocation) before half go again.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 600; i += 2 {
		if err := f.Unlink(fs.RootIno, fmt.Sprintf("f%04d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

var populatedBuf = bytes.Repeat([]byte("scrubd"), 2000)

// populatedWant is what file i of populatedImage holds.
func populatedWant(i int) []byte {
	var want []byte
	for j := 0; j <= i%5; j++ {
		at := j * 3 * format.BlockSize
		if end := at + 4096 + j*100; end > len(want) {
			want = append(want, make([]byte, end-len(want))...)
		}
		copy(want[at:], populatedBuf[:4096+j*100])
	}
	return want
}

// readPopulated reads every file populatedImage left (the odd ones): by
// name, what a read returns (nil if it fails).
func readPopulated(t *testing.T, f *fs.FS) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for i := 1; i < 600; i += 2 {
		name := fmt.Sprintf("f%04d", i)
		a, err := f.Lookup(fs.RootIno, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]byte, a.Size)
		if n, err := f.Read(a.Ino, got, 0); err == nil {
			out[name] = got[:n]
		}
	}
	return out
}

// verifyPopulated fails the test unless every file populatedImage left
// holds exactly what was written (want nil), or what want holds.
func verifyPopulated(t *testing.T, f *fs.FS, want map[string][]byte) {
	t.Helper()
	got := readPopulated(t, f)
	for i := 1; i < 600; i += 2 {
		name := fmt.Sprintf("f%04d", i)
		w := populatedWant(i)
		if want != nil {
			w = want[name]
		}
		if g, ok := got[name]; !ok || !bytes.Equal(g, w) {
			t.Fatalf("%s: read %d bytes (ok %v), want %d", name, len(g), ok, len(w))
		}
	}
}

// repairOutcome repairs img offline, as fsck --repair does, when the ops
// table has a repairer for tree, and says how it went (" -> corrected" and
// so on, "" without a repairer). A repair that reports corrected must
// leave an image an offline check finds clean; one that does not must not
// leave more findings than it found.
func repairOutcome(t *testing.T, img string, tree format.TreeID) string {
	t.Helper()
	if op := opOfTree(tree); op == nil || op.Repair == nil {
		return ""
	}
	before, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		return " -> cannot open"
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
	if err == nil && rep.Status == StatusCorrected {
		// Corrected means every file reads back as written.
		verifyPopulated(t, f, reconstructedWant(t, rep))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("repair of %s: %v", img, err)
	}
	after, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case rep.Status == StatusCorrected && after.Found != 0:
		t.Errorf("%s: repair said corrected, the check after it found %d: %+v", tree, after.Found, after.Structures)
	case after.Found > before.Found:
		t.Errorf("%s: repair made the image worse: %d findings before, %d after; notes %v", tree, before.Found, after.Found, rep.Notes)
	}
	return " -> " + rep.Status
}

// TestInjectMatrix damages every tree whose repair the ops table plans,
// with every kind, at a leaf and at an interior node, and asserts the exact
// finding ids an offline check reports and, for a tree with a repairer,
// how an offline repair (fsck --repair) ends (testdata/inject_matrix.golden,
// rewritten with -update). A kind that cannot apply must be refused with
// inject.ErrRefused, not silently do something else.
func TestInjectMatrix(t *testing.T) {
	skipShort(t)
	base := populatedImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	trees := []format.TreeID{format.TreeRoot, format.TreeAlloc, format.TreeFree, format.TreeExtent, format.TreeRmap,
		format.TreeCsum, format.TreeInode, format.TreeDir, format.TreeDeleted, format.TreeLoggedOps,
		format.TreeSubvol, format.TreeSnapshot, format.TreeUUID, format.TreeXattr}
	var got strings.Builder
	img := filepath.Join(t.TempDir(), "case.img")
	for _, tree := range trees {
		for _, kind := range inject.Kinds {
			for level := 0; level <= 1; level++ {
				if err := os.WriteFile(img, pristine, 0o600); err != nil {
					t.Fatal(err)
				}
				lv := level
				res, err := inject.Offline(img, inject.Options{Tree: tree, Kind: kind, Seed: 5, Level: &lv})
				line := fmt.Sprintf("%s %s level=%d:", tree, kind, level)
				if err != nil {
					if !errors.Is(err, inject.ErrRefused) {
						t.Fatalf("%s %v", line, err)
					}
					fmt.Fprintf(&got, "%s refused\n", line)
					continue
				}
				if res.Level != level {
					t.Fatalf("%s damaged a node of level %d", line, res.Level)
				}
				rep, err := CheckOffline(context.Background(), img, Options{})
				if err != nil {
					t.Fatalf("%s check: %v", line, err)
				}
				var ids []string
				for _, s := range rep.Structures {
					for _, fd := range s.Findings {
						if !slices.Contains(ids, fd.Name) {
							ids = append(ids, fd.Name)
						}
					}
				}
				slices.Sort(ids)
				if len(ids) == 0 {
					t.Errorf("%s %s: the check found nothing", line, res.Detail)
				}
				fmt.Fprintf(&got, "%s %s%s\n", line, strings.Join(ids, " "), repairOutcome(t, img, tree))
			}
		}
	}
	golden := filepath.Join("testdata", "inject_matrix.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got.String() != string(want) {
		t.Errorf("findings differ from %s:\n got:\n%s\nwant:\n%s", golden, got.String(), want)
	}
}
