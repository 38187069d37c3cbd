package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/engine/fuse"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// Options configure Run.
type Options struct {
	Logger *slog.Logger
	// Keep keeps the temporary directory Demo makes when it is given none
	// (by default it is removed at the end). A directory given is always
	// kept.
	Keep bool
}

// Step is one step of the demo and whether it held.
type Step struct {
	Name   string  `json:"name"`
	OK     bool    `json:"ok"`
	Detail string  `json:"detail"`
	TookS  float64 `json:"took_s"`
}

// Result is what Run did.
type Result struct {
	Version int    `json:"version"` // of this document (1)
	Image   string `json:"image"`
	// Removed says the image's temporary directory was removed at the end.
	Removed bool           `json:"removed"`
	OK      bool           `json:"ok"`
	FUSE    bool           `json:"fuse"` // the writer went through a real FUSE mount
	Steps   []Step         `json:"steps"`
	Found   *repair.Report `json:"report_damage_found"`
	Report  *repair.Report `json:"report"` // the scrub with online repair
	Final   *repair.Report `json:"report_offline_after"`
}

// Run runs the product end to end on a default image in dir (a new
// temporary directory if empty): make an image, mount it (FUSE where the
// machine allows, else the Go API), run a writer that writes and fsyncs
// files through the mount, damage the rmap tree of the live filesystem,
// scrub and find it, repair it online while the writer keeps writing,
// verify every byte the writer fsync'd, unmount and check offline. step, if
// set, gets each step as it finishes. The result's OK says whether every
// step held.
//
// A dir given is created if missing and kept; without one, Demo makes a
// temporary directory and removes it at the end unless opts.Keep.
func Run(ctx context.Context, dir string, opts Options, step func(Step)) (*Result, error) {
	temp := dir == ""
	if temp {
		d, err := os.MkdirTemp("", "scrubd-demo-")
		if err != nil {
			return nil, err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("demo directory: %w", err)
	}
	res, err := demo(ctx, dir, opts, step)
	if temp && !opts.Keep {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		} else if res != nil {
			res.Removed = true
		}
	}
	return res, err
}

func demo(ctx context.Context, dir string, opts Options, step func(Step)) (*Result, error) {
	res := &Result{Version: 1, Image: filepath.Join(dir, "demo.img"), OK: true}
	do := func(name string, fn func() (string, error)) bool {
		start := time.Now()
		detail, err := fn()
		s := Step{Name: name, OK: err == nil, Detail: detail, TookS: time.Since(start).Seconds()}
		if err != nil {
			s.Detail = err.Error()
			res.OK = false
		}
		res.Steps = append(res.Steps, s)
		if step != nil {
			step(s)
		}
		return err == nil
	}
	const size = 256 << 20
	if !do("mkfs", func() (string, error) {
		return fmt.Sprintf("%d MiB image", size>>20), fs.MkfsPath(res.Image, size, true, engine.MkfsOptions{Label: "demo"})
	}) {
		return res, nil
	}
	var fsys *fs.FS
	var srv *fuse.Server
	mnt := filepath.Join(dir, "mnt")
	if !do("mount", func() (string, error) {
		var err error
		fsys, err = fs.OpenPath(res.Image, fs.Options{Logger: opts.Logger, CommitInterval: 100 * time.Millisecond})
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return "", err
		}
		srv, err = fuse.Mount(fsys, mnt, fuse.Options{Logger: opts.Logger})
		if err != nil {
			srv = nil
			return fmt.Sprintf("FUSE unavailable here (%v): the writer uses the Go API instead", err), nil
		}
		res.FUSE = true
		return "mounted on " + mnt + " with FUSE", nil
	}) {
		return res, nil
	}
	closeAll := func() error {
		var err error
		if srv != nil {
			err = srv.Unmount()
			srv = nil
		}
		if fsys != nil {
			if cerr := fsys.Close(); err == nil {
				err = cerr
			}
			fsys = nil
		}
		return err
	}
	defer closeAll()

	// The writer: files written and fsync'd through the mount (or the API),
	// every fsync'd state remembered for the final verification.
	w := newDemoWriter(fsys, srv != nil, mnt)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go w.run(stop, &wg)
	stopWriter := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopWriter()
	do("writer running", func() (string, error) {
		deadline := time.Now().Add(10 * time.Second)
		for w.fsyncs() < 100 && time.Now().Before(deadline) && w.error() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if err := w.error(); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d fsyncs so far", w.fsyncs()), nil
	})
	var inj *inject.Result
	if !do("damage rmap", func() (string, error) {
		if err := fsys.Sync(); err != nil {
			return "", err
		}
		var err error
		inj, err = inject.Online(fsys.Engine(), inject.Options{Tree: format.TreeRmap, Kind: inject.Bitflip, Seed: uint64(time.Now().UnixNano())})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s in rmap block %d (level %d) of the live filesystem: %s", inj.Kind, inj.Block, inj.Level, inj.Detail), nil
	}) {
		return res, nil
	}
	do("scrub finds it", func() (string, error) {
		r, err := repair.Scrub(ctx, fsys, mnt, repair.ScrubOptions{Logger: opts.Logger})
		if err != nil {
			return "", err
		}
		res.Found = r
		for _, s := range r.Structures {
			for _, f := range s.Findings {
				if s.Name == "rmap" {
					return fmt.Sprintf("%d found; rmap block %d: %s", r.Found, f.Block, f.Name), nil
				}
			}
		}
		return "", fmt.Errorf("the rmap damage was not reported (%d findings)", r.Found)
	})
	before := w.fsyncs()
	do("repair online", func() (string, error) {
		r, err := repair.Scrub(ctx, fsys, mnt, repair.ScrubOptions{Repair: true, Logger: opts.Logger, TempDir: dir})
		if err != nil {
			return "", err
		}
		res.Report = r
		if r.Status != repair.StatusCorrected {
			return "", fmt.Errorf("status %s after repair: %d found, %d repaired", r.Status, r.Found, r.Repaired)
		}
		detail := fmt.Sprintf("%d found, %d repaired", r.Found, r.Repaired)
		for _, rb := range r.Rebuilds {
			detail += fmt.Sprintf("; rebuilt %s from %d records with %d live updates in %.0f ms, writers paused %.1f ms",
				rb.Structure, rb.Records, rb.Events, rb.DurationS*1000, rb.PauseMs)
		}
		return detail, nil
	})
	do("writer kept writing", func() (string, error) {
		deadline := time.Now().Add(5 * time.Second)
		for w.fsyncs() < before+50 && time.Now().Before(deadline) && w.error() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		stopWriter()
		if err := w.error(); err != nil {
			return "", err
		}
		if w.fsyncs() <= before {
			return "", errors.New("the writer made no progress during and after the repair")
		}
		return fmt.Sprintf("%d fsyncs in all, %d since the repair began", w.fsyncs(), w.fsyncs()-before), nil
	})
	do("verify every byte", func() (string, error) {
		n, err := w.verify()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d files, %d bytes as last fsync'd", n, w.bytes()), nil
	})
	do("unmount", func() (string, error) { return "committed and unmounted", closeAll() })
	do("offline fsck", func() (string, error) {
		r, err := repair.CheckOffline(ctx, res.Image, repair.Options{Logger: opts.Logger})
		if err != nil {
			return "", err
		}
		res.Final = r
		if r.Status != repair.StatusClean {
			return "", fmt.Errorf("%d findings after the repair", r.Found)
		}
		return fmt.Sprintf("generation %d clean", r.Generation), nil
	})
	return res, nil
}

// demoWriter writes random data to a few files and fsyncs, remembering the
// content of each file as of its last fsync.
type demoWriter struct {
	fsys    *fs.FS
	useFUSE bool
	mnt     string

	mu     sync.Mutex
	synced map[string][]byte
	nsync  int
	err    error
}

func newDemoWriter(fsys *fs.FS, useFUSE bool, mnt string) *demoWriter {
	return &demoWriter{fsys: fsys, useFUSE: useFUSE, mnt: mnt, synced: map[string][]byte{}}
}

func (w *demoWriter) fsyncs() int    { w.mu.Lock(); defer w.mu.Unlock(); return w.nsync }
func (w *demoWriter) error() error   { w.mu.Lock(); defer w.mu.Unlock(); return w.err }
func (w *demoWriter) fail(err error) { w.mu.Lock(); w.err = err; w.mu.Unlock() }

func (w *demoWriter) bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, b := range w.synced {
		n += len(b)
	}
	return n
}

// file is what the writer needs of an open file.
type demoFile interface {
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Close() error
}

type apiFile struct {
	fsys *fs.FS
	ino  uint64
}

func (a apiFile) WriteAt(p []byte, off int64) (int, error) { return a.fsys.Write(a.ino, p, off) }
func (a apiFile) Sync() error                              { return a.fsys.Fsync(a.ino) }
func (a apiFile) Close() error                             { return a.fsys.Release(a.ino) }

func (w *demoWriter) open(name string) (demoFile, error) {
	if w.useFUSE {
		return os.OpenFile(filepath.Join(w.mnt, name), os.O_RDWR|os.O_CREATE, 0o644)
	}
	a, err := w.fsys.Lookup(fs.RootIno, name)
	if fs.Errno(err) == syscall.ENOENT {
		a, err = w.fsys.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
	}
	if err != nil {
		return nil, err
	}
	return apiFile{w.fsys, a.Ino}, w.fsys.Open(a.Ino)
}

func (w *demoWriter) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	contents := map[string][]byte{}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		name := fmt.Sprintf("data-%02d", r.IntN(16))
		f, err := w.open(name)
		if err != nil {
			w.fail(fmt.Errorf("open %s: %w", name, err))
			return
		}
		cur := contents[name]
		off := r.IntN(256 << 10)
		data := make([]byte, 1+r.IntN(32<<10))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(data, int64(off)); err != nil {
			f.Close()
			w.fail(fmt.Errorf("write %s: %w", name, err))
			return
		}
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		contents[name] = cur
		if err := f.Sync(); err != nil {
			f.Close()
			w.fail(fmt.Errorf("fsync %s: %w", name, err))
			return
		}
		if err := f.Close(); err != nil {
			w.fail(fmt.Errorf("close %s: %w", name, err))
			return
		}
		w.mu.Lock()
		w.synced[name] = bytes.Clone(cur)
		w.nsync++
		w.mu.Unlock()
	}
}

// verify reads every file back and compares it with its last fsync'd state.
func (w *demoWriter) verify() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, want := range w.synced {
		var got []byte
		var err error
		if w.useFUSE {
			got, err = os.ReadFile(filepath.Join(w.mnt, name))
		} else {
			var a fs.Attr
			if a, err = w.fsys.Lookup(fs.RootIno, name); err == nil {
				got = make([]byte, a.Size)
				var n int
				n, err = w.fsys.Read(a.Ino, got, 0)
				got = got[:n]
			}
		}
		if err != nil {
			return 0, fmt.Errorf("read back %s: %w", name, err)
		}
		if !bytes.Equal(got, want) {
			return 0, fmt.Errorf("%s differs from what was fsync'd (%d bytes read, %d expected)", name, len(got), len(want))
		}
	}
	return len(w.synced), nil
}
