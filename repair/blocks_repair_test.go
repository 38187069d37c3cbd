package repair

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// blocksImage makes an image whose files' block counts come from every
// path that maps blocks: writes through a small delayed-allocation
// bound (each write past it writes the buffers out), overwrites, holes,
// a truncate into a block, whole and partial clones (shared extents),
// a copy, an empty file, a symlink, a subvolume and a snapshot of it
// part-filled (copy on use on both sides). It returns the image and the
// inode of each file by path.
func blocksImage(t *testing.T) (string, map[string]uint64) {
	t.Helper()
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, MaxDelayedBlocks: 16, NoBackgroundFill: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	inos := map[string]uint64{}
	mk := func(dir uint64, p string) uint64 {
		a, err := f.Create(dir, filepath.Base(p), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[p] = a.Ino
		return a.Ino
	}
	write := func(ino uint64, n int, off int64) {
		if _, err := f.Write(ino, bytes.Repeat([]byte{byte(ino)}, n), off); err != nil {
			t.Fatal(err)
		}
	}
	const bs = format.BlockSize
	big := mk(fs.RootIno, "/big")
	for i := range 12 {
		write(big, 7*bs, int64(i)*7*bs) // crosses the bound of 16 blocks
	}
	write(big, 3*bs, 5*bs) // overwrites
	holes := mk(fs.RootIno, "/holes")
	for i := range 6 {
		write(holes, bs+100, int64(i)*5*bs)
	}
	trunc := mk(fs.RootIno, "/trunc")
	write(trunc, 20*bs, 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(trunc, 5*bs+300); err != nil {
		t.Fatal(err)
	}
	clone := mk(fs.RootIno, "/clone")
	if err := f.Clone(big, clone); err != nil {
		t.Fatal(err)
	}
	write(clone, 2*bs, 30*bs) // the clone's own blocks amid shared ones
	if _, err := f.CloneRange(big, 10*bs, holes, 40*bs, 9*bs); err != nil {
		t.Fatal(err)
	}
	cp := mk(fs.RootIno, "/copy")
	if _, err := f.CopyRange(big, 100, cp, 100, 12*bs); err != nil {
		t.Fatal(err)
	}
	mk(fs.RootIno, "/empty")
	if _, err := f.Symlink(fs.RootIno, "link", "big", fs.NewInode{Mode: 0o777}); err != nil {
		t.Fatal(err)
	}
	sv, err := f.CreateSubvol(fs.RootIno, "a")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		ino := mk(sv.RootIno, fmt.Sprintf("/a/f%d", i))
		write(ino, (i+1)*bs-7, 0)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	snap, err := f.CreateSnapshot(sv.RootIno, fs.RootIno, "s", false)
	if err != nil {
		t.Fatal(err)
	}
	// Copy on use, either side: the snapshot's file before the source's
	// changes, the snapshot's own write.
	write(inos["/a/f1"], 3*bs, 2*bs)
	s2, err := f.Resolve("/s/f2")
	if err != nil {
		t.Fatal(err)
	}
	inos["/s/f2"] = s2.Ino
	write(s2.Ino, bs, 8*bs)
	if format.SubvolOf(s2.Ino) != snap.ID {
		t.Fatalf("/s/f2 is inode %d, not of snapshot %d", s2.Ino, snap.ID)
	}
	err = f.Close()
	f = nil
	if err != nil {
		t.Fatal(err)
	}
	return img, inos
}

// skewBlocks sets the block count of each inode of skew (path → the
// count to store) in tx, and returns the counts they had.
func skewBlocks(t *testing.T, tx *engine.Tx, inos map[string]uint64, skew map[string]uint64) map[uint64]uint64 {
	t.Helper()
	was := map[uint64]uint64{}
	for p, n := range skew {
		ino := inos[p]
		old, ok, err := fs.SetBlocks(tx, ino, n)
		if err != nil || !ok {
			t.Fatalf("%s: %v %v", p, ok, err)
		}
		was[ino] = old
	}
	return was
}

// blocksWanted requires every inode of want (inode → block count) to
// show that count.
func blocksWanted(t *testing.T, f *fs.FS, want map[uint64]uint64) {
	t.Helper()
	for ino, n := range want {
		a, err := f.GetAttr(ino)
		if err != nil {
			t.Fatal(err)
		}
		if a.Blocks != n {
			t.Errorf("inode %d: %d blocks, want %d", ino, a.Blocks, n)
		}
	}
}

// blocksNotes requires a note of the repair of each inode of want.
func blocksNotes(t *testing.T, rep *Report, want map[uint64]uint64) {
	t.Helper()
	notes := strings.Join(rep.Notes, "\n")
	for ino := range want {
		if !strings.Contains(notes, fmt.Sprintf("inode %d: block count", ino)) {
			t.Errorf("no note of inode %d's block count: %s", ino, notes)
		}
	}
}

// TestInodeBlocksOffline: block counts made wrong (too small, as a write
// past the delayed-allocation bound used to store; too large; on a file
// with no blocks; on a clone) on an image whose counts come from every
// path that maps blocks: the untouched image checks clean; the offline
// check finds exactly inode_blocks, once per file; the offline repair
// sets every count from the extent items, and the image checks clean
// again. The image checks clean with its snapshot filled too. A file
// whose extent items cannot all be read is not reported for its count.
func TestInodeBlocksOffline(t *testing.T) {
	base, inos := blocksImage(t)
	pristine, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if got := checkNames(t, base); len(got) != 0 {
		t.Fatalf("the image as written checks %v", got)
	}
	t.Run("snapshot filled", func(t *testing.T) {
		// The snapshot's every inode copied, its counts judged.
		img := snapCopy(t, pristine)
		f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, NoBackgroundFill: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Engine().RunPass(context.Background(), "snapshot_fill"); err != nil {
			f.Close()
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if got := checkNames(t, img); len(got) != 0 {
			t.Fatalf("the image with its snapshot filled checks %v", got)
		}
	})
	skew := map[string]uint64{"/big": 8, "/clone": 1000, "/empty": 3, "/a/f3": 1, "/holes": 0}
	t.Run("repair", func(t *testing.T) {
		img := snapCopy(t, pristine)
		var want map[uint64]uint64
		editImage(t, img, func(tx *engine.Tx) error {
			want = skewBlocks(t, tx, inos, skew)
			return nil
		})
		rep, err := CheckOffline(context.Background(), img, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := findingIDs(rep); !slices.Equal(got, []string{"inode_blocks"}) || rep.Found != len(skew) {
			t.Fatalf("the offline check finds %v (%d), want inode_blocks (%d): %+v", got, rep.Found, len(skew), rep.Structures)
		}
		f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, NoBackgroundFill: true})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { f.Close() }()
		rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if got := findingIDs(rep); !slices.Equal(got, []string{"inode_blocks"}) || rep.Status != StatusCorrected {
			t.Fatalf("fsck --repair: %s %v; notes %v", rep.Status, got, rep.Notes)
		}
		blocksNotes(t, rep, want)
		blocksWanted(t, f, want)
		f = remountClean(t, f, img)
		blocksWanted(t, f, want)
	})
	t.Run("unreadable extent item", func(t *testing.T) {
		img := snapCopy(t, pristine)
		editImage(t, img, func(tx *engine.Tx) error {
			skewBlocks(t, tx, inos, map[string]uint64{"/holes": 1})
			tr, err := tx.Tree(format.TreeExtent)
			if err != nil {
				return err
			}
			k, _, ok, err := tr.First(format.FileExtentKey(inos["/holes"], 0))
			if err != nil || !ok || k.Obj != inos["/holes"] {
				return fmt.Errorf("no extent of /holes: %v", err)
			}
			return tr.Put(k, []byte("not a file extent"))
		})
		got := checkNames(t, img)
		if !slices.Contains(got, "item_bad") || slices.Contains(got, "inode_blocks") {
			t.Fatalf("the offline check finds %v, want item_bad and no inode_blocks", got)
		}
	})
}

// TestInodeBlocksOnline: block counts made wrong on a mounted image
// while a writer keeps writing (buffered, written out, truncated,
// cloned) to files of its own: scrub finds exactly inode_blocks, once
// per skewed file; scrub --repair sets the counts; the next scrub is
// clean, and after unmount the offline check too.
func TestInodeBlocksOnline(t *testing.T) {
	img, inos := blocksImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond, MaxDelayedBlocks: 16, NoBackgroundFill: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { f.Close() }()
	stop := blocksWriter(t, f)
	time.Sleep(150 * time.Millisecond) // commits of the writer's changes
	e := f.Engine()
	skew := map[string]uint64{"/big": 8, "/clone": 1000, "/empty": 3, "/a/f3": 1}
	var want map[uint64]uint64
	if err := e.Update(func(tx *engine.Tx) error {
		want = skewBlocks(t, tx, inos, skew)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := findingIDs(rep); !slices.Equal(got, []string{"inode_blocks"}) || rep.Found != len(skew) {
		stop()
		t.Fatalf("scrub finds %v (%d), want inode_blocks (%d): %+v", got, rep.Found, len(skew), rep.Structures)
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		stop()
		t.Fatal(err)
	}
	if got := findingIDs(rep); !slices.Equal(got, []string{"inode_blocks"}) || rep.Status != StatusCorrected {
		stop()
		t.Fatalf("scrub --repair: %s %v; notes %v", rep.Status, got, rep.Notes)
	}
	blocksNotes(t, rep, want)
	if rep, err = Scrub(context.Background(), f, "test", ScrubOptions{}); err != nil || rep.Status != StatusClean {
		stop()
		t.Fatalf("second scrub: %v %s %v", err, rep.Status, findingIDs(rep))
	}
	stop()
	blocksWanted(t, f, want)
	f = remountClean(t, f, img)
	blocksWanted(t, f, want)
}

// blocksWriter changes the mapping of files of its own until stopped:
// writes past the delayed-allocation bound, overwrites, truncates,
// clones.
func blocksWriter(t *testing.T, f *fs.FS) (stop func()) {
	t.Helper()
	const bs = format.BlockSize
	dir, err := f.Mkdir(fs.RootIno, "busy", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := bytes.Repeat([]byte("w"), 9*bs)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			a, err := f.Create(dir.Ino, fmt.Sprint("w", i), fs.NewInode{Mode: 0o644})
			if err != nil {
				werr = err
				return
			}
			for j := range 3 {
				if _, err := f.Write(a.Ino, buf[:(j+1)*3*bs-j], int64(j)*5*bs); err != nil {
					werr = err
					return
				}
			}
			switch i % 4 {
			case 1:
				err = f.Truncate(a.Ino, 3*bs+17)
			case 2:
				c, cerr := f.Create(dir.Ino, fmt.Sprint("c", i), fs.NewInode{Mode: 0o644})
				if err = cerr; err == nil {
					err = f.Clone(a.Ino, c.Ino)
				}
			case 3:
				err = f.Fsync(a.Ino)
			}
			if err != nil {
				werr = fmt.Errorf("file %d: %w", i, err)
				return
			}
			if i%5 == 4 {
				if err := f.Unlink(dir.Ino, fmt.Sprint("w", i-4)); err != nil {
					werr = err
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if werr != nil {
			t.Fatalf("writer: %v", werr)
		}
	}
}
