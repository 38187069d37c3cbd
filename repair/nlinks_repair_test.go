package repair

import (
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

// namespaceWriter creates, renames and unlinks files and directories in
// directory dir until stopped: the churn the link-count repair must
// follow.
func namespaceWriter(t *testing.T, f *fs.FS, dir uint64) (stop func()) {
	t.Helper()
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
			name := fmt.Sprintf("n%d", i)
			if _, err := f.Create(dir, name, fs.NewInode{Mode: 0o644}); err != nil {
				werr = fmt.Errorf("create %s: %w", name, err)
				return
			}
			if err := f.Rename(dir, name, dir, "r"+name, 0); err != nil {
				werr = fmt.Errorf("rename %s: %w", name, err)
				return
			}
			if i%3 == 0 {
				if err := f.Unlink(dir, "r"+name); err != nil {
					werr = fmt.Errorf("unlink %s: %w", name, err)
					return
				}
			}
			if i%5 == 0 {
				if _, err := f.Mkdir(dir, "d"+name, fs.NewInode{Mode: 0o755}); err != nil {
					werr = fmt.Errorf("mkdir %s: %w", name, err)
					return
				}
			}
			if i%10 == 5 {
				if err := f.Rmdir(dir, fmt.Sprintf("dn%d", i-5)); err != nil {
					werr = fmt.Errorf("rmdir: %w", err)
					return
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if werr != nil {
			t.Fatalf("namespace writer: %v", werr)
		}
	}
}

// unlinkEntryOnly removes the directory entry name of dir (both its
// items) and nothing else: the inode keeps its link count, no name
// reaches it.
func unlinkEntryOnly(t *testing.T, e *engine.Engine, dir uint64, name string) uint64 {
	t.Helper()
	var ino uint64
	err := e.Update(func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeDir)
		if err != nil {
			return err
		}
		var keys []format.Key
		if err := tr.Ascend(format.Key{Obj: dir}, func(k format.Key, v []byte) bool {
			if k.Obj != dir {
				return false
			}
			if k.Type == format.TypeDirEntry || k.Type == format.TypeDirIndex {
				de, err := format.DecodeDirEntry(v)
				if err == nil && de.Name == name {
					keys, ino = append(keys, k), de.Ino
				}
			}
			return true
		}); err != nil {
			return err
		}
		if len(keys) != 2 {
			return fmt.Errorf("entry %q: %d items", name, len(keys))
		}
		for _, k := range keys {
			if _, err := tr.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// TestNlinkRepairUnderWriter: link counts set wrong on files and
// directories, and a file and a directory whose entries are removed (no
// name reaches them), while a writer creates, renames and unlinks in the
// same directories: scrub finds exactly nlink_mismatch; scrub --repair
// fixes every count, links the two orphans into /lost+found under their
// inode numbers (the notes say so) with their contents intact; the next
// scrub is clean, and after unmount the offline check too.
func TestNlinkRepairUnderWriter(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := readPopulated(t, f)
	var names []string
	for p := range want {
		names = append(names, p)
	}
	slices.Sort(names)
	// The victims: counts skewed on files, an orphaned file and an
	// orphaned directory (with a file in it).
	busy, err := f.Mkdir(fs.RootIno, "busy", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	odir, err := f.Mkdir(busy.Ino, "lostdir", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := f.Create(odir.Ino, "inner", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(inner.Ino, []byte("inside the lost directory"), 0); err != nil {
		t.Fatal(err)
	}
	stop := namespaceWriter(t, f, busy.Ino)
	e := f.Engine()
	var skewed []uint64
	for i, p := range names[:3] {
		a, err := f.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Update(func(tx *engine.Tx) error {
			_, _, err := fs.SetNlink(tx, a.Ino, uint32(3+i))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		skewed = append(skewed, a.Ino)
	}
	if err := e.Update(func(tx *engine.Tx) error {
		_, _, err := fs.SetNlink(tx, busy.Ino, 40)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	orphan, orphanPath := names[3], ""
	oa, err := f.Resolve(orphan)
	if err != nil {
		t.Fatal(err)
	}
	dir, base, err := f.ResolveParent(orphan)
	if err != nil {
		t.Fatal(err)
	}
	unlinkEntryOnly(t, e, dir, base)
	unlinkEntryOnly(t, e, busy.Ino, "lostdir")
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Structures {
		for _, fd := range s.Findings {
			if fd.Name != "nlink_mismatch" {
				t.Errorf("%s: %s: %s", s.Name, fd.Name, fd.Detail)
			}
		}
	}
	if rep.Found < 6 {
		t.Fatalf("scrub found %d: %+v", rep.Found, rep.Structures)
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(rep.Notes, "\n")
	if rep.Status != StatusCorrected {
		var left []string
		for _, s := range rep.Structures {
			for _, fd := range s.Findings {
				if !fd.Repaired {
					left = append(left, s.Name+": "+fd.Name+": "+fd.Detail)
				}
			}
		}
		stop()
		t.Fatalf("repair: %s: %v\nleft: %v", rep.Status, rep.Notes, left)
	}
	for _, ino := range append(skewed, busy.Ino) {
		if !strings.Contains(notes, fmt.Sprintf("inode %d: link count", ino)) {
			t.Errorf("no note of inode %d's count: %s", ino, notes)
		}
	}
	for _, ino := range []uint64{oa.Ino, odir.Ino} {
		p := fmt.Sprintf("/lost+found/#%d", ino)
		if !strings.Contains(notes, "linked as "+p) {
			t.Errorf("no note of %s: %s", p, notes)
		}
		if ino == oa.Ino {
			orphanPath = p
		}
	}
	stop()
	if rep, err = Scrub(context.Background(), f, "test", ScrubOptions{}); err != nil || rep.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep)
	}
	// The orphans' contents, where they were adopted.
	want[orphanPath] = want[orphan]
	delete(want, orphan)
	check := func(f *fs.FS) {
		t.Helper()
		for p, data := range want {
			a, err := f.Resolve(p)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			got := make([]byte, len(data)+1)
			n, err := f.Read(a.Ino, got, 0)
			if err != nil || !slices.Equal(got[:n], data) {
				t.Fatalf("%s: %d bytes, %v", p, n, err)
			}
		}
		a, err := f.Resolve(fmt.Sprintf("/lost+found/#%d/inner", odir.Ino))
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 64)
		if n, err := f.Read(a.Ino, got, 0); err != nil || string(got[:n]) != "inside the lost directory" {
			t.Fatalf("inner: %q %v", got[:n], err)
		}
	}
	check(f)
	f = remountClean(t, f, img)
	defer f.Close()
	check(f)
}
