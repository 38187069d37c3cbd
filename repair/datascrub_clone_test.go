package repair

import (
	"bytes"
	"context"
	"os"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// TestDataScrubSharedBlocks: a damaged block that clones share is one
// finding per file that maps it, each with that file's own path and
// offset ("--data names every file that shares a damaged block"); a block
// only some of them still share (the others overwrote theirs) is named in
// those only. The file-by-file scrub, which reads each file through the
// filesystem, agrees.
func TestDataScrubSharedBlocks(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(dir uint64, name string) uint64 {
		a, err := f.Create(dir, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		return a.Ino
	}
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i*13) ^ byte(i>>12)
	}
	src := mk(fs.RootIno, "src")
	if _, err := f.Write(src, data, 0); err != nil {
		t.Fatal(err)
	}
	d, err := f.Mkdir(fs.RootIno, "d", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	whole, part := mk(fs.RootIno, "whole"), mk(d.Ino, "part")
	// whole: all of src at 0; part: src's blocks 4..7 at its blocks 8..11.
	if n, err := f.CloneRange(src, 0, whole, 0, int64(len(data))); err != nil || n != int64(len(data)) {
		t.Fatalf("clone src → whole: %d, %v", n, err)
	}
	if n, err := f.CloneRange(src, 16<<10, part, 32<<10, 16<<10); err != nil || n != 16<<10 {
		t.Fatalf("clone src → part: %d, %v", n, err)
	}
	// whole's block 12 becomes its own: src keeps the old one alone.
	if _, err := f.Write(whole, bytes.Repeat([]byte{7}, format.BlockSize), 48<<10); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	type at struct {
		path string
		ino  uint64
		off  uint64
	}
	// Each damaged block and every file offset that must name it.
	cases := [][]at{
		{{"/src", src, 20 << 10}, {"/whole", whole, 20 << 10}, {"/d/part", part, 36 << 10}}, // three owners
		{{"/src", src, 0}, {"/whole", whole, 0}},                                            // two
		{{"/src", src, 48 << 10}},                                                           // whole rewrote its copy
	}
	var want []dataHit
	var damage []format.BlockNr
	for _, c := range cases {
		b := diskOf(t, f, c[0].ino, c[0].off)
		if b == 0 {
			t.Fatalf("%s offset %d is not mapped", c[0].path, c[0].off)
		}
		for _, o := range c {
			if got := diskOf(t, f, o.ino, o.off); got != b {
				t.Fatalf("%s offset %d is at disk block %d, not the shared %d", o.path, o.off, got, b)
			}
			want = append(want, dataHit{o.path, o.ino, o.off, b})
		}
		damage = append(damage, b)
	}
	if own := diskOf(t, f, whole, 48<<10); own == damage[2] || own == 0 {
		t.Fatalf("whole's overwritten block is at %d, src's at %d", own, damage[2])
	}
	sortHits(want)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range damage {
		if _, err := fh.WriteAt(bytes.Repeat([]byte{0xee}, format.BlockSize), int64(b)*format.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}

	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustClean(t, f.Engine()); f.Close() })
	ctx := context.Background()
	rep, err := Scrub(ctx, f, img, ScrubOptions{Data: true, Mode: "offline"})
	if err != nil {
		t.Fatal(err)
	}
	if got := reportHits(rep); !slices.Equal(got, want) || rep.Found != len(want) {
		t.Fatalf("the scrub found (%d in all)\n%v\nwant\n%v", rep.Found, got, want)
	}
	old, _, err := scrubDataByFile(ctx, f, nil, true, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := hitsOf(t, old); !slices.Equal(got, want) {
		t.Fatalf("the file-by-file scrub found\n%v\nwant\n%v", got, want)
	}
}

// TestDataScrubSnapshotShared: a damaged block that a subvolume and two
// snapshots of it share is one finding per owner, each with its own path
// ("damage in a block shared by several snapshots is reported once per
// owner"); a block the source rewrote after the snapshots is named
// in the source only, the old one in the snapshots only.
func TestDataScrubSnapshotShared(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	sv, err := f.CreateSubvol(fs.RootIno, "a")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(sv.RootIno, "f", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i*7) ^ byte(i>>11)
	}
	if _, err := f.Write(a.Ino, data, 0); err != nil {
		t.Fatal(err)
	}
	s1, err := f.CreateSnapshot(sv.RootIno, fs.RootIno, "s1", true)
	if err != nil {
		t.Fatal(err)
	}
	f.WaitFill()
	s2, err := f.CreateSnapshot(sv.RootIno, fs.RootIno, "s2", false)
	if err != nil {
		t.Fatal(err)
	}
	f.WaitFill()
	// The source rewrites its block 3 after both snapshots.
	if _, err := f.Write(a.Ino, bytes.Repeat([]byte{9}, format.BlockSize), 3*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	ino := func(p string) uint64 {
		at, err := f.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		return at.Ino
	}
	f1, f2 := ino("/s1/f"), ino("/s2/f")
	if fs.SubvolOf(f1) != s1.ID || fs.SubvolOf(f2) != s2.ID {
		t.Fatalf("snapshot files %#x %#x", f1, f2)
	}
	shared := diskOf(t, f, a.Ino, 1<<12)
	old := diskOf(t, f, f1, 3<<12)
	own := diskOf(t, f, a.Ino, 3<<12)
	if diskOf(t, f, f1, 1<<12) != shared || diskOf(t, f, f2, 1<<12) != shared || diskOf(t, f, f2, 3<<12) != old || own == old {
		t.Fatal("the blocks are not shared as the test expects")
	}
	want := []dataHit{
		{"/a/f", a.Ino, 1 << 12, shared}, {"/s1/f", f1, 1 << 12, shared}, {"/s2/f", f2, 1 << 12, shared},
		{"/s1/f", f1, 3 << 12, old}, {"/s2/f", f2, 3 << 12, old},
		{"/a/f", a.Ino, 3 << 12, own},
	}
	sortHits(want)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []format.BlockNr{shared, old, own} {
		if _, err := fh.WriteAt(bytes.Repeat([]byte{0xee}, format.BlockSize), int64(b)*format.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustClean(t, f.Engine()); f.Close() })
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Data: true, Mode: "offline"})
	if err != nil {
		t.Fatal(err)
	}
	if got := reportHits(rep); !slices.Equal(got, want) || rep.Found != len(want) {
		t.Fatalf("the scrub found (%d in all)\n%v\nwant\n%v", rep.Found, got, want)
	}
}
