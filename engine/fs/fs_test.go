package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

const testBlocks = 16384 // 64 MiB

var debugFS = false

func newDev(t testing.TB) *disk.Mem {
	t.Helper()
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return dev
}

func mount(t testing.TB, dev disk.Device, opts Options) *FS {
	t.Helper()
	if opts.CommitInterval == 0 {
		opts.CommitInterval = -1
	}
	f, err := Open(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// mustClean runs the engine's full self-check on the last commit.
func mustClean(t testing.TB, f *FS) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	s := f.Engine().Pin()
	defer s.Release()
	var fs []string
	if _, err := s.Check(context.Background(), func(x engine.Finding) { fs = append(fs, x.String()) }); err != nil {
		t.Fatal(err)
	}
	if len(fs) > 0 {
		t.Fatalf("self-check found:\n%s", strings.Join(fs, "\n"))
	}
}

// --- the model ---

type mnode struct {
	dir      bool
	children map[string]*mnode
	data     []byte
	target   string
	nlink    int
}

func newDir() *mnode { return &mnode{dir: true, children: map[string]*mnode{}, nlink: 2} }

type model struct {
	root *mnode
}

// walk resolves a path in the model.
func (m *model) get(path []string) *mnode {
	n := m.root
	for _, p := range path {
		if n == nil || !n.dir {
			return nil
		}
		n = n.children[p]
	}
	return n
}

// paths lists every path in the model (directories first).
func (m *model) paths(wantDir bool) [][]string {
	var out [][]string
	var rec func(n *mnode, p []string)
	rec = func(n *mnode, p []string) {
		names := make([]string, 0, len(n.children))
		for k := range n.children {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			c := n.children[k]
			cp := append(slices.Clone(p), k)
			if c.dir == wantDir {
				out = append(out, cp)
			}
			if c.dir {
				rec(c, cp)
			}
		}
	}
	if wantDir {
		out = append(out, nil)
	}
	rec(m.root, nil)
	return out
}

func join(p []string) string { return "/" + strings.Join(p, "/") }

// compare checks that the filesystem holds exactly the model.
func compare(t *testing.T, f *FS, m *model) {
	t.Helper()
	var rec func(ino uint64, n *mnode, path string)
	rec = func(ino uint64, n *mnode, path string) {
		got := map[string]uint64{}
		if err := f.ReadDir(ino, 0, func(de DirEntry) bool {
			if de.Name != "." && de.Name != ".." {
				got[de.Name] = de.Ino
			}
			return true
		}); err != nil {
			t.Fatalf("readdir %s: %v", path, err)
		}
		if len(got) != len(n.children) {
			t.Fatalf("%s: fs has %d entries %v, model %d", path, len(got), keys(got), len(n.children))
		}
		for name, c := range n.children {
			cino, ok := got[name]
			if !ok {
				t.Fatalf("%s/%s missing", path, name)
			}
			a, err := f.GetAttr(cino)
			if err != nil {
				t.Fatalf("%s/%s: getattr %v", path, name, err)
			}
			switch {
			case c.dir:
				if a.Mode&syscall.S_IFMT != syscall.S_IFDIR || int(a.Nlink) != c.nlink {
					t.Fatalf("%s/%s: mode %o nlink %d, model dir nlink %d", path, name, a.Mode, a.Nlink, c.nlink)
				}
				rec(cino, c, path+"/"+name)
			case c.target != "":
				tg, err := f.Readlink(cino)
				if err != nil || tg != c.target {
					t.Fatalf("%s/%s: readlink %q %v, model %q", path, name, tg, err, c.target)
				}
			default:
				if a.Size != uint64(len(c.data)) || int(a.Nlink) != c.nlink {
					t.Fatalf("%s/%s: size %d nlink %d, model %d/%d", path, name, a.Size, a.Nlink, len(c.data), c.nlink)
				}
				buf := make([]byte, len(c.data)+10)
				k, err := f.Read(cino, buf, 0)
				if err != nil || !bytes.Equal(buf[:k], c.data) {
					t.Fatalf("%s/%s: content differs (read %d, %v)", path, name, k, err)
				}
			}
		}
	}
	rec(RootIno, m.root, "")
}

func keys(m map[string]uint64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var names = []string{"a", "b", "c", "d", "e", "long-" + strings.Repeat("x", 200)}

// step performs one random valid operation on both the filesystem and the
// model.
func step(t *testing.T, r *rand.Rand, f *FS, m *model) {
	t.Helper()
	dirs, files := m.paths(true), m.paths(false)
	pick := func(ps [][]string) []string { return ps[r.IntN(len(ps))] }
	resolve := func(p []string) uint64 {
		a, err := f.Resolve(join(p))
		if err != nil {
			t.Fatalf("resolve %s: %v", join(p), err)
		}
		return a.Ino
	}
	must := func(err error, what string) {
		if err != nil {
			var ioe *ioError
			if errors.As(err, &ioe) {
				t.Fatalf("%s: %v (%v)", what, err, ioe.err)
			}
			t.Fatalf("%s: %#v", what, err)
		}
	}
	switch op := r.IntN(20); {
	case op < 3: // create
		d := pick(dirs)
		name := names[r.IntN(len(names))]
		dn := m.get(d)
		_, err := f.Create(resolve(d), name, NewInode{Mode: 0o644})
		if _, exists := dn.children[name]; exists {
			if !errors.Is(err, syscall.EEXIST) {
				t.Fatalf("create over existing %s/%s: %v", join(d), name, err)
			}
			return
		}
		must(err, "create "+join(append(d, name)))
		dn.children[name] = &mnode{nlink: 1}
	case op < 4: // mkdir
		d := pick(dirs)
		name := names[r.IntN(len(names))]
		dn := m.get(d)
		if _, exists := dn.children[name]; exists {
			return
		}
		_, err := f.Mkdir(resolve(d), name, NewInode{Mode: 0o755})
		must(err, "mkdir")
		dn.children[name] = newDir()
		dn.nlink++
	case op < 9: // write
		if len(files) == 0 {
			return
		}
		p := pick(files)
		n := m.get(p)
		if n.target != "" {
			return
		}
		off := r.IntN(64 << 10)
		if r.IntN(4) == 0 {
			off = len(n.data)
		}
		data := randBytes(r, 1+r.IntN(20000))
		ino := resolve(p)
		_, err := f.Write(ino, data, int64(off))
		must(err, "write")
		if end := off + len(data); end > len(n.data) {
			n.data = append(n.data, make([]byte, end-len(n.data))...)
		}
		copy(n.data[off:], data)
	case op < 10: // truncate
		if len(files) == 0 {
			return
		}
		p := pick(files)
		n := m.get(p)
		if n.target != "" {
			return
		}
		size := r.IntN(70 << 10)
		if debugFS {
			t.Logf("truncate ino %d to %d", resolve(p), size)
		}
		must(f.Truncate(resolve(p), uint64(size)), "truncate")
		if size < len(n.data) {
			n.data = n.data[:size]
		} else {
			n.data = append(n.data, make([]byte, size-len(n.data))...)
		}
	case op < 12: // unlink or rmdir
		if r.IntN(2) == 0 && len(files) > 0 {
			p := pick(files)
			must(f.Unlink(resolve(p[:len(p)-1]), p[len(p)-1]), "unlink")
			n := m.get(p)
			n.nlink--
			delete(m.get(p[:len(p)-1]).children, p[len(p)-1])
			return
		}
		if len(dirs) < 2 {
			return
		}
		p := dirs[1+r.IntN(len(dirs)-1)]
		n := m.get(p)
		err := f.Rmdir(resolve(p[:len(p)-1]), p[len(p)-1])
		if len(n.children) > 0 {
			if !errors.Is(err, syscall.ENOTEMPTY) {
				t.Fatalf("rmdir of non-empty %s: %v", join(p), err)
			}
			return
		}
		must(err, "rmdir")
		parent := m.get(p[:len(p)-1])
		delete(parent.children, p[len(p)-1])
		parent.nlink--
	case op < 15: // rename
		all := append(dirs[1:], files...)
		if len(all) == 0 {
			return
		}
		src := pick(all)
		dst := append(slices.Clone(pick(dirs)), names[r.IntN(len(names))])
		sn, sp := m.get(src), m.get(src[:len(src)-1])
		dp := m.get(dst[:len(dst)-1])
		tn := dp.children[dst[len(dst)-1]]
		err := f.Rename(resolve(src[:len(src)-1]), src[len(src)-1], resolve(dst[:len(dst)-1]), dst[len(dst)-1], 0)
		// Model the rules.
		var want error
		switch {
		case sn.dir && len(dst) > len(src) && slices.Equal(dst[:len(src)], src):
			want = syscall.EINVAL
		case tn == sn:
			want = nil
		case tn != nil && sn.dir && !tn.dir:
			want = syscall.ENOTDIR
		case tn != nil && !sn.dir && tn.dir:
			want = syscall.EISDIR
		case tn != nil && tn.dir && len(tn.children) > 0:
			want = syscall.ENOTEMPTY
		}
		if want != nil || tn == sn {
			if !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("rename %s -> %s: %v, want %v", join(src), join(dst), err, want)
			}
			return
		}
		must(err, fmt.Sprintf("rename %s -> %s", join(src), join(dst)))
		if tn != nil {
			if tn.dir {
				dp.nlink--
			} else {
				tn.nlink--
			}
		}
		delete(sp.children, src[len(src)-1])
		dp.children[dst[len(dst)-1]] = sn
		if sn.dir && sp != dp {
			sp.nlink--
			dp.nlink++
		}
	case op < 16: // link
		if len(files) == 0 {
			return
		}
		p := pick(files)
		d := pick(dirs)
		name := names[r.IntN(len(names))]
		dn := m.get(d)
		if _, exists := dn.children[name]; exists {
			return
		}
		_, err := f.Link(resolve(p), resolve(d), name)
		must(err, "link")
		n := m.get(p)
		n.nlink++
		dn.children[name] = n
	case op < 17: // symlink
		d := pick(dirs)
		name := names[r.IntN(len(names))]
		dn := m.get(d)
		if _, exists := dn.children[name]; exists {
			return
		}
		target := strings.Repeat("t", 1+r.IntN(100))
		_, err := f.Symlink(resolve(d), name, target, NewInode{})
		must(err, "symlink")
		dn.children[name] = &mnode{target: target, nlink: 1}
	case op < 19: // fsync
		if len(files) == 0 {
			return
		}
		must(f.Fsync(resolve(pick(files))), "fsync")
	default:
		if debugFS {
			t.Logf("sync")
		}
		must(f.Sync(), "sync")
	}
}

func TestModelRandomOps(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			m := &model{root: newDir()}
			ops := 1500
			if raceEnabled {
				ops = 500
			}
			for i := 0; i < ops; i++ {
				step(t, r, f, m)
				if i%300 == 0 {
					compare(t, f, m)
				}
			}
			compare(t, f, m)
			mustClean(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			f = mount(t, nopClose{dev}, Options{})
			compare(t, f, m)
			mustClean(t, f)
			f.Close()
		})
	}
}

// TestModelRandomOpsFormat11 runs the model on an image of format 1.1,
// whose rmap records carry no mappings: this build keeps writing them so
// (the check reports a record of the wrong size for the format).
func TestModelRandomOpsFormat11(t *testing.T) {
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{NoRmapMaps: true}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 99))
	f := mount(t, nopClose{dev}, Options{})
	m := &model{root: newDir()}
	for i := 0; i < 500; i++ {
		step(t, r, f, m)
	}
	compare(t, f, m)
	mustClean(t, f)
	s := f.Engine().Pin()
	if sb := s.Super(); sb.Minor != 1 || sb.Incompat&format.IncompatRmapMaps != 0 {
		t.Errorf("format %d.%d incompat %#x after use", sb.Major, sb.Minor, sb.Incompat)
	}
	s.Release()
	f.Close()
}

func TestErrnos(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	d, _ := f.Mkdir(RootIno, "d", NewInode{Mode: 0o755})
	a, _ := f.Create(d.Ino, "f", NewInode{Mode: 0o644})
	cases := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"lookup missing", second(f.Lookup(RootIno, "nope")), syscall.ENOENT},
		{"create existing", second(f.Create(d.Ino, "f", NewInode{})), syscall.EEXIST},
		{"rmdir non-empty", f.Rmdir(RootIno, "d"), syscall.ENOTEMPTY},
		{"unlink dir", f.Unlink(RootIno, "d"), syscall.EISDIR},
		{"rmdir file", f.Rmdir(d.Ino, "f"), syscall.ENOTDIR},
		{"lookup in file", second(f.Lookup(a.Ino, "x")), syscall.ENOTDIR},
		{"name too long", second(f.Create(d.Ino, strings.Repeat("n", 256), NewInode{})), syscall.ENAMETOOLONG},
		{"rename into own subtree", f.Rename(RootIno, "d", d.Ino, "x", 0), syscall.EINVAL},
		{"link dir", second(f.Link(d.Ino, RootIno, "dl")), syscall.EPERM},
		{"read dir", second(f.Read(d.Ino, make([]byte, 4), 0)), syscall.EISDIR},
		{"readlink file", second(f.Readlink(a.Ino)), syscall.EINVAL},
		{"rename noreplace", rename2(f, d.Ino), syscall.EEXIST},
	}
	for _, c := range cases {
		if Errno(c.err) != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
}

func rename2(f *FS, dir uint64) error {
	f.Create(dir, "g", NewInode{})
	return f.Rename(dir, "f", dir, "g", RenameNoReplace)
}

func second[T any](_ T, err error) error { return err }

func TestSparseAndTruncate(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	a, _ := f.Create(RootIno, "sparse", NewInode{})
	if _, err := f.Write(a.Ino, []byte("end"), 10<<20); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	if n, err := f.Read(a.Ino, buf, 5<<20); err != nil || n != len(buf) || !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatalf("hole read: %d %v", n, err)
	}
	at, _ := f.GetAttr(a.Ino)
	if at.Blocks != 1 || at.Size != 10<<20+3 {
		t.Fatalf("sparse file attr %+v", at)
	}
	if _, err := f.Write(a.Ino, bytes.Repeat([]byte{7}, 10000), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(a.Ino, 5000); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(a.Ino, 9000); err != nil {
		t.Fatal(err)
	}
	buf = make([]byte, 10000)
	n, _ := f.Read(a.Ino, buf, 0)
	want := append(bytes.Repeat([]byte{7}, 5000), make([]byte, 4000)...)
	if n != 9000 || !bytes.Equal(buf[:n], want) {
		t.Fatalf("truncate down and up: %d bytes", n)
	}
	mustClean(t, f)
}

func TestUnlinkWhileOpen(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	a, _ := f.Create(RootIno, "tmp", NewInode{})
	f.Write(a.Ino, []byte("still here"), 0)
	f.Open(a.Ino)
	if err := f.Unlink(RootIno, "tmp"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, err := f.Read(a.Ino, buf, 0); err != nil || string(buf[:n]) != "still here" {
		t.Fatalf("read after unlink: %q %v", buf[:n], err)
	}
	mustClean(t, f)
	// Crash with the file open: the next mount frees it.
	f2 := mount(t, disk.NewMemFrom(dev.Bytes()), Options{})
	if _, err := f2.GetAttr(a.Ino); Errno(err) != syscall.ENOENT {
		t.Fatalf("orphan survived remount: %v", err)
	}
	mustClean(t, f2)
	f2.Close()
	if err := f.Release(a.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetAttr(a.Ino); Errno(err) != syscall.ENOENT {
		t.Fatalf("inode survived last close: %v", err)
	}
	mustClean(t, f)
	f.Close()
}

func TestCorruptDataBlockEIO(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	a, _ := f.Create(RootIno, "victim", NewInode{})
	f.Write(a.Ino, bytes.Repeat([]byte("good"), 3000), 0)
	f.Sync()
	var disk0 format.BlockNr
	f.Engine().View(func(tx *engine.Tx) error {
		_, fe, _, err := extentAt(tx, a.Ino, 1)
		disk0 = fe.Start + 1
		return err
	})
	f.Close()
	img := dev.Bytes()
	img[int(disk0)*format.BlockSize+17] ^= 0x40
	f = mount(t, disk.NewMemFrom(img), Options{})
	defer f.Close()
	buf := make([]byte, 12000)
	_, err := f.Read(a.Ino, buf, 0)
	if Errno(err) != syscall.EIO || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("read of a corrupt block: %v", err)
	}
	// The undamaged first block still reads.
	if n, err := f.Read(a.Ino, buf[:4096], 0); err != nil || n != 4096 {
		t.Fatalf("read of the good block: %d %v", n, err)
	}
	if f.Stats().CsumErrors == 0 {
		t.Fatal("checksum error not counted")
	}
}

// TestFsyncCrashAtEveryFlush runs writes and fsyncs on a recording device;
// at every flush boundary the crashed image must mount (replaying the log),
// pass the self-check, and hold for every file a state at least as new as
// its last acknowledged fsync, never garbage.
func TestFsyncCrashAtEveryFlush(t *testing.T) { fsyncCrashSeeds(t, plain) }

// TestFsyncCrashAtEveryFlushDelalloc is TestFsyncCrashAtEveryFlush with a
// buffer bound of 3 blocks, so that writers write out each other's
// buffered blocks between fsyncs and commits (delalloc.go); ...NoDelalloc
// with every write allocated at once.
func TestFsyncCrashAtEveryFlushDelalloc(t *testing.T) {
	fsyncCrashSeedsWith(t, plain, Options{MaxDelayedBlocks: 3})
}

func TestFsyncCrashAtEveryFlushNoDelalloc(t *testing.T) {
	fsyncCrashSeedsWith(t, plain, Options{NoDelayedAlloc: true})
}

// TestFsyncDuringWriteOutCrashAtEveryFlush is TestFsyncCrashAtEveryFlush
// with writes and fsyncs inside each commit's write-out (after its blocks
// are written, or after they are flushed and before the superblock): an
// fsync then appends to the log while the commit is in flight, and its
// records must hold on top of either generation.
func TestFsyncDuringWriteOutCrashAtEveryFlush(t *testing.T) { fsyncCrashSeeds(t, inWriteOut) }

// A commit prepared and written while an fsync flushes its log blocks
// (which it does with the writer lock released): whichever superblock a
// crash leaves, the fsync'd state survives.
func TestCommitDuringFsyncFlushCrashAtEveryFlush(t *testing.T) { fsyncCrashSeeds(t, commitInFlush) }

// How fsyncs and commits overlap in fsyncCrash.
type fsyncOverlap int

const (
	plain         fsyncOverlap = iota
	inWriteOut                 // fsyncs run inside commits' write-outs
	commitInFlush              // commits run inside fsyncs' log flushes
)

// flushHook is a device that runs a function (once) when a flush starts.
type flushHook struct {
	disk.Device
	fn func()
}

func (d *flushHook) Flush() error {
	if fn := d.fn; fn != nil {
		d.fn = nil
		fn()
	}
	return d.Device.Flush()
}

// crashPoints returns the flush boundaries 0..n a crash test checks: every
// one, except under the race detector (which slows each check tenfold),
// where it checks every eighth (from an offset the seed picks) and the last;
// the suite runs these tests without the race detector as well, at every
// boundary. SCRUBD_CRASH_ALL=1 checks every boundary under the race
// crashAck says that state idx of a crash test's list was acknowledged
// durable once the recorder had seen flush flushes.
type crashAck struct{ flush, idx int }

// lastAcked returns the newest state acks say is durable at flush k: a
// crash image taken there must hold it or a newer one.
func lastAcked(acks []crashAck, k int) int {
	m := 0
	for _, a := range acks {
		if a.flush <= k {
			m = max(m, a.idx)
		}
	}
	return m
}

// detector too.
func crashPoints(n int, seed uint64) []int {
	stride := 1
	if raceEnabled && os.Getenv("SCRUBD_CRASH_ALL") == "" {
		stride = 8
	}
	var ks []int
	for k := int(seed) % stride; k <= n; k += stride {
		ks = append(ks, k)
	}
	if ks[len(ks)-1] != n {
		ks = append(ks, n)
	}
	return ks
}

func fsyncCrashSeeds(t *testing.T, overlap fsyncOverlap) { fsyncCrashSeedsWith(t, overlap, Options{}) }

// fsyncCrashSeedsWith runs fsyncCrash with opts: four seeds, one under
// -short or the race detector, and one for a variant of the default
// options unless SCRUBD_CRASH_ALL=1.
func fsyncCrashSeedsWith(t *testing.T, overlap fsyncOverlap, opts Options) {
	seeds := uint64(4)
	variant := opts.NoDelayedAlloc || opts.MaxDelayedBlocks != 0
	if raceEnabled || testing.Short() || variant && os.Getenv("SCRUBD_CRASH_ALL") == "" {
		seeds = 1
	}
	for seed := uint64(4); seed < 4+seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { fsyncCrash(t, seed, overlap, opts) })
	}
}

func fsyncCrash(t *testing.T, seed uint64, overlap fsyncOverlap, opts Options) {
	base := newDev(t)
	rec := disk.NewRecorder(base.Bytes())
	hook := &flushHook{Device: rec}
	f := mount(t, nopClose{hook}, opts)
	const nfiles = 3
	r := rand.New(rand.NewPCG(seed, 4))
	inos := make([]uint64, nfiles)
	history := make([][][]byte, nfiles) // every state each file went through
	type ack struct{ flush, idx int }
	acks := make([][]ack, nfiles)
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprintf("f%d", i), NewInode{})
		if err != nil {
			t.Fatal(err)
		}
		inos[i] = a.Ino
		history[i] = [][]byte{nil}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	created := rec.Flushes()
	for i := range inos {
		acks[i] = append(acks[i], ack{created, 0})
	}
	steps := 120
	if testing.Short() || raceEnabled {
		steps = 50
	}
	write := func(i int) {
		cur := slices.Clone(history[i][len(history[i])-1])
		off := r.IntN(40000)
		data := randBytes(r, 1+r.IntN(9000))
		if _, err := f.Write(inos[i], data, int64(off)); err != nil {
			t.Fatal(err)
		}
		if end := off + len(data); end > len(cur) {
			cur = append(cur, make([]byte, end-len(cur))...)
		}
		copy(cur[off:], data)
		history[i] = append(history[i], cur)
	}
	overlapped := 0
	// A commit makes what was written before it durable; with
	// inWriteOut, writes and fsyncs inside its write-out belong to the
	// next transaction.
	var fsync func(i int)
	commit := func() {
		before := make([]int, nfiles)
		for j := range inos {
			before[j] = len(history[j]) - 1
		}
		if overlap == inWriteOut {
			stage := r.IntN(2)
			f.Engine().SetWriteOutHook(func(at int) {
				if at != stage {
					return
				}
				for k := 1 + r.IntN(4); k > 0; k-- {
					j := r.IntN(nfiles)
					write(j)
					logged := f.Stats().FsyncLogged
					fsync(j)
					if f.Stats().FsyncLogged > logged {
						overlapped++
					}
				}
			})
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Engine().SetWriteOutHook(nil)
		for j := range inos {
			acks[j] = append(acks[j], ack{rec.Flushes(), before[j]})
		}
	}
	fsync = func(i int) {
		logged := f.Stats().FsyncLogged
		inFlush := false
		if overlap == commitInFlush && r.IntN(2) == 0 {
			// A commit inside the fsync's log flush. If the fsync
			// commits instead, the first flush is that commit's (its
			// write-out has started: the hook must not commit).
			writingOut := false
			f.Engine().SetWriteOutHook(func(int) { writingOut = true })
			hook.fn = func() {
				if !writingOut {
					inFlush = true
					commit()
				}
			}
		}
		if err := f.Fsync(inos[i]); err != nil {
			t.Fatal(err)
		}
		hook.fn = nil
		f.Engine().SetWriteOutHook(nil)
		if inFlush && f.Stats().FsyncLogged > logged {
			overlapped++
		}
		acks[i] = append(acks[i], ack{rec.Flushes(), len(history[i]) - 1})
	}
	for s := 0; s < steps; s++ {
		i := r.IntN(nfiles)
		switch op := r.IntN(10); {
		case op < 6:
			write(i)
		case op < 9:
			fsync(i)
		default:
			commit()
		}
	}
	st := f.Stats()
	if st.FsyncLogged == 0 {
		t.Fatalf("no fsync used the log: %+v", st)
	}
	if overlap != plain && overlapped == 0 {
		t.Fatalf("no fsync overlapped a commit as asked (%v): %+v", overlap, st)
	}
	rng := rand.New(rand.NewPCG(seed, 5))
	for _, k := range crashPoints(rec.Flushes(), seed) {
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom} {
			img := rec.CrashImage(k, mode, rng)
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			for i := range inos {
				// The oldest state allowed: the newest acknowledged at k.
				min := 0
				for _, a := range acks[i] {
					if a.flush <= k {
						min = max(min, a.idx)
					}
				}
				a, err := cf.GetAttr(inos[i])
				if k < created && Errno(err) == syscall.ENOENT {
					continue // not durably created yet
				}
				if err != nil {
					t.Fatalf("%s: file %d: %v", name, i, err)
				}
				buf := make([]byte, a.Size)
				n, err := cf.Read(inos[i], buf, 0)
				if err != nil {
					t.Fatalf("%s: file %d: read: %v", name, i, err)
				}
				ok := false
				for _, h := range history[i][min:] {
					if bytes.Equal(buf[:n], h) {
						ok = true
						break
					}
				}
				if !ok {
					t.Fatalf("%s: file %d (%d bytes) matches no state at or after the acknowledged one (%d of %d)", name, i, n, min, len(history[i]))
				}
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
}
