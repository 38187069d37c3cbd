package repair

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/xfile"
)

// dirImage makes an image of dirs directories of files files each (the
// files hold their own path), a three-level dir tree at 40 × 120, and
// returns it.
func dirImage(t testing.TB, dirs, files int) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "dirs.img")
	if err := engine.MkfsPath(img, 256<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for d := 0; d < dirs; d++ {
		da, err := f.Mkdir(fs.RootIno, fmt.Sprintf("d%03d", d), fs.NewInode{Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < files; i++ {
			name := fmt.Sprintf("file-%04d", i)
			a, err := f.Create(da.Ino, name, fs.NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			if i%8 == 0 {
				if _, err := f.Write(a.Ino, []byte(fmt.Sprintf("/d%03d/%s", d, name)), 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

// namespace lists every path under dir (ReadDir for the names, Lookup for
// each: both twins) with its inode.
func namespace(t testing.TB, f *fs.FS) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	var walk func(dir uint64, prefix string)
	walk = func(dir uint64, prefix string) {
		var ents []fs.DirEntry
		if err := f.ReadDir(dir, 2, func(de fs.DirEntry) bool { ents = append(ents, de); return true }); err != nil {
			t.Fatalf("readdir %s: %v", prefix, err)
		}
		for _, de := range ents {
			a, err := f.Lookup(dir, de.Name)
			if err != nil || a.Ino != de.Ino {
				t.Fatalf("lookup %s/%s: %v (inode %d, readdir says %d)", prefix, de.Name, err, a.Ino, de.Ino)
			}
			p := prefix + "/" + de.Name
			out[p] = de.Ino
			if de.Mode == syscall.S_IFDIR {
				walk(de.Ino, p)
			}
		}
	}
	walk(fs.RootIno, "")
	return out
}

// dirWriter creates, renames and unlinks in one directory until stopped,
// keeping what it believes the directory holds; EIO (damage met: the
// operation failed before it changed anything) is counted, any other
// failure ends the test.
type dirWriter struct {
	f      *fs.FS
	dir    uint64
	prefix string // of the names it makes
	pause  time.Duration
	mu     sync.Mutex
	names  map[string]uint64
	eio    int
	ops    int
	err    error
	done   chan struct{}
	wg     sync.WaitGroup
}

func startDirWriter(f *fs.FS, dir uint64) *dirWriter {
	return startDirWriterNamed(f, dir, "", 100*time.Microsecond)
}

// startDirWriterNamed starts a writer whose names start with prefix,
// pausing between operations.
func startDirWriterNamed(f *fs.FS, dir uint64, prefix string, pause time.Duration) *dirWriter {
	w := &dirWriter{f: f, dir: dir, prefix: prefix, pause: pause, names: map[string]uint64{}, done: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; ; i++ {
			select {
			case <-w.done:
				return
			default:
			}
			if err := w.step(r, i); err != nil {
				w.err = err
				return
			}
			time.Sleep(w.pause)
		}
	}()
	return w
}

func (w *dirWriter) pick(r *rand.Rand) string {
	keys := make([]string, 0, len(w.names))
	for k := range w.names {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys[r.IntN(len(keys))]
}

func (w *dirWriter) step(r *rand.Rand, i int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops++
	var err error
	switch op := i % 4; {
	case op < 2 || len(w.names) == 0:
		name := fmt.Sprintf("%sn%d", w.prefix, i)
		var a fs.Attr
		if i%10 == 0 {
			a, err = w.f.Mkdir(w.dir, name, fs.NewInode{Mode: 0o755})
		} else {
			a, err = w.f.Create(w.dir, name, fs.NewInode{Mode: 0o644})
		}
		if err == nil {
			w.names[name] = a.Ino
		}
	case op == 2:
		old := w.pick(r)
		name := fmt.Sprintf("%sr%d", w.prefix, i)
		if err = w.f.Rename(w.dir, old, w.dir, name, 0); err == nil {
			w.names[name] = w.names[old]
			delete(w.names, old)
		}
	default:
		old := w.pick(r)
		a, lerr := w.f.Lookup(w.dir, old)
		if lerr != nil {
			err = lerr
			break
		}
		if a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			err = w.f.Rmdir(w.dir, old)
		} else {
			err = w.f.Unlink(w.dir, old)
		}
		if err == nil {
			delete(w.names, old)
		}
	}
	if errors.Is(err, syscall.EIO) {
		w.eio++
		return nil
	}
	if err != nil {
		return fmt.Errorf("writer op %d: %w", i, err)
	}
	return nil
}

func (w *dirWriter) stop(t testing.TB) {
	t.Helper()
	close(w.done)
	w.wg.Wait()
	if w.err != nil {
		t.Fatalf("namespace writer: %v", w.err)
	}
}

// check asserts the directory holds exactly what the writer believes.
func (w *dirWriter) check(t testing.TB) {
	t.Helper()
	got := map[string]uint64{}
	if err := w.f.ReadDir(w.dir, 2, func(de fs.DirEntry) bool { got[de.Name] = de.Ino; return true }); err != nil {
		t.Fatal(err)
	}
	for name, ino := range w.names {
		if got[name] != ino {
			t.Errorf("writer's %s: inode %d, the directory has %d", name, ino, got[name])
		}
		if a, err := w.f.Lookup(w.dir, name); err != nil || a.Ino != ino {
			t.Errorf("lookup writer's %s: %v", name, err)
		}
	}
	for name := range got {
		if _, ok := w.names[name]; !ok && !strings.HasPrefix(name, "file-") {
			t.Errorf("the directory holds %s, the writer removed it", name)
		}
	}
}

// adoptedPaths returns, from a report's notes, inode → the lost+found
// path it was linked as.
func adoptedPaths(notes []string) map[uint64]string {
	out := map[uint64]string{}
	for _, n := range notes {
		i := strings.Index(n, "linked as /lost+found/#")
		if i < 0 {
			continue
		}
		p := n[i+len("linked as "):]
		var ino uint64
		if _, err := fmt.Sscanf(p, "/lost+found/#%d", &ino); err == nil {
			out[ino] = p
		}
	}
	return out
}

// checkNamespace asserts that every path of want resolves to its inode,
// or, where the damage took every name of an inode, that the inode was
// adopted (and its path under the adopted ancestor resolves).
func checkNamespace(t *testing.T, f *fs.FS, want map[string]uint64, adopted map[uint64]string) (lost int) {
	t.Helper()
	for p, ino := range want {
		if a, err := f.Resolve(p); err == nil && a.Ino == ino {
			continue
		}
		lost++
		// The nearest ancestor (or itself) adopted.
		parts := strings.Split(p, "/")
		found := false
		for i := len(parts); i > 1 && !found; i-- {
			anc := strings.Join(parts[:i], "/")
			if lf, ok := adopted[want[anc]]; ok {
				q := lf + "/" + strings.Join(parts[i:], "/")
				q = strings.TrimSuffix(q, "/")
				if a, err := f.Resolve(q); err != nil || a.Ino != ino {
					t.Fatalf("%s (inode %d): adopted as %s, which gives %d, %v", p, ino, q, a.Ino, err)
				}
				found = true
			}
		}
		if !found {
			t.Fatalf("%s (inode %d) neither resolves nor was adopted", p, ino)
		}
	}
	return lost
}

// TestDirRepairOnline damages the dir tree with every kind, at a leaf and
// at an interior node, while a writer creates, renames and unlinks in
// one directory, and repairs it online through the ops table: the scrub
// finds the damage in the dir structure, the repair corrects it (the
// writer's directory holds exactly what it made, every other path
// resolves to its inode or was adopted into /lost+found), the scrub after
// is clean, and so is the offline check after unmount. Under -short (the
// race pass) only the bit flips.
func TestDirRepairOnline(t *testing.T) {
	pristine, err := os.ReadFile(dirImage(t, 40, 120))
	if err != nil {
		t.Fatal(err)
	}
	kinds := inject.Kinds
	if testing.Short() {
		kinds = []string{inject.Bitflip}
	}
	for _, kind := range kinds {
		for level := 0; level <= 1; level++ {
			t.Run(fmt.Sprintf("%s/level=%d", kind, level), func(t *testing.T) {
				img := filepath.Join(t.TempDir(), "fs.img")
				if err := os.WriteFile(img, pristine, 0o600); err != nil {
					t.Fatal(err)
				}
				f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				busy, err := f.Mkdir(fs.RootIno, "busy", fs.NewInode{Mode: 0o755})
				if err != nil {
					t.Fatal(err)
				}
				want := namespace(t, f)
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				lv := level
				res, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeDir, Kind: kind, Seed: 7, Level: &lv})
				if err != nil {
					t.Fatal(err)
				}
				if res.Level != level {
					t.Fatalf("damaged a node of level %d", res.Level)
				}
				// One writer in a directory the damage does not reach, one
				// in a directory it does (a lookup there fails with EIO).
				w := startDirWriter(f, busy.Ino)
				var hit *dirWriter
			find:
				for d := 0; d < 40; d++ {
					dir := want[fmt.Sprintf("/d%03d", d)]
					for i := 0; i < 120; i++ {
						if _, err := f.Lookup(dir, fmt.Sprintf("file-%04d", i)); errors.Is(err, syscall.EIO) {
							hit = startDirWriter(f, dir)
							break find
						}
					}
				}
				time.Sleep(20 * time.Millisecond)
				rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
				if err != nil {
					w.stop(t)
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
				w.stop(t)
				hitOps, hitEIO := 0, 0
				if hit != nil {
					hit.stop(t)
					hit.check(t)
					hitOps, hitEIO = hit.ops, hit.eio
				}
				if rep.Status != StatusCorrected {
					t.Fatalf("repair: %s: %v %+v", rep.Status, rep.Notes, rep.Structures)
				}
				foundDir := false
				for _, s := range rep.Structures {
					foundDir = foundDir || s.Name == "dir" && s.Found > 0
				}
				if !foundDir {
					t.Fatalf("the scrub found nothing in dir: %+v", rep.Structures)
				}
				if !slices.ContainsFunc(rep.Rebuilds, func(r RebuildReport) bool { return r.Structure == "dir" }) {
					t.Fatalf("no dir rebuild: %v", rep.Notes)
				}
				if f.Engine().Sick(engine.StructDir) {
					t.Fatal("dir still sick after the repair")
				}
				w.check(t)
				adopted := adoptedPaths(rep.Notes)
				lost := checkNamespace(t, f, want, adopted)
				t.Logf("%s: %d writer ops (%d EIO), in the damaged directory %d (%d EIO); %d paths lost their names, %d adopted; %d notes",
					res.Detail, w.ops, w.eio, hitOps, hitEIO, lost, len(adopted), len(rep.Notes))
				if w.eio > 0 {
					t.Errorf("the writer in a healthy directory met %d EIO", w.eio)
				}
				if level == 1 && len(adopted) > 0 {
					t.Errorf("interior damage lost names: the leaves below it are read from the rmap's blocks: %v", adopted)
				}
				if r2, err := Scrub(context.Background(), f, "test", ScrubOptions{}); err != nil || r2.Status != StatusClean {
					t.Fatalf("second scrub: %v %+v", err, r2)
				}
				f = remountClean(t, f, img)
				w.f = f
				w.check(t)
				checkNamespace(t, f, want, adopted)
				f.Close()
			})
		}
	}
}

// leafOf returns the block of the dir tree leaf holding k, and the keys
// and entries of that leaf.
func leafOf(t *testing.T, e *engine.Engine, k format.Key) (format.BlockNr, map[format.Key]format.DirEntry) {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	tr, _ := s.ScanTree(format.TreeDir)
	var blk format.BlockNr
	var items map[format.Key]format.DirEntry
	if err := tr.Check(eb.CheckVisitor{Node: func(n format.Node, p eb.Ptr) {
		if !n.IsLeaf() || blk != 0 {
			return
		}
		m := map[format.Key]format.DirEntry{}
		hit := false
		for i := 0; i < n.NrItems(); i++ {
			de, err := format.DecodeDirEntry(n.Value(i))
			if err != nil {
				t.Fatal(err)
			}
			m[n.Key(i)] = de
			hit = hit || n.Key(i) == k
		}
		if hit {
			blk, items = p.Block, m
		}
	}}); err != nil {
		t.Fatal(err)
	}
	if blk == 0 {
		t.Fatalf("no leaf holds %s", k)
	}
	return blk, items
}

// TestDirRepairBothTwinsLost destroys the dir tree leaf holding a small
// directory's entries (both twins of some of them: those of the leaf's
// other directories too), then repairs online: every inode the leaf held
// every name of is linked into /lost+found under its inode number — the
// exact paths are computed from the leaf's contents and asserted, a lost
// directory keeps its subtree, file contents are intact —, the entries
// with a twin elsewhere are rebuilt, the link counts come out right (the
// inode row fixes the root's, which lost a subdirectory), and the image
// is clean after.
func TestDirRepairBothTwinsLost(t *testing.T) {
	img := dirImage(t, 4, 60)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	small, err := f.Mkdir(fs.RootIno, "small", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	contents := map[uint64]string{}
	for _, n := range []string{"a", "b", "c"} {
		a, err := f.Create(small.Ino, n, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		contents[a.Ino] = "file " + n
		if _, err := f.Write(a.Ino, []byte(contents[a.Ino]), 0); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := f.Mkdir(small.Ino, "sub", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := f.Create(sub.Ino, "inner", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	contents[inner.Ino] = "inside sub"
	if _, err := f.Write(inner.Ino, []byte(contents[inner.Ino]), 0); err != nil {
		t.Fatal(err)
	}
	want := namespace(t, f)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The leaf holding small's first index entry, and what it holds.
	blk, items := leafOf(t, f.Engine(), format.DirIndexKey(small.Ino, 2))
	names := map[uint64]int{} // inode → its names, all of them
	for _, ino := range want {
		names[ino] = 0
	}
	for _, ino := range want {
		names[ino]++
	}
	inLeaf := map[string]int{} // dir/name → twins in the leaf
	for k, de := range items {
		inLeaf[fmt.Sprintf("%d/%s", k.Obj, de.Name)]++
	}
	lostNames := map[uint64]int{}
	for k, de := range items {
		if k.Type == format.TypeDirEntry && inLeaf[fmt.Sprintf("%d/%s", k.Obj, de.Name)] == 2 {
			lostNames[de.Ino]++
		}
	}
	wantAdopted := map[uint64]string{}
	for ino, n := range lostNames {
		if n == names[ino] {
			wantAdopted[ino] = fmt.Sprintf("/lost+found/#%d", ino)
		}
	}
	if len(wantAdopted) == 0 {
		t.Fatalf("the leaf at %d holds both twins of no entry: %v", blk, inLeaf)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Destroy the leaf.
	dev, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(make([]byte, format.BlockSize), int64(blk)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	dev.Close()

	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Damage met in use: EIO for a lookup whose path is the leaf, the
	// rest serves, and writes go on (a create whose directory's paths
	// meet the damage fails alone, before it changes anything).
	for k, de := range items {
		if k.Type == format.TypeDirEntry {
			if _, err := f.Lookup(k.Obj, de.Name); !errors.Is(err, syscall.EIO) {
				t.Fatalf("lookup of %q in directory %d, in the destroyed leaf: %v", de.Name, k.Obj, err)
			}
			break
		}
	}
	if !f.Engine().Sick(engine.StructDir) {
		t.Fatal("damage met by a lookup did not mark dir sick")
	}
	created := false
	for _, d := range []uint64{fs.RootIno, want["/d000"], want["/d003"], small.Ino} {
		_, err := f.Create(d, "made-on-damage", fs.NewInode{Mode: 0o644})
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Fatalf("create in directory %d after damage: %v", d, err)
		}
		created = created || err == nil
		if err == nil {
			if err := f.Unlink(d, "made-on-damage"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !created {
		t.Fatal("no directory took a create after the damage")
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("commit after damage met: %v", err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusCorrected {
		t.Fatalf("repair: %s: %v", rep.Status, rep.Notes)
	}
	got := adoptedPaths(rep.Notes)
	t.Logf("leaf %d: %d items; adopted %v\nnotes:\n%s", blk, len(items), got, strings.Join(rep.Notes, "\n"))
	if !maps.Equal(got, wantAdopted) {
		t.Fatalf("adopted %v, want %v\nnotes: %v", got, wantAdopted, rep.Notes)
	}
	if a, ok := wantAdopted[small.Ino]; ok {
		// small's subtree comes with it.
		if r, err := f.Resolve(a + "/sub/inner"); err != nil || r.Ino != inner.Ino {
			if _, lostToo := wantAdopted[sub.Ino]; !lostToo {
				t.Fatalf("%s/sub/inner: %v", a, err)
			}
		}
	}
	checkNamespace(t, f, want, got)
	for ino, c := range contents {
		buf := make([]byte, 64)
		n, err := f.Read(ino, buf, 0)
		if err != nil || string(buf[:n]) != c {
			t.Fatalf("inode %d: %q %v", ino, buf[:n], err)
		}
	}
	if r2, err := Scrub(context.Background(), f, "test", ScrubOptions{}); err != nil || r2.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, r2)
	}
	f = remountClean(t, f, img)
	checkNamespace(t, f, want, got)
	f.Close()
}

// TestCrashDuringDirRebuild records every write and flush of a dir
// rebuild (of a healthy tree, and of one with a damaged leaf) and opens
// the image as a crash at each flush boundary would leave it: it must
// mount, and hold the old tree (and its damage, which one more rebuild
// repairs) or the new one, clean, and never leak a block.
func TestCrashDuringDirRebuild(t *testing.T) {
	skipShort(t)
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) { crashDuringDirRebuild(t, damaged) })
	}
}

func crashDuringDirRebuild(t *testing.T, damaged bool) {
	dev := disk.NewMem(32768 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Open(nopClose{dev}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var first uint64
	for d := 0; d < 4; d++ {
		da, err := f.Mkdir(fs.RootIno, fmt.Sprintf("d%d", d), fs.NewInode{Mode: 0o755})
		if err != nil {
			t.Fatal(err)
		}
		if d == 0 {
			first = da.Ino
		}
		for i := 0; i < 50; i++ {
			if _, err := f.Create(da.Ino, fmt.Sprintf("some-longer-file-name-%d", i), fs.NewInode{Mode: 0o644}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The damage: the leaf holding the first index entry of d1, which
	// holds both twins of some entries of d0 (their inodes are adopted).
	blk, _ := leafOf(t, f.Engine(), format.DirIndexKey(first+51, 2))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	image := dev.Bytes()
	if damaged {
		copy(image[int(blk)*format.BlockSize:], make([]byte, format.BlockSize))
	}
	rec := disk.NewRecorder(image)
	f, err = fs.Open(nopClose{rec}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	startFlush := rec.Flushes()
	dr, err := RebuildDir(context.Background(), f, RebuildOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if damaged && (len(dr.Adopted) == 0 || len(dr.Rebuilt) == 0) {
		t.Fatalf("the rebuild adopted %d inodes and rebuilt %d entries: the damage should take both twins of some entries, one of others", len(dr.Adopted), len(dr.Rebuilt))
	}
	endFlush := rec.Flushes()
	f.Close()
	rng := rand.New(rand.NewPCG(10, 10))
	completed := 0
	op := opByName("dir")
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
			found := checkFindings(t, cf.Engine())
			if len(found) > 0 {
				if !damaged || !onlyFor(op, found) {
					t.Fatalf("%s: findings after a crash mid-rebuild (damaged=%v): %v", name, damaged, found)
				}
				if _, err := RebuildDir(context.Background(), cf, RebuildOptions{TempDir: t.TempDir()}); err != nil {
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

// TestDirEventsLongNames: an entry whose name takes several events (up to
// 255 bytes) goes through the feed, the event codec and apply whole:
// both twins under its full name, and its removal takes both.
func TestDirEventsLongNames(t *testing.T) {
	f, err := fs.OpenPath(newImage(t), fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		mustClean(t, f.Engine())
		f.Close()
	}()
	r := &dirRebuild{e: f.Engine(), names: map[uint64]int64{}, displaced: map[uint64]bool{}}
	r.old = newOldTree(format.TreeDir, nil)
	var evs []dirEvent
	h := r.feed.Register(func(ev dirEvent) {
		b := make([]byte, dirEvents.size)
		dirEvents.put(b, ev)
		evs = append(evs, dirEvents.get(b))
	})
	defer r.feed.Unregister(h)
	r.follow()
	defer r.unfollow()
	store, err := xfile.NewBTreeStore(xfile.Options{Dir: t.TempDir(), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	tr, err := store.CreateTree(format.TreeDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range []int{1, dirNameInOne - 1, dirNameInOne, dirNameInOne + 1, 2 * dirNameInOne, format.MaxNameLen} {
		name := strings.Repeat(string(rune('a'+n%26)), n)
		if _, err := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	apply := func() {
		t.Helper()
		for _, ev := range evs {
			if err := r.apply(tr, ev); err != nil {
				t.Fatal(err)
			}
		}
		evs = nil
	}
	apply()
	if tr.Items != uint64(2*len(names)) {
		t.Fatalf("%d items after %d creates", tr.Items, len(names))
	}
	for _, name := range names {
		a, err := f.Lookup(fs.RootIno, name)
		if err != nil {
			t.Fatal(err)
		}
		de, _, ok, err := entryByName(tr, fs.RootIno, fs.NameHash(name), name)
		if err != nil || !ok || de.Ino != a.Ino {
			t.Fatalf("%d-byte name: %v %v %+v", len(name), ok, err, de)
		}
		if _, ok, err := tr.Get(format.DirIndexKey(fs.RootIno, de.Index), nil); err != nil || !ok {
			t.Fatalf("%d-byte name: no index twin: %v", len(name), err)
		}
		if err := f.Unlink(fs.RootIno, name); err != nil {
			t.Fatal(err)
		}
	}
	apply()
	if tr.Items != 0 {
		t.Fatalf("%d items after every entry was removed", tr.Items)
	}
}

// TestDirRebuildLongNamesUnderLoad rebuilds a healthy dir tree while four
// writers create, rename and unlink entries of 200-byte and longer names
// as fast as they can, in four directories: the catch-up on the staged
// tree splits leaves often and reserves as it goes; the writers'
// directories hold exactly what they made, and the image is clean.
func TestDirRebuildLongNamesUnderLoad(t *testing.T) {
	skipShort(t)
	img := dirImage(t, 8, 100)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := namespace(t, f)
	var ws []*dirWriter
	for d := 0; d < 4; d++ {
		ws = append(ws, startDirWriterNamed(f, want[fmt.Sprintf("/d%03d", 2*d)], strings.Repeat(string(rune('p'+d)), 200), 0))
	}
	time.Sleep(50 * time.Millisecond)
	dr, err := RebuildDir(context.Background(), f, RebuildOptions{TempDir: t.TempDir()})
	for _, w := range ws {
		w.stop(t)
	}
	if err != nil {
		t.Fatal(err)
	}
	ops := 0
	for _, w := range ws {
		w.check(t)
		ops += w.ops
		if w.eio > 0 {
			t.Fatalf("a writer met %d EIO on a healthy tree", w.eio)
		}
	}
	t.Logf("%d writer ops, %d live updates followed, %d records", ops, dr.Events, dr.Records)
	if dr.Events == 0 || len(dr.Rebuilt)+len(dr.Adopted)+len(dr.Dropped) != 0 {
		t.Fatalf("rebuild of a healthy tree: %d events, %d rebuilt, %d adopted, %d dropped", dr.Events, len(dr.Rebuilt), len(dr.Adopted), len(dr.Dropped))
	}
	checkNamespace(t, f, want, nil)
	mustClean(t, f.Engine())
	f = remountClean(t, f, img)
	for _, w := range ws {
		w.f = f
		w.check(t)
	}
	f.Close()
}

// TestDirRebuildLostFoundNotDir: when /lost+found is a file, the inodes
// the damage left without a name cannot be adopted: the rebuild still
// swaps the tree in (the engine stays writable), says why, and leaves
// them for an operator; nothing else changes.
func TestDirRebuildLostFoundNotDir(t *testing.T) {
	img := dirImage(t, 2, 40)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Create(fs.RootIno, fs.LostFoundName, fs.NewInode{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	small, err := f.Mkdir(fs.RootIno, "small", fs.NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := f.Create(small.Ino, n, fs.NewInode{Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	blk, _ := leafOf(t, f.Engine(), format.DirIndexKey(small.Ino, 2))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dev, err := disk.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(make([]byte, format.BlockSize), int64(blk)*format.BlockSize); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dr, err := RebuildDir(context.Background(), f, RebuildOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(dr.Adopted) != 0 || !strings.Contains(dr.Unadopted, "not a directory") {
		t.Fatalf("adopted %v; unadopted %q", dr.Adopted, dr.Unadopted)
	}
	if _, err := f.Create(fs.RootIno, "after", fs.NewInode{Mode: 0o644}); err != nil {
		t.Fatalf("create after the rebuild: %v", err)
	}
	for _, fd := range checkFindings(t, f.Engine()) {
		if fd.ID != engine.ErrNlink {
			t.Fatalf("after the rebuild: %v", fd)
		}
	}
}
