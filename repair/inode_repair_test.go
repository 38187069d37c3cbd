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
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// reconstructedWant is what the files of populatedImage hold after a
// repair that reported rep (for verifyPopulated): nil when no inode was
// reconstructed, else every file's contents, those of a reconstructed
// file padded with zeros to its reconstructed size (its true size was
// lost: the repair rounds it up to its last mapped block, so every byte
// written reads back, followed by zeros). It fails the test if a
// reconstructed size is below what was written or beyond the last block.
func reconstructedWant(t *testing.T, rep *Report) map[string][]byte {
	t.Helper()
	var want map[string][]byte
	for _, rb := range rep.Rebuilds {
		for _, rc := range rb.Reconstructed {
			if want == nil {
				want = map[string][]byte{}
				for i := 1; i < 600; i += 2 {
					want[fmt.Sprintf("f%04d", i)] = populatedWant(i)
				}
			}
			name := strings.TrimPrefix(rc.Path, "/")
			w, ok := want[name]
			if !ok {
				continue // the root, or a file of another test's writer
			}
			if rc.Size < uint64(len(w)) || rc.Size >= uint64(len(w))+format.BlockSize {
				t.Fatalf("%s reconstructed with size %d, written %d", rc.Path, rc.Size, len(w))
			}
			want[name] = append(w, make([]byte, rc.Size-uint64(len(w)))...)
		}
	}
	return want
}

// inodeFixture is a small namespace with every kind of inode: what each
// path is and holds.
type inodeFixture struct {
	img   string
	attrs map[string]fs.Attr // by path
	data  map[string][]byte  // regular files
}

// makeInodeFixture makes an image with 400 files (the inode tree two
// levels deep; some with a hole first, some with a second name), a
// subdirectory holding a third of them and a subdirectory of its own, a
// symlink, a device node and an empty file.
func makeInodeFixture(t *testing.T) *inodeFixture {
	t.Helper()
	fx := &inodeFixture{img: newImage(t), attrs: map[string]fs.Attr{}, data: map[string][]byte{}}
	f, err := fs.OpenPath(fx.img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	must := func(a fs.Attr, err error) fs.Attr {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	d := must(f.Mkdir(fs.RootIno, "d", fs.NewInode{Mode: syscall.S_IFDIR | 0o755, UID: 1000, GID: 1000}))
	fx.attrs["/d"] = d
	fx.attrs["/d/s"] = must(f.Mkdir(d.Ino, "s", fs.NewInode{Mode: syscall.S_IFDIR | 0o750}))
	fx.attrs["/l"] = must(f.Symlink(fs.RootIno, "l", "d/s", fs.NewInode{Mode: syscall.S_IFLNK | 0o777}))
	fx.attrs["/dev"] = must(f.Mknod(fs.RootIno, "dev", fs.NewInode{Mode: syscall.S_IFCHR | 0o640, Rdev: 0x0103}))
	fx.attrs["/empty"] = must(f.Create(fs.RootIno, "empty", fs.NewInode{Mode: 0o644}))
	r := rand.New(rand.NewPCG(4, 4))
	for i := 0; i < 400; i++ {
		dir, p := uint64(fs.RootIno), fmt.Sprintf("/g%03d", i)
		if i%3 == 0 {
			dir, p = d.Ino, fmt.Sprintf("/d/g%03d", i)
		}
		a := must(f.Create(dir, p[strings.LastIndex(p, "/")+1:], fs.NewInode{Mode: 0o644, UID: 7}))
		buf := make([]byte, 1+r.IntN(20000))
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		at := int64(r.IntN(3)) * 5 * format.BlockSize // some with a hole first
		if _, err := f.Write(a.Ino, buf, at); err != nil {
			t.Fatal(err)
		}
		fx.data[p] = append(make([]byte, at), buf...)
		if i%50 == 7 {
			// A second name.
			must(f.Link(a.Ino, fs.RootIno, fmt.Sprintf("h%03d", i)))
		}
	}
	// Attributes as a remount shows them.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = fs.OpenPath(fx.img, fs.Options{CommitInterval: -1, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for p := range fx.data {
		fx.attrs[p] = must(f.Resolve(p))
	}
	for p := range fx.attrs {
		fx.attrs[p] = must(f.Resolve(p))
	}
	return fx
}

// TestInodeReconstructExact loses inode items with a leaf (zeroed) and
// with the whole tree (its root node zeroed), repairs offline, and
// asserts every reconstructed inode field by field against what it was:
// the type from the directory entry, the link count from the entries, a
// file's size the end of its last mapped block and its block count
// exact, a directory's parent; what nothing recorded set to the listed
// defaults, and those fields listed as guessed.
func TestInodeReconstructExact(t *testing.T) {
	skipShort(t)
	fx := makeInodeFixture(t)
	pristine, err := os.ReadFile(fx.img)
	if err != nil {
		t.Fatal(err)
	}
	for level := 0; level <= 1; level++ {
		t.Run(fmt.Sprintf("level=%d", level), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			lv := level
			if _, err := inject.Offline(img, inject.Options{Tree: format.TreeInode, Kind: inject.Zero, Seed: 11, Level: &lv}); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("mount with a damaged inode tree: %v", err)
			}
			if ro, why := f.Engine().ReadOnly(); ro {
				t.Fatalf("read-only after the damage: %v", why)
			}
			before := time.Now().Add(-time.Second)
			rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
			if err != nil || rep.Status != StatusCorrected {
				t.Fatalf("repair: %v %+v", err, rep)
			}
			var recon []ReconstructedInode
			for _, rb := range rep.Rebuilds {
				recon = append(recon, rb.Reconstructed...)
			}
			if level == 0 && len(recon) == 0 {
				t.Fatal("nothing reconstructed")
			}
			if level == 1 {
				// The root node lost: every leaf below it is intact, and
				// salvaged (salvage.go), so nothing is reconstructed.
				if len(recon) != 0 {
					t.Errorf("the root node lost, its leaves intact: %d inodes reconstructed, want 0", len(recon))
				}
				if !slices.ContainsFunc(rep.Rebuilds, func(rb RebuildReport) bool {
					return slices.ContainsFunc(rb.Changes, func(c string) bool { return strings.HasPrefix(c, "salvaged ") })
				}) {
					t.Errorf("no salvage reported: %+v", rep.Rebuilds)
				}
			}
			f = remountClean(t, f, img)
			defer f.Close()
			if level == 1 {
				// Every inode exactly as it was.
				for p, was := range fx.attrs {
					got, err := f.Resolve(p)
					if err != nil {
						t.Fatalf("%s: %v", p, err)
					}
					sameTimes := got.Atime.Equal(was.Atime) && got.Mtime.Equal(was.Mtime) && got.Ctime.Equal(was.Ctime)
					got.Atime, got.Mtime, got.Ctime = was.Atime, was.Mtime, was.Ctime
					if got != was || !sameTimes {
						t.Errorf("%s: after the repair %+v, it was %+v", p, got, was)
					}
				}
				if l, err := f.Readlink(fx.attrs["/l"].Ino); err != nil || l != "d/s" {
					t.Errorf("symlink target %q %v", l, err)
				}
			}
			byIno := map[uint64]string{fs.RootIno: "/"}
			for p, a := range fx.attrs {
				byIno[a.Ino] = p
			}
			for _, rc := range recon {
				p, ok := byIno[rc.Ino]
				if !ok {
					t.Fatalf("reconstructed inode %d, which the fixture never made", rc.Ino)
				}
				if rc.Path != p && !(p != "/" && fx.attrs[p].Nlink > 1) {
					t.Errorf("inode %d listed at %q, it is %q", rc.Ino, rc.Path, p)
				}
				got, err := f.GetAttr(rc.Ino)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				checkReconstructed(t, p, fx, got, rc, before)
			}
			// Every file reads back what was written, then zeros up to
			// its reconstructed size.
			for p, want := range fx.data {
				a, err := f.Resolve(p)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, a.Size+1)
				n, err := f.Read(a.Ino, got, 0)
				if err != nil || uint64(n) != a.Size || !bytes.Equal(got[:len(want)], want) || slices.ContainsFunc(got[len(want):n], func(b byte) bool { return b != 0 }) {
					t.Fatalf("%s: read %d bytes (%v), size %d, want %d written", p, n, err, a.Size, len(want))
				}
			}
		})
	}
}

// checkReconstructed asserts the fields of one reconstructed inode.
func checkReconstructed(t *testing.T, p string, fx *inodeFixture, got fs.Attr, rc ReconstructedInode, before time.Time) {
	t.Helper()
	was, ok := fx.attrs[p]
	if p == "/" {
		was, ok = fs.Attr{Mode: syscall.S_IFDIR, Nlink: 3}, true // two, and d
	}
	if !ok {
		t.Fatalf("%s: not in the fixture", p)
	}
	typ := was.Mode & syscall.S_IFMT
	base := []string{"mode", "uid", "gid", "times", "generation", "flags"}
	var perm uint32
	var guessed []string
	switch typ {
	case syscall.S_IFDIR:
		perm, guessed = 0o700, base
	case syscall.S_IFREG:
		perm, guessed = 0o600, append(base, "size")
		if want := (uint64(len(fx.data[p])) + format.BlockSize - 1) / format.BlockSize * format.BlockSize; got.Size != want {
			t.Errorf("%s: size %d, want %d (the end of its last block; %d written)", p, got.Size, want, len(fx.data[p]))
		}
		if got.Blocks != was.Blocks {
			t.Errorf("%s: %d blocks, it had %d", p, got.Blocks, was.Blocks)
		}
	case syscall.S_IFLNK:
		perm, guessed = 0o777, append(base, "target")
	case syscall.S_IFCHR:
		perm, guessed = 0o600, append(base, "rdev")
	}
	if got.Mode != typ|perm || rc.Mode != got.Mode {
		t.Errorf("%s: mode %#o (listed %#o), want %#o", p, got.Mode, rc.Mode, typ|perm)
	}
	if got.Nlink != was.Nlink || rc.Nlink != got.Nlink {
		t.Errorf("%s: %d links (listed %d), it had %d", p, got.Nlink, rc.Nlink, was.Nlink)
	}
	if got.UID != 0 || got.GID != 0 {
		t.Errorf("%s: owner %d:%d, want root", p, got.UID, got.GID)
	}
	if got.Mtime.Before(before) || got.Ctime.Before(before) || got.Atime.Before(before) {
		t.Errorf("%s: times %v %v %v, not those of the repair", p, got.Atime, got.Mtime, got.Ctime)
	}
	if !slices.Equal(rc.Guessed, guessed) {
		t.Errorf("%s: guessed %v, want %v", p, rc.Guessed, guessed)
	}
	if rc.Size != got.Size {
		t.Errorf("%s: listed size %d, has %d", p, rc.Size, got.Size)
	}
}

// eioWriter creates, writes and fsyncs files in the root directory until
// stopped, going on past EIO (an inode whose item the damage hides,
// the root directory's included, fails alone): what a failed operation
// would have done is not expected. Any other error fails it.
type eioWriter struct {
	f      *fs.FS
	mu     sync.Mutex
	files  map[uint64][]byte
	links  map[uint64]string // symlinks made: their targets
	writes int
	eio    int
	err    error
}

func (w *eioWriter) run(seed uint64, stop <-chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	r := rand.New(rand.NewPCG(seed, seed))
	var inos []uint64
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		eio := func(err error) bool {
			if !errors.Is(err, syscall.EIO) {
				w.err = err
				return false
			}
			w.mu.Lock()
			w.eio++
			w.mu.Unlock()
			time.Sleep(time.Millisecond)
			return true
		}
		if i%7 == 3 {
			// A symlink: its target is in the inode tree too.
			target := fmt.Sprintf("target-%d-%d", seed, i)
			a, err := w.f.Symlink(fs.RootIno, fmt.Sprintf("l%d-%d", seed, i), target, fs.NewInode{Mode: syscall.S_IFLNK | 0o777})
			if err != nil {
				if eio(err) {
					continue
				}
				return
			}
			w.mu.Lock()
			w.links[a.Ino] = target
			w.mu.Unlock()
		}
		if len(inos) < 10 || r.IntN(8) == 0 {
			a, err := w.f.Create(fs.RootIno, fmt.Sprintf("w%d-%d", seed, i), fs.NewInode{Mode: 0o644})
			if err != nil {
				if eio(err) {
					continue
				}
				return
			}
			inos = append(inos, a.Ino)
			w.mu.Lock()
			w.files[a.Ino] = nil
			w.mu.Unlock()
		}
		ino := inos[r.IntN(len(inos))]
		w.mu.Lock()
		cur := bytes.Clone(w.files[ino])
		w.mu.Unlock()
		off := r.IntN(32 << 10)
		data := make([]byte, 1+r.IntN(8<<10))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if _, err := w.f.Write(ino, data, int64(off)); err != nil {
			if eio(err) {
				continue
			}
			return
		}
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		w.mu.Lock()
		w.files[ino] = cur
		w.writes++
		w.mu.Unlock()
		if err := w.f.Fsync(ino); err != nil && !eio(err) {
			return
		}
	}
}

// verify reads back every file the writer wrote: what it wrote, padded
// with zeros to the size a reconstruction gave it (by inode in recon),
// when that is more.
func (w *eioWriter) verify(t *testing.T, f *fs.FS, recon []ReconstructedInode) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for ino, want := range w.files {
		for _, rc := range recon {
			if rc.Ino == ino && rc.Size > uint64(len(want)) {
				want = append(bytes.Clone(want), make([]byte, rc.Size-uint64(len(want)))...)
			}
		}
		got := make([]byte, len(want)+1)
		n, err := f.Read(ino, got, 0)
		if err != nil || !bytes.Equal(got[:n], want) {
			t.Fatalf("writer's inode %d: %d bytes read (%v), want %d", ino, n, err, len(want))
		}
	}
	for ino, want := range w.links {
		lost := slices.ContainsFunc(recon, func(rc ReconstructedInode) bool { return rc.Ino == ino && slices.Contains(rc.Guessed, "target") })
		if got, err := f.Readlink(ino); lost {
			// Its target went with the damage: listed, and EIO.
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("writer's symlink %d, its target lost: %q (%v), want EIO", ino, got, err)
			}
		} else if err != nil || got != want {
			t.Fatalf("writer's symlink %d: %q (%v), want %q", ino, got, err, want)
		}
	}
}

// TestInodeDamageOnline damages the inode tree of a mounted filesystem
// with every kind, at a leaf and at its interior (root) node, while a
// writer creates, writes and fsyncs files: the mount stays read-write,
// scrub --repair rebuilds the tree with the writer running (status
// corrected, every reconstruction listed), a second scrub is clean,
// every file written before reads back (a reconstructed one padded to
// its last block), every write the writer saw succeed is there, and the
// image is clean after a remount.
func TestInodeDamageOnline(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range inject.Kinds {
		for level := 0; level <= 1; level++ {
			t.Run(fmt.Sprintf("%s/level=%d", kind, level), func(t *testing.T) {
				if testing.Short() && kind != inject.Bitflip {
					t.Skip("short: bitflip only")
				}
				inodeDamageOnline(t, pristine, kind, level)
			})
		}
	}
}

func inodeDamageOnline(t *testing.T, pristine []byte, kind string, level int) {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w := &eioWriter{f: f, files: map[uint64][]byte{}, links: map[uint64]string{}}
	stopCh := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go w.run(7, stopCh, &wg)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(stopCh)
			wg.Wait()
		}
		if w.err != nil {
			t.Fatalf("writer: %v", w.err)
		}
	}
	defer stop()
	for {
		w.mu.Lock()
		n := w.writes
		w.mu.Unlock()
		if n >= 30 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	lv := level
	inj, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeInode, Kind: kind, Seed: 5, Level: &lv})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ino := rep.structure("inode")
	if rep.Status != StatusCorrected || ino == nil || ino.Found == 0 || ino.Repaired != ino.Found {
		t.Fatalf("scrub --repair after %s: status %s, inode %+v, notes %v", inj.Detail, rep.Status, ino, rep.Notes)
	}
	var recon []ReconstructedInode
	for _, rb := range rep.Rebuilds {
		recon = append(recon, rb.Reconstructed...)
	}
	if level == 0 && len(recon) == 0 {
		t.Fatalf("%s: no inode listed as reconstructed", inj.Detail)
	}
	if level > 0 && len(recon) != 0 {
		// An interior node damaged: the leaves below it are intact and
		// salvaged, every item kept as it was (salvage.go).
		t.Fatalf("%s: %d inodes reconstructed, their leaves intact: %+v", inj.Detail, len(recon), recon)
	}
	for _, rb := range rep.Rebuilds {
		w.mu.Lock()
		t.Logf("%s rebuild: %d records, %d live updates, %d reconstructed, pause %.2f ms; writer: %d writes, %d symlinks, %d EIO",
			rb.Structure, rb.Records, rb.Events, len(rb.Reconstructed), rb.PauseMs, w.writes, len(w.links), w.eio)
		w.mu.Unlock()
	}
	for _, rc := range recon {
		if len(rc.Guessed) == 0 || !slices.Contains(rc.Guessed, "mode") {
			t.Fatalf("inode %d: guessed fields %v", rc.Ino, rc.Guessed)
		}
	}
	if ro, why := f.Engine().ReadOnly(); ro {
		t.Fatalf("read-only: %v", why)
	}
	// The writer goes on after the repair.
	w.mu.Lock()
	after := w.writes
	w.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		w.mu.Lock()
		n := w.writes
		w.mu.Unlock()
		if n >= after+20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer made %d writes in 10s after the repair", n-after)
		}
	}
	rep2, err := Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil || rep2.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep2)
	}
	stop()
	f = remountClean(t, f, img)
	defer f.Close()
	w.verify(t, f, recon)
	verifyPopulated(t, f, reconstructedWant(t, rep))
}

// TestCrashDuringInodeRebuild records every write and flush of an inode
// rebuild, of a healthy tree and of one whose leaf was zeroed, and opens
// the image as a crash at each flush boundary would leave it: it must
// mount and pass the self-check — with the old tree or the new one —
// after at most one more rebuild, needed only when the old tree was
// damaged, and never leak a block.
func TestCrashDuringInodeRebuild(t *testing.T) {
	skipShort(t)
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) { crashDuringInodeRebuild(t, damaged) })
	}
}

func crashDuringInodeRebuild(t *testing.T, damaged bool) {
	op := opByName("inode")
	dev := disk.NewMem(32768 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Open(nopClose{dev}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 120; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1+r.IntN(30000))
		if _, err := f.Write(a.Ino, buf, int64(r.IntN(9000))); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(dev.Bytes())
	f, err = fs.Open(nopClose{rec}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if damaged {
		lv := 0
		if _, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeInode, Kind: inject.Zero, Seed: 5, Level: &lv}); err != nil {
			t.Fatal(err)
		}
	}
	startFlush := rec.Flushes()
	res, err := RebuildInode(context.Background(), f.Engine(), RebuildOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if damaged != (len(res.Reconstructed) > 0) {
		t.Fatalf("damaged=%v: %d inodes reconstructed", damaged, len(res.Reconstructed))
	}
	endFlush := rec.Flushes()
	f.Close()
	rng := rand.New(rand.NewPCG(10, 10))
	completed := 0
	for k := startFlush; k <= endFlush; k++ {
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := fs.Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			for _, n := range cf.Engine().MountInfo().Notes {
				if strings.Contains(n, "interrupted logged operations") && !strings.Contains(n, "(0 blocks freed)") {
					completed++
				}
			}
			if found := checkFindings(t, cf.Engine()); len(found) > 0 {
				if !damaged || !onlyFor(op, found) {
					t.Fatalf("%s: findings after a crash mid-rebuild (damaged=%v): %v", name, damaged, found)
				}
				if _, err := RebuildInode(context.Background(), cf.Engine(), RebuildOptions{TempDir: t.TempDir()}); err != nil {
					t.Fatalf("%s: second rebuild: %v", name, err)
				}
				mustClean(t, cf.Engine())
			}
			cf.Close()
		}
	}
	if completed == 0 {
		t.Fatal("no crash image needed its logged operations completed: the boundaries were not covered")
	}
}

// TestReconstructInode asserts the item reconstructInode makes from each
// combination of what can still name an inode.
func TestReconstructInode(t *testing.T) {
	now := format.Timespec{Sec: 1700000000, Nsec: 5}
	base := []string{"mode", "uid", "gid", "times", "generation", "flags"}
	cases := []struct {
		name      string
		ino       uint64
		nm        *nameOf
		fo        *fileOf
		subdirs   uint32
		next      uint64
		target    bool
		deleted   bool
		mode      uint32
		nlink     uint32
		size      uint64
		blocks    uint64
		parent    uint64
		nextIndex uint64
		guessed   []string
	}{
		{name: "named file with data", ino: 300, nm: &nameOf{typ: syscall.S_IFREG >> 12, names: 2, parent: 260}, fo: &fileOf{end: 7, blocks: 5},
			mode: syscall.S_IFREG | 0o600, nlink: 2, size: 7 * format.BlockSize, blocks: 5, guessed: append(base, "size")},
		{name: "named empty file", ino: 301, nm: &nameOf{typ: syscall.S_IFREG >> 12, names: 1, parent: 256},
			mode: syscall.S_IFREG | 0o600, nlink: 1, guessed: append(base, "size")},
		{name: "unlinked while open", ino: 302, fo: &fileOf{end: 1, blocks: 1}, deleted: true,
			mode: syscall.S_IFREG | 0o600, nlink: 0, size: format.BlockSize, blocks: 1, guessed: append(base, "size")},
		{name: "data nothing names", ino: 303, fo: &fileOf{end: 2, blocks: 2},
			mode: syscall.S_IFREG | 0o600, nlink: 1, size: 2 * format.BlockSize, blocks: 2, guessed: append(base, "size")},
		{name: "directory", ino: 304, nm: &nameOf{typ: syscall.S_IFDIR >> 12, names: 1, parent: 290}, subdirs: 3, next: 40,
			mode: syscall.S_IFDIR | 0o700, nlink: 5, parent: 290, nextIndex: 40, guessed: base},
		{name: "empty directory", ino: 305, nm: &nameOf{typ: syscall.S_IFDIR >> 12, names: 1, parent: 256},
			mode: syscall.S_IFDIR | 0o700, nlink: 2, parent: 256, nextIndex: 2, guessed: base},
		{name: "root", ino: fs.RootIno, subdirs: 1, next: 9,
			mode: syscall.S_IFDIR | 0o700, nlink: 3, parent: fs.RootIno, nextIndex: 9, guessed: base},
		{name: "symlink with its target", ino: 306, nm: &nameOf{typ: syscall.S_IFLNK >> 12, names: 1, parent: 256}, target: true,
			mode: syscall.S_IFLNK | 0o777, nlink: 1, guessed: base},
		{name: "symlink without", ino: 307, nm: &nameOf{typ: syscall.S_IFLNK >> 12, names: 1, parent: 256},
			mode: syscall.S_IFLNK | 0o777, nlink: 1, guessed: append(base, "target")},
		{name: "device node", ino: 308, nm: &nameOf{typ: syscall.S_IFBLK >> 12, names: 1, parent: 256},
			mode: syscall.S_IFBLK | 0o600, nlink: 1, guessed: append(base, "rdev")},
		{name: "an entry of no known type", ino: 309, nm: &nameOf{typ: 0xff, names: 1, parent: 256},
			mode: syscall.S_IFREG | 0o600, nlink: 1, guessed: append(base, "size")},
	}
	for _, c := range cases {
		in, rc := reconstructInode(c.ino, c.nm, c.fo, c.subdirs, c.next, c.target, c.deleted, now, 77)
		want := format.InodeItem{Mode: c.mode, Nlink: c.nlink, Size: c.size, Blocks: c.blocks, Parent: c.parent, NextIndex: c.nextIndex,
			Generation: 77, Atime: now, Mtime: now, Ctime: now, Btime: now}
		if in != want {
			t.Errorf("%s: item %+v, want %+v", c.name, in, want)
		}
		if rc.Ino != c.ino || rc.Mode != c.mode || rc.Nlink != c.nlink || rc.Size != c.size || !slices.Equal(rc.Guessed, c.guessed) {
			t.Errorf("%s: listed %+v, want mode %#o nlink %d size %d guessed %v", c.name, rc, c.mode, c.nlink, c.size, c.guessed)
		}
	}
}
