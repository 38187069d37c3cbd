package fs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

func incompat(f *FS) (uint64, uint16) {
	s := f.Engine().Pin()
	defer s.Release()
	sb := s.Super()
	return sb.Incompat, sb.Minor
}

// targetItems counts the symlink target items of ino in the running
// transaction.
func targetItems(t *testing.T, f *FS, ino uint64) int {
	t.Helper()
	n := 0
	if err := f.Engine().View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeInode)
		return tr.Ascend(format.SymlinkKey(ino), func(k format.Key, _ []byte) bool {
			if k.Obj != ino || k.Type != format.TypeSymlink {
				return false
			}
			n++
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLongSymlinksNeedTheVersion: on an image of format 1.4 (before
// long_symlinks), mounted without an upgrade, a target over 900 bytes is
// ENAMETOOLONG, as before the feature, and the image keeps its version;
// 900 bytes still work.
func TestLongSymlinksNeedTheVersion(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{Version: "1.4"}); err != nil {
		t.Fatal(err)
	}
	f := mount(t, nopClose{dev}, Options{Engine: engine.Options{VersionUpgrade: engine.UpgradeNone}})
	if _, err := f.Symlink(RootIno, "long", strings.Repeat("x", 901), NewInode{}); Errno(err) != syscall.ENAMETOOLONG {
		t.Fatalf("901-byte target on a 1.4 image: %v, want ENAMETOOLONG", err)
	}
	a, err := f.Symlink(RootIno, "s900", strings.Repeat("y", 900), NewInode{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.Readlink(a.Ino); err != nil || len(got) != 900 {
		t.Fatalf("readlink: %d bytes, %v", len(got), err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if inc, minor := incompat(f); inc&format.IncompatLongSymlinks != 0 || minor != 4 {
		t.Fatalf("a 1.4 image became incompat %#x, format 1.%d", inc, minor)
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLongSymlinks: targets up to 4095 bytes read back whole (4096 is
// ENAMETOOLONG) on an image of format 1.5 (IncompatLongSymlinks, which
// mkfs sets); unlink frees every chunk.
func TestLongSymlinks(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	targets := map[string]string{}
	mk := func(name string, n int) uint64 {
		t.Helper()
		tg := strings.Repeat(fmt.Sprintf("%s/", name), n)[:n]
		a, err := f.Symlink(RootIno, name, tg, NewInode{})
		if err != nil {
			t.Fatalf("symlink of %d bytes: %v", n, err)
		}
		if a.Size != uint64(n) {
			t.Fatalf("symlink of %d bytes has size %d", n, a.Size)
		}
		targets[name] = tg
		return a.Ino
	}
	_, minor0 := incompat(f)
	short := mk("s1", 1)
	mk("s900", 900)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if inc, minor := incompat(f); inc&format.IncompatLongSymlinks == 0 || minor != minor0 || minor < 5 {
		t.Fatalf("a new image has incompat %#x, format 1.%d", inc, minor)
	}
	inos := map[string]uint64{}
	for _, n := range []int{901, 1800, 1801, 2700, 4000, 4095} {
		name := fmt.Sprintf("l%d", n)
		inos[name] = mk(name, n)
		if got, want := targetItems(t, f, inos[name]), (n+format.MaxSymlinkItem-1)/format.MaxSymlinkItem; got != want {
			t.Fatalf("target of %d bytes in %d items, want %d", n, got, want)
		}
	}
	if _, err := f.Symlink(RootIno, "toolong", strings.Repeat("x", 4096), NewInode{}); Errno(err) != syscall.ENAMETOOLONG {
		t.Fatalf("symlink of 4096 bytes: %v, want ENAMETOOLONG", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if inc, minor := incompat(f); inc&format.IncompatLongSymlinks == 0 || minor < 5 {
		t.Fatalf("long targets left incompat %#x, format 1.%d", inc, minor)
	}
	check := func(f *FS) {
		t.Helper()
		for name, tg := range targets {
			a, err := f.Lookup(RootIno, name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Readlink(a.Ino)
			if err != nil || got != tg {
				t.Fatalf("readlink %s: %d bytes, %v; want %d", name, len(got), err, len(tg))
			}
		}
	}
	check(f)
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	defer f.Close()
	check(f)
	// Unlink frees every chunk.
	for _, name := range []string{"l1801", "l4095"} {
		if err := f.Unlink(RootIno, name); err != nil {
			t.Fatal(err)
		}
		if n := targetItems(t, f, inos[name]); n != 0 {
			t.Fatalf("%s: %d target items left after unlink", name, n)
		}
		delete(targets, name)
	}
	if err := f.Unlink(RootIno, "s1"); err != nil || targetItems(t, f, short) != 0 {
		t.Fatalf("unlink of a short symlink: %v, %d items left", err, targetItems(t, f, short))
	}
	delete(targets, "s1")
	check(f)
	mustClean(t, f)
}

// itemTree is what a test damages items through.
type itemTree interface {
	Put(format.Key, []byte) error
	Delete(format.Key) (bool, error)
}

// TestLongSymlinkCorrupt damages a long target's items: readlink fails
// with EIO (never panics, never returns a shorter target), the check
// reports each, and unlink still frees what is there.
func TestLongSymlinkCorrupt(t *testing.T) {
	cases := []struct {
		name   string
		damage func(tr itemTree, ino uint64) error
	}{
		{"middle chunk missing", func(tr itemTree, ino uint64) error {
			_, err := tr.Delete(format.SymlinkChunkKey(ino, 900, 2000))
			return err
		}},
		{"last chunk missing", func(tr itemTree, ino uint64) error {
			_, err := tr.Delete(format.SymlinkChunkKey(ino, 1800, 2000))
			return err
		}},
		{"chunk of the wrong length", func(tr itemTree, ino uint64) error {
			return tr.Put(format.SymlinkChunkKey(ino, 900, 2000), []byte("short"))
		}},
		{"chunk claiming another length", func(tr itemTree, ino uint64) error {
			return tr.Put(format.Key{Obj: ino, Type: format.TypeSymlink, Off: 1800, Aux: 1900}, make([]byte, 100))
		}},
		{"huge claimed length", func(tr itemTree, ino uint64) error {
			return tr.Put(format.Key{Obj: ino, Type: format.TypeSymlink, Off: 2700, Aux: 1 << 62}, make([]byte, 900))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := mount(t, nopClose{smallDev(t)}, Options{})
			defer f.Close()
			a, err := f.Symlink(RootIno, "l", strings.Repeat("t", 2000), NewInode{})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Engine().Update(func(tx *engine.Tx) error {
				tr, err := tx.Tree(format.TreeInode)
				if err != nil {
					return err
				}
				return c.damage(tr, a.Ino)
			}); err != nil {
				t.Fatal(err)
			}
			if got, err := f.Readlink(a.Ino); Errno(err) != syscall.EIO {
				t.Fatalf("readlink of a damaged target: %d bytes, %v; want EIO", len(got), err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			s := f.Engine().Pin()
			var found []string
			if _, err := s.Check(context.Background(), func(x engine.Finding) { found = append(found, x.String()) }); err != nil {
				t.Fatal(err)
			}
			s.Release()
			if len(found) == 0 {
				t.Fatal("the check found nothing wrong with a damaged target")
			}
			t.Log(found)
			if err := f.Unlink(RootIno, "l"); err != nil {
				t.Fatal(err)
			}
			mustClean(t, f)
		})
	}
}

// TestLongSymlinkFsyncCrashAtEveryFlush makes long symlinks, each followed
// by an fsync of its directory, between writes and logged fsyncs of a
// file: at every flush boundary the crashed image mounts clean, every
// symlink acknowledged is there with its whole target, any symlink there
// has its whole target (never a part), and an image holding a long one
// has IncompatLongSymlinks.
func TestLongSymlinkFsyncCrashAtEveryFlush(t *testing.T) {
	began := time.Now()
	rec := disk.NewRecorder(smallDev(t).Bytes())
	f := mount(t, nopClose{rec}, Options{})
	d, err := f.Mkdir(RootIno, "d", NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	file, err := f.Create(RootIno, "file", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	start := rec.Flushes()
	type link struct {
		name, target string
		acked        int // the flush count its fsync returned at
	}
	var links []link
	r := rand.New(rand.NewPCG(18, 2))
	n := 8
	switch {
	case raceEnabled:
		n = 2
	case testing.Short():
		n = 4
	}
	logged := 0
	for i := 0; i < n; i++ {
		// A write and a logged fsync of another file first.
		if _, err := f.Write(file.Ino, randBytes(r, 5000), int64(r.IntN(20000))); err != nil {
			t.Fatal(err)
		}
		before := f.Stats().FsyncLogged
		if err := f.Fsync(file.Ino); err != nil {
			t.Fatal(err)
		}
		logged += int(f.Stats().FsyncLogged - before)
		l := link{name: fmt.Sprintf("l%d", i), target: string(randName(r, 901+r.IntN(4095-901+1)))}
		if _, err := f.Symlink(d.Ino, l.name, l.target, NewInode{}); err != nil {
			t.Fatal(err)
		}
		if err := f.Fsync(d.Ino); err != nil {
			t.Fatal(err)
		}
		l.acked = rec.Flushes()
		links = append(links, l)
	}
	if logged == 0 {
		t.Fatal("no fsync went through the log")
	}
	stride := 1
	switch {
	case raceEnabled:
		// The race pass checks the last boundary (the full pass every
		// one): a crash image costs seconds there.
		stride = len(crashPoints(rec.Flushes(), 18)) + 1
	case testing.Short():
		stride = 3
	}
	t.Logf("recorded %d flushes in %v", rec.Flushes(), time.Since(began))
	rng := rand.New(rand.NewPCG(18, 3))
	checked := 0
	defer func() { t.Logf("checked %d crash images by %v", checked, time.Since(began)) }()
	for i, k := range crashPoints(rec.Flushes(), 18) {
		if k < start || (i%stride != 0 && k != rec.Flushes()) {
			continue
		}
		modes := []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom}
		if raceEnabled {
			modes = modes[1:]
		}
		for _, mode := range modes {
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			present := 0
			for _, l := range links {
				a, err := cf.Lookup(d.Ino, l.name)
				if Errno(err) == syscall.ENOENT {
					if k >= l.acked {
						t.Fatalf("%s: %s lost after its fsync", name, l.name)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: lookup %s: %v", name, l.name, err)
				}
				got, err := cf.Readlink(a.Ino)
				if err != nil || got != l.target {
					t.Fatalf("%s: readlink %s: %d bytes, %v; want %d", name, l.name, len(got), err, len(l.target))
				}
				present++
			}
			if inc, _ := incompat(cf); present > 0 && inc&format.IncompatLongSymlinks == 0 {
				t.Fatalf("%s: long symlinks on an image without IncompatLongSymlinks (%#x)", name, inc)
			}
			mustClean(t, cf)
			cf.Close()
			checked++
		}
	}
	mustClean(t, f)
	f.Close()
}

// randName returns n random bytes a target may hold (no NUL).
func randName(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(1 + r.IntN(255))
	}
	return b
}
