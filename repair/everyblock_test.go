package repair

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// smallTreeImage builds a small image whose trees still have interior
// nodes: files in the root and in nested directories, of one to three
// extents each, some ending mid-block, some unlinked again. It returns
// the image and what each file holds, by inode number.
func smallTreeImage(t *testing.T) (string, map[uint64][]byte) {
	t.Helper()
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(17, 4))
	want := map[uint64][]byte{}
	d1, err := f.Mkdir(fs.RootIno, "d1", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := f.Mkdir(d1.Ino, "sub", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	d3, err := f.Mkdir(fs.RootIno, "d3", fs.NewInode{Mode: 0o700})
	if err != nil {
		t.Fatal(err)
	}
	dirs := []uint64{fs.RootIno, d1.Ino, d2.Ino, d3.Ino}
	for i := 0; i < 240; i++ {
		dir := dirs[i%len(dirs)]
		a, err := f.Create(dir, fmt.Sprintf("file-with-a-longer-name-%04d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		var content []byte
		for j := 0; j <= i%3; j++ {
			at := j * 2 * format.BlockSize
			buf := make([]byte, 1+r.IntN(2*format.BlockSize))
			for k := range buf {
				buf[k] = byte(r.Uint32())
			}
			if _, err := f.Write(a.Ino, buf, int64(at)); err != nil {
				t.Fatal(err)
			}
			if end := at + len(buf); end > len(content) {
				content = append(content, make([]byte, end-len(content))...)
			}
			copy(content[at:], buf)
		}
		want[a.Ino] = content
		if i%7 == 3 {
			if err := f.Unlink(dir, fmt.Sprintf("file-with-a-longer-name-%04d", i)); err != nil {
				t.Fatal(err)
			}
			delete(want, a.Ino)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img, want
}

// metaBlock is a metadata block of an image and the structure owning it.
type metaBlock struct {
	block format.BlockNr
	owner format.TreeID
}

// metadataBlocks lists every block the image's rmap says a tree (or the
// superblock) owns.
func metadataBlocks(t *testing.T, img string) []metaBlock {
	t.Helper()
	f, err := fs.OpenPath(img, fs.Options{ReadOnly: true, CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []metaBlock
	err = scanTree(f.Engine().Pin(), format.TreeRmap, func(k format.Key, v []byte) error {
		o, ok := format.RmapOwner(k)
		if !ok || o.IsData() {
			return nil
		}
		out = append(out, metaBlock{format.BlockNr(k.Obj), o.Tree})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEveryMetadataBlock is the property "one damaged metadata block never
// costs the image": on a small populated image, each metadata block in
// turn gets one flipped byte; the check finds it, an offline repair (fsck
// --repair) opens the image and corrects it (exit 1), the check after it
// is clean (exit 0), and every file is still reachable — under its name,
// or in /lost+found when its names were lost — and reads back byte for
// byte (a file whose inode item was reconstructed may read longer, the
// guessed size past the data reading as zeros; never a wrong byte).
//
// Offline and single-goroutine: it runs in the full pass (every block),
// not under the race detector.
func TestEveryMetadataBlock(t *testing.T) {
	skipShort(t)
	base, want := smallTreeImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	blocks := metadataBlocks(t, base)
	owners := map[format.TreeID]int{}
	for _, b := range blocks {
		owners[b.owner]++
	}
	t.Logf("%d metadata blocks: %v", len(blocks), owners)
	for _, tree := range []format.TreeID{format.TreeInode, format.TreeDir, format.TreeExtent, format.TreeRmap, format.TreeAlloc} {
		if owners[tree] < 3 {
			t.Fatalf("the %s tree has %d blocks: no interior node to damage", tree, owners[tree])
		}
	}
	img := filepath.Join(t.TempDir(), "case.img")
	for _, mb := range blocks {
		name := fmt.Sprintf("%s_block%d", mb.owner, mb.block)
		t.Run(name, func(t *testing.T) {
			damaged := slices.Clone(pristine)
			at := int(mb.block)*format.BlockSize + 2048
			if at >= len(damaged) {
				t.Fatalf("block %d past the image", mb.block)
			}
			damaged[at] ^= 0x40
			if err := os.WriteFile(img, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			everyBlockCase(t, img, want, mb.owner)
		})
	}
}

func everyBlockCase(t *testing.T, img string, want map[uint64][]byte, owner format.TreeID) {
	before, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	// The fsync log's head block holds nothing until the next fsync
	// writes it (the chain ends before it): damage there is no damage.
	unused := owner == format.TreeLog && before.Found == 0
	if before.Found == 0 && !unused {
		t.Fatal("the check found nothing")
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatalf("fsck --repair cannot open the image: %v", err)
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("repair: %v", err)
	}
	if wantStatus := map[bool]string{false: StatusCorrected, true: StatusClean}[unused]; rep.Status != wantStatus {
		t.Fatalf("repair: status %s (found %d); notes %v", rep.Status, before.Found, rep.Notes)
	}
	after, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Found != 0 {
		t.Fatalf("the check after the repair found %d: %v", after.Found, findingNames(after))
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if rep, err := CheckOffline(context.Background(), img, Options{}); err != nil || rep.Found != 0 {
			t.Fatalf("after reading: check %v, %v", err, rep)
		}
	}()
	seen := map[uint64]bool{}
	var walk func(dir uint64, path string)
	walk = func(dir uint64, path string) {
		var ents []fs.DirEntry
		if err := f.ReadDir(dir, 0, func(de fs.DirEntry) bool {
			ents = append(ents, de)
			return true
		}); err != nil {
			t.Fatalf("readdir %s: %v", path, err)
		}
		for _, de := range ents {
			if de.Name == "." || de.Name == ".." {
				continue
			}
			p := path + "/" + de.Name
			a, err := f.Lookup(dir, de.Name)
			if err != nil {
				t.Fatalf("lookup %s: %v", p, err)
			}
			if a.Mode&0o170000 == 0o040000 {
				walk(a.Ino, p)
				continue
			}
			w, ok := want[a.Ino]
			if !ok {
				t.Fatalf("%s: inode %d is no file of the image", p, a.Ino)
			}
			seen[a.Ino] = true
			got := make([]byte, a.Size)
			n, err := f.Read(a.Ino, got, 0)
			if err != nil {
				t.Fatalf("%s: read: %v", p, err)
			}
			got = got[:n]
			if len(got) < len(w) || !bytes.Equal(got[:len(w)], w) || bytes.ContainsFunc(got[len(w):], func(r rune) bool { return r != 0 }) {
				t.Fatalf("%s (inode %d): read %d bytes, want %d: wrong bytes", p, a.Ino, len(got), len(w))
			}
		}
	}
	walk(fs.RootIno, "")
	for ino := range want {
		if !seen[ino] {
			t.Errorf("file inode %d reached by no name after the repair", ino)
		}
	}
}

// findingNames lists the finding names of a report.
func findingNames(rep *Report) []string {
	var out []string
	for _, s := range rep.Structures {
		for _, fd := range s.Findings {
			out = append(out, s.Name+":"+fd.Name)
		}
	}
	return out
}
