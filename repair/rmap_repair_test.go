package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
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

func checkFindings(t *testing.T, e *engine.Engine) []engine.Finding {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	var out []engine.Finding
	if _, err := s.Check(context.Background(), func(f engine.Finding) { out = append(out, f) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func mustClean(t *testing.T, e *engine.Engine) {
	t.Helper()
	if fs := checkFindings(t, e); len(fs) > 0 {
		var b strings.Builder
		for _, f := range fs {
			fmt.Fprintln(&b, f)
		}
		t.Fatalf("%d findings:\n%s", len(fs), b.String())
	}
}

// writer writes files and fsyncs them until stop, remembering what each
// holds after every fsync.
type writer struct {
	f      *fs.FS
	mu     sync.Mutex
	files  map[uint64][]byte
	writes int
	err    error
	// tolerateEIO: a write failing with EIO (its file's extent records
	// are in a damaged block) is counted in eio and changes nothing the
	// writer expects; the writer goes on.
	tolerateEIO bool
	eio         int
}

func (w *writer) run(seed uint64, stop <-chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	r := rand.New(rand.NewPCG(seed, seed))
	var inos []uint64
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if len(inos) < 20 || r.IntN(10) == 0 {
			a, err := w.f.Create(fs.RootIno, fmt.Sprintf("w%d-%d", seed, i), fs.NewInode{Mode: 0o644})
			if err != nil {
				w.err = err
				return
			}
			inos = append(inos, a.Ino)
		}
		ino := inos[r.IntN(len(inos))]
		w.mu.Lock()
		cur := bytes.Clone(w.files[ino])
		w.mu.Unlock()
		off := r.IntN(64 << 10)
		data := make([]byte, 1+r.IntN(16<<10))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if _, err := w.f.Write(ino, data, int64(off)); err != nil {
			if w.tolerateEIO && errors.Is(err, syscall.EIO) {
				w.mu.Lock()
				w.eio++
				w.mu.Unlock()
				time.Sleep(time.Millisecond)
				continue
			}
			w.err = err
			return
		}
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		if err := w.f.Fsync(ino); err != nil {
			w.err = err
			return
		}
		w.mu.Lock()
		w.files[ino] = cur
		w.writes++
		w.mu.Unlock()
	}
}

// startWriter runs a writer on f (seed seed) until the returned stop is
// called, after it has completed at least min writes; stop waits for it
// and fails the test if it failed.
func startWriter(t *testing.T, f *fs.FS, seed uint64, min int) (*writer, func()) {
	t.Helper()
	return startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}}, seed, min)
}

// startWriterOn is startWriter for a writer set up by the caller.
func startWriterOn(t *testing.T, w *writer, seed uint64, min int) (*writer, func()) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go w.run(seed, stop, &wg)
	for w.count() < min {
		time.Sleep(time.Millisecond)
	}
	stopped := false
	return w, func() {
		t.Helper()
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
		if w.err != nil {
			t.Fatal(w.err)
		}
	}
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func (w *writer) verify(t *testing.T, f *fs.FS) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for ino, want := range w.files {
		got := make([]byte, len(want))
		n, err := f.Read(ino, got, 0)
		if err != nil || !bytes.Equal(got[:n], want) {
			t.Fatalf("inode %d: %d bytes read (%v), want %d", ino, n, err, len(want))
		}
	}
}

func newImage(t *testing.T) string {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 256<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestRebuildRmapOnlineUnderLoad rebuilds a healthy rmap tree while a
// writer keeps writing and fsyncing, on images of format 1.2 (records with
// their mappings, rewritten live as the writer's overwrites cut extents
// short) and 1.1 (records without).
func TestRebuildRmapOnlineUnderLoad(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("format1.%d", map[bool]int{false: 2, true: 1}[legacy]), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := engine.MkfsPath(img, 256<<20, false, engine.MkfsOptions{NoRmapMaps: legacy}); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			w, stop := startWriter(t, f, 1, 50)
			for i := 0; i < 3; i++ {
				res, err := RebuildRmap(context.Background(), f.Engine(), RmapRebuildOptions{TempDir: t.TempDir()})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("rebuild %d: %+v", i, *res)
			}
			stop()
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			mustClean(t, f.Engine())
			w.verify(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRebuildDamagedRmap damages the rmap tree's root on disk, mounts with
// the rmap marked sick, rebuilds it online under a writer, and checks.
func TestRebuildDamagedRmap(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	w, stop := startWriter(t, f, 2, 100)
	stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := inject.FlipRoot(img, format.TreeRmap); err != nil {
		t.Fatal(err)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	e := f.Engine()
	found := checkFindings(t, e)
	if len(found) == 0 || found[0].Tree != format.TreeRmap {
		t.Fatalf("damage not found: %v", found)
	}
	e.SetRmapSick(true)
	w2, stop2 := startWriter(t, f, 3, 20)
	res, err := RebuildRmap(context.Background(), e, RmapRebuildOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuild: %+v", *res)
	stop2()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustClean(t, e)
	w.verify(t, f)
	w2.verify(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDegradedMountKeepsWriting damages the rmap tree and mounts without
// telling the engine: the first commit that touches it marks it sick
// instead of failing, writes go on, and a rebuild makes the image clean.
func TestDegradedMountKeepsWriting(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Create(fs.RootIno, "before", fs.NewInode{Mode: 0o644})
	f.Write(a.Ino, bytes.Repeat([]byte("x"), 100000), 0)
	f.Close()
	if _, err := inject.FlipRoot(img, format.TreeRmap); err != nil {
		t.Fatal(err)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Create(fs.RootIno, "after", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b.Ino, []byte("still writing"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("commit on a damaged rmap: %v", err)
	}
	if !f.Engine().RmapSick() {
		t.Fatal("damaged rmap not marked sick")
	}
	if _, err := RebuildRmap(context.Background(), f.Engine(), RmapRebuildOptions{TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f.Engine())
	buf := make([]byte, 13)
	if n, err := f.Read(b.Ino, buf, 0); err != nil || string(buf[:n]) != "still writing" {
		t.Fatalf("read: %q %v", buf[:n], err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
