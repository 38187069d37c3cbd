package fuse

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/fs"
)

// needFuse skips unless this process can mount FUSE filesystems.
func needFuse(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("FUSE tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("no fusermount3")
	}
}

func newImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 64<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return img
}

// checkImage runs the engine's offline self-check on an unmounted image.
func checkImage(t *testing.T, img string) {
	t.Helper()
	dev, err := disk.Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	var found []string
	res, _, err := engine.CheckImage(dev, engine.CheckOptions{Finding: func(f engine.Finding) {
		found = append(found, f.String())
	}})
	if err != nil {
		t.Fatalf("check %s: %v", img, err)
	}
	if res.Findings != 0 || len(found) != 0 {
		t.Errorf("check %s: %d findings:\n%s", img, res.Findings, strings.Join(found, "\n"))
	}
}

// testMount is an image mounted for a test.
type testMount struct {
	t    *testing.T
	img  string
	dir  string
	fsys *fs.FS
	srv  *Server
	opts Options // remount mounts with these
}

// mount mounts img on a new directory; cleanup unmounts, commits and
// checks the image.
func mount(t *testing.T, img string) *testMount {
	t.Helper()
	return mountWith(t, img, Options{})
}

// mountWith is mount with the mount's options (remount uses them too;
// FsName is the image's path).
func mountWith(t *testing.T, img string, opts Options) *testMount {
	t.Helper()
	needFuse(t)
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts.FsName = img
	srv, err := Mount(fsys, dir, opts)
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	m := &testMount{t: t, img: img, dir: dir, fsys: fsys, srv: srv, opts: opts}
	t.Cleanup(m.close)
	return m
}

// close unmounts (lazily if a failed test left files open), commits, and
// checks the image. It may be called more than once.
func (m *testMount) close() {
	t := m.t
	if m.fsys == nil {
		return
	}
	if err := m.srv.Unmount(); err != nil {
		t.Errorf("unmount: %v", err)
		if err := m.srv.detach(); err != nil {
			t.Errorf("detach: %v", err)
		}
		select {
		case <-m.srv.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("server still running 10s after a lazy unmount")
		}
	}
	if err := m.fsys.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	m.fsys = nil
	checkImage(t, m.img)
}

// remount unmounts and mounts the image again, on the same directory.
func (m *testMount) remount() {
	t := m.t
	t.Helper()
	m.close()
	fsys, err := fs.OpenPath(m.img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(fsys, m.dir, m.opts)
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	m.fsys, m.srv = fsys, srv
}

func (m *testMount) path(name string) string { return filepath.Join(m.dir, name) }

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes, want %d (first difference at %d)", path, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// wantErrno checks that err is the errno want.
func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

func TestCreateWriteReadAppendTruncate(t *testing.T) {
	m := mount(t, newImage(t))
	r := rand.New(rand.NewPCG(1, 2))
	p := m.path("f")
	data := randBytes(r, 300_000)
	mustWrite(t, p, data)
	mustRead(t, p, data)

	// Append.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	more := randBytes(r, 5000)
	if _, err := f.Write(more); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	data = append(data, more...)
	mustRead(t, p, data)

	// Overwrite in the middle, unaligned.
	f, err = os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := randBytes(r, 9999)
	if _, err := f.WriteAt(patch, 12345); err != nil {
		t.Fatal(err)
	}
	copy(data[12345:], patch)
	buf := make([]byte, 20000)
	if n, err := f.ReadAt(buf, 10000); err != nil || !bytes.Equal(buf[:n], data[10000:30000]) {
		t.Fatalf("pread: %d %v", n, err)
	}
	// ftruncate down to an unaligned size, then up: the tail reads zero.
	if err := f.Truncate(5000); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(10000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := append(slices.Clone(data[:5000]), make([]byte, 5000)...)
	mustRead(t, p, want)
	// truncate(2) by path.
	if err := os.Truncate(p, 100); err != nil {
		t.Fatal(err)
	}
	mustRead(t, p, want[:100])
	// O_TRUNC.
	mustWrite(t, p, []byte("short"))
	mustRead(t, p, []byte("short"))
	if fi, err := os.Stat(p); err != nil || fi.Size() != 5 || fi.Mode() != 0o644 {
		t.Fatalf("stat: %v %v", fi, err)
	}

	// Attributes: chmod, utimes.
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 || !fi.ModTime().Equal(mt) {
		t.Fatalf("after chmod/chtimes: %v %v", fi.Mode(), fi.ModTime())
	}

	// Everything survives a remount.
	m.remount()
	mustRead(t, p, []byte("short"))
	if fi, err := os.Stat(p); err != nil || fi.Mode() != 0o600 || !fi.ModTime().Equal(mt) {
		t.Fatalf("after remount: %v %v", fi, err)
	}
}

func TestInodeNumbers(t *testing.T) {
	m := mount(t, newImage(t))
	var st syscall.Stat_t
	if err := syscall.Stat(m.dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino != fs.RootIno {
		t.Fatalf("root st_ino %d, want %d", st.Ino, fs.RootIno)
	}
	mustWrite(t, m.path("a"), []byte("x"))
	if err := syscall.Stat(m.path("a"), &st); err != nil {
		t.Fatal(err)
	}
	a, err := m.fsys.Resolve("/a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Ino != a.Ino {
		t.Fatalf("st_ino %d, engine inode %d", st.Ino, a.Ino)
	}
}

func TestRename(t *testing.T) {
	m := mount(t, newImage(t))
	mustWrite(t, m.path("a"), []byte("aaa"))
	mustWrite(t, m.path("b"), []byte("bbbb"))
	// Plain rename.
	if err := os.Rename(m.path("a"), m.path("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old name after rename: %v", err)
	}
	mustRead(t, m.path("c"), []byte("aaa"))
	// Over an existing file.
	var st syscall.Stat_t
	if err := syscall.Stat(m.path("c"), &st); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path("c"), m.path("b")); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m.path("b"), []byte("aaa"))
	var st2 syscall.Stat_t
	if err := syscall.Stat(m.path("b"), &st2); err != nil {
		t.Fatal(err)
	}
	if st2.Ino != st.Ino || st2.Nlink != 1 {
		t.Fatalf("renamed over: ino %d nlink %d, want ino %d nlink 1", st2.Ino, st2.Nlink, st.Ino)
	}
	// Directories: into another directory, with contents.
	for _, d := range []string{"d1", "d1/sub", "d2"} {
		if err := os.Mkdir(m.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, m.path("d1/sub/f"), []byte("deep"))
	if err := os.Rename(m.path("d1/sub"), m.path("d2/moved")); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m.path("d2/moved/f"), []byte("deep"))
	if err := syscall.Stat(m.path("d1"), &st); err != nil || st.Nlink != 2 {
		t.Fatalf("d1 nlink %d after its subdirectory left (%v)", st.Nlink, err)
	}
	if err := syscall.Stat(m.path("d2"), &st); err != nil || st.Nlink != 3 {
		t.Fatalf("d2 nlink %d after gaining a subdirectory (%v)", st.Nlink, err)
	}
	// Directory over an empty directory.
	if err := os.Mkdir(m.path("empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	// (os.Rename refuses to replace a directory itself: use rename(2).)
	if err := syscall.Rename(m.path("d2/moved"), m.path("empty")); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m.path("empty/f"), []byte("deep"))
	// Directory over a non-empty directory, a file over a directory, a
	// directory over a file, a directory into itself.
	wantErrno(t, "rename dir over non-empty dir", syscall.Rename(m.path("d1"), m.path("empty")), syscall.ENOTEMPTY)
	wantErrno(t, "rename file over dir", syscall.Rename(m.path("b"), m.path("d1")), syscall.EISDIR)
	wantErrno(t, "rename dir over file", syscall.Rename(m.path("d1"), m.path("b")), syscall.ENOTDIR)
	wantErrno(t, "rename dir into itself", syscall.Rename(m.path("d2"), m.path("d2/x")), syscall.EINVAL)
	wantErrno(t, "rename missing", syscall.Rename(m.path("nothing"), m.path("x")), syscall.ENOENT)
	// RENAME_NOREPLACE.
	err := renameat2(m.path("b"), m.path("empty/f"), 1)
	wantErrno(t, "renameat2 RENAME_NOREPLACE", err, syscall.EEXIST)

	m.remount()
	mustRead(t, m.path("b"), []byte("aaa"))
	mustRead(t, m.path("empty/f"), []byte("deep"))
	names := readNames(t, m.dir)
	if want := []string{"b", "d1", "d2", "empty"}; !slices.Equal(names, want) {
		t.Fatalf("root after renames: %v, want %v", names, want)
	}
}

func renameat2(from, to string, flags uint) error {
	return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags)
}

func readNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func TestHardLinks(t *testing.T) {
	m := mount(t, newImage(t))
	mustWrite(t, m.path("a"), []byte("shared"))
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(m.path("a"), m.path("d/b")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(m.path("a"), m.path("c")); err != nil {
		t.Fatal(err)
	}
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(m.path("a"), &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(m.path("d/b"), &sb); err != nil {
		t.Fatal(err)
	}
	if sa.Ino != sb.Ino || sa.Nlink != 3 || sb.Nlink != 3 {
		t.Fatalf("links: ino %d/%d nlink %d/%d, want one inode with nlink 3", sa.Ino, sb.Ino, sa.Nlink, sb.Nlink)
	}
	// A write through one name shows through the others.
	f, err := os.OpenFile(m.path("c"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("+more")
	f.Close()
	mustRead(t, m.path("d/b"), []byte("shared+more"))
	if err := os.Remove(m.path("a")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(m.path("c"), &sa); err != nil || sa.Nlink != 2 {
		t.Fatalf("nlink after one unlink: %d (%v)", sa.Nlink, err)
	}
	wantErrno(t, "link over existing", os.Link(m.path("c"), m.path("d/b")), syscall.EEXIST)
	wantErrno(t, "link a directory", os.Link(m.path("d"), m.path("dlink")), syscall.EPERM)
	m.remount()
	if err := syscall.Stat(m.path("d/b"), &sb); err != nil || sb.Nlink != 2 {
		t.Fatalf("nlink after remount: %d (%v)", sb.Nlink, err)
	}
	mustRead(t, m.path("c"), []byte("shared+more"))
}

func TestSymlinks(t *testing.T) {
	m := mount(t, newImage(t))
	mustWrite(t, m.path("target"), []byte("pointed at"))
	if err := os.Symlink("target", m.path("rel")); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x/", 400) + "end"
	if err := os.Symlink(long, m.path("long")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(m.path("rel")); err != nil || got != "target" {
		t.Fatalf("readlink: %q %v", got, err)
	}
	if got, err := os.Readlink(m.path("long")); err != nil || got != long {
		t.Fatalf("readlink long: %d bytes %v", len(got), err)
	}
	fi, err := os.Lstat(m.path("rel"))
	if err != nil || fi.Mode()&os.ModeSymlink == 0 || fi.Size() != int64(len("target")) {
		t.Fatalf("lstat: %v %v", fi, err)
	}
	mustRead(t, m.path("rel"), []byte("pointed at"))
	if err := os.Symlink("nowhere", m.path("dangling")); err != nil {
		t.Fatal(err)
	}
	_, err = os.ReadFile(m.path("dangling"))
	wantErrno(t, "read dangling symlink", err, syscall.ENOENT)
	_, err = os.Readlink(m.path("target"))
	wantErrno(t, "readlink of a file", err, syscall.EINVAL)
	wantErrno(t, "symlink over existing", os.Symlink("x", m.path("rel")), syscall.EEXIST)
	wantErrno(t, "symlink too long", os.Symlink(strings.Repeat("y", 4096), m.path("toolong")), syscall.ENAMETOOLONG)
	m.remount()
	if got, err := os.Readlink(m.path("long")); err != nil || got != long {
		t.Fatalf("readlink long after remount: %d bytes %v", len(got), err)
	}
}

func TestDirectories(t *testing.T) {
	m := mount(t, newImage(t))
	if err := os.MkdirAll(m.path("a/b/c"), 0o750); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(m.path("a/b"))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Fatalf("stat dir: %v %v", fi, err)
	}
	// Enough entries to need several engine reads and several kernel
	// buffers; some removed in the middle of a listing.
	const n = 700
	var want []string
	for i := range n {
		name := filepath.Join("a", "many-"+strings.Repeat("n", i%50)+"-"+strconv.Itoa(i))
		if i%3 == 0 {
			if err := os.Mkdir(m.path(name), 0o755); err != nil {
				t.Fatal(err)
			}
		} else {
			mustWrite(t, m.path(name), nil)
		}
		want = append(want, filepath.Base(name))
	}
	want = append(want, "b")
	slices.Sort(want)
	if got := readNames(t, m.path("a")); !slices.Equal(got, want) {
		t.Fatalf("readdir: %d names, want %d", len(got), len(want))
	}
	// getdents in small pieces, removing entries as we go: every entry
	// present throughout is listed exactly once.
	d, err := os.Open(m.path("a"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	removed := map[string]bool{}
	for i := 0; ; i++ {
		names, err := d.Readdirnames(10)
		for _, nm := range names {
			seen[nm]++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 5 {
			for _, nm := range want[len(want)-20:] {
				if !strings.HasPrefix(nm, "many-") {
					continue
				}
				if err := os.Remove(m.path("a/" + nm)); err != nil {
					t.Fatal(err)
				}
				removed[nm] = true
			}
		}
	}
	d.Close()
	for _, nm := range want {
		if !removed[nm] && seen[nm] != 1 {
			t.Errorf("entry %q listed %d times", nm, seen[nm])
		}
	}
	for nm, c := range seen {
		if c > 1 {
			t.Errorf("entry %q listed %d times", nm, c)
		}
	}
	// Link counts, rmdir.
	var st syscall.Stat_t
	if err := syscall.Stat(m.path("a/b"), &st); err != nil || st.Nlink != 3 {
		t.Fatalf("nlink of a dir with one subdir: %d %v", st.Nlink, err)
	}
	wantErrno(t, "rmdir non-empty", syscall.Rmdir(m.path("a/b")), syscall.ENOTEMPTY)
	if err := os.Remove(m.path("a/b/c")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(m.path("a/b"), &st); err != nil || st.Nlink != 2 {
		t.Fatalf("nlink after rmdir: %d %v", st.Nlink, err)
	}
	if err := os.RemoveAll(m.path("a")); err != nil {
		t.Fatal(err)
	}
	if got := readNames(t, m.dir); len(got) != 0 {
		t.Fatalf("root after RemoveAll: %v", got)
	}
}

func TestRmdirWhileOpen(t *testing.T) {
	m := mount(t, newImage(t))
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(m.path("d"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.Remove(m.path("d")); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(d.Fd()), &st); err != nil || st.Nlink != 0 {
		t.Fatalf("fstat of a removed, open directory: nlink %d %v", st.Nlink, err)
	}
	// Linux answers getdents on a removed directory itself.
	names, err := d.Readdirnames(-1)
	if len(names) != 0 || (err != nil && !errors.Is(err, syscall.ENOENT)) {
		t.Fatalf("readdir of a removed directory: %v %v", names, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := m.fsys.GetAttr(ino); errors.Is(err, syscall.ENOENT) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("directory inode %d still there after its last close", ino)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnlinkWhileOpen(t *testing.T) {
	m := mount(t, newImage(t))
	r := rand.New(rand.NewPCG(3, 4))
	data := randBytes(r, 200_000)
	mustWrite(t, m.path("f"), data)
	f, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(m.path("f")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("f")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after unlink: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through the open fd after unlink: %v", err)
	}
	// Still writable, and fstat works.
	if _, err := f.WriteAt([]byte("after"), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got[:5], 10); err != nil || string(got[:5]) != "after" {
		t.Fatalf("read back after write: %q %v", got[:5], err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Nlink != 0 || st.Size != int64(len(data)) {
		t.Fatalf("fstat of an unlinked file: nlink %d size %d %v", st.Nlink, st.Size, err)
	}
	// Renaming over an open file keeps it readable too.
	mustWrite(t, m.path("g"), data[:1000])
	g, err := os.Open(m.path("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	mustWrite(t, m.path("h"), []byte("new"))
	if err := os.Rename(m.path("h"), m.path("g")); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(g); err != nil || !bytes.Equal(b, data[:1000]) {
		t.Fatalf("read of a renamed-over open file: %d bytes %v", len(b), err)
	}
	mustRead(t, m.path("g"), []byte("new"))
	// The last close frees the inode: the engine forgets it soon after
	// (the kernel sends RELEASE asynchronously).
	var st2 syscall.Stat_t
	syscall.Fstat(int(g.Fd()), &st2)
	f.Close()
	g.Close()
	deadline := time.Now().Add(5 * time.Second)
	for _, ino := range []uint64{st.Ino, st2.Ino} {
		for {
			_, err := m.fsys.GetAttr(ino)
			if errors.Is(err, syscall.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("inode %d still there after its last close: %v", ino, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestSparse(t *testing.T) {
	m := mount(t, newImage(t))
	f, err := os.Create(m.path("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	const off = 10 << 20
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("head"), 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Stat(m.path("sparse"))
	if err != nil || fi.Size() != off+4 {
		t.Fatalf("size %v %v", fi.Size(), err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Blocks*512 > 64<<10 {
		t.Errorf("sparse file of %d bytes uses %d blocks of 512", fi.Size(), st.Blocks)
	}
	want := make([]byte, off+4)
	copy(want[1:], "head")
	copy(want[off:], "tail")
	mustRead(t, m.path("sparse"), want)
	// Extending by truncate reads zero.
	if err := os.Truncate(m.path("sparse"), off+10000); err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 10000-4)...)
	mustRead(t, m.path("sparse"), want)
}

func TestFsyncAndStatfs(t *testing.T) {
	m := mount(t, newImage(t))
	f, err := os.Create(m.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(bytes.Repeat([]byte("y"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("z"), 5); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d, err := os.Open(m.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync of a directory: %v", err)
	}
	d.Close()
	st := m.fsys.Stats()
	if st.FsyncLogged+st.FsyncFull < 2 {
		t.Errorf("engine saw %d+%d fsyncs, want at least 2", st.FsyncLogged, st.FsyncFull)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &sfs); err != nil {
		t.Fatal(err)
	}
	want := m.fsys.StatFS()
	if sfs.Bsize != 4096 || uint64(sfs.Blocks) != want.Blocks || sfs.Bfree > sfs.Blocks || sfs.Bavail > sfs.Blocks ||
		sfs.Bfree == 0 || sfs.Namelen != 255 || sfs.Files == 0 {
		t.Fatalf("statfs: %+v, engine %+v", sfs, want)
	}
	if sfs.Blocks != 64<<20/4096 {
		t.Errorf("statfs blocks %d, want %d", sfs.Blocks, 64<<20/4096)
	}
}

func TestErrnos(t *testing.T) {
	m := mount(t, newImage(t))
	mustWrite(t, m.path("file"), []byte("x"))
	if err := os.Mkdir(m.path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, m.path("dir/inner"), nil)
	_, err := os.Open(m.path("missing"))
	wantErrno(t, "open missing", err, syscall.ENOENT)
	_, err = os.Stat(m.path("missing/x"))
	wantErrno(t, "stat under missing", err, syscall.ENOENT)
	wantErrno(t, "unlink missing", syscall.Unlink(m.path("missing")), syscall.ENOENT)
	wantErrno(t, "rmdir missing", syscall.Rmdir(m.path("missing")), syscall.ENOENT)
	wantErrno(t, "mkdir existing", os.Mkdir(m.path("dir"), 0o755), syscall.EEXIST)
	wantErrno(t, "mkdir over file", os.Mkdir(m.path("file"), 0o755), syscall.EEXIST)
	_, err = os.OpenFile(m.path("file"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	wantErrno(t, "O_EXCL create of existing", err, syscall.EEXIST)
	wantErrno(t, "rmdir non-empty", syscall.Rmdir(m.path("dir")), syscall.ENOTEMPTY)
	_, err = os.OpenFile(m.path("dir"), os.O_WRONLY, 0)
	wantErrno(t, "open dir for writing", err, syscall.EISDIR)
	wantErrno(t, "unlink dir", syscall.Unlink(m.path("dir")), syscall.EISDIR)
	wantErrno(t, "rmdir file", syscall.Rmdir(m.path("file")), syscall.ENOTDIR)
	wantErrno(t, "mkdir under file", os.Mkdir(m.path("file/sub"), 0o755), syscall.ENOTDIR)
	_, err = os.Stat(m.path("file/sub"))
	wantErrno(t, "stat under file", err, syscall.ENOTDIR)
	_, err = os.ReadDir(m.path("file"))
	wantErrno(t, "readdir of file", err, syscall.ENOTDIR)
	wantErrno(t, "long name", os.Mkdir(m.path(strings.Repeat("n", 256)), 0o755), syscall.ENAMETOOLONG)
	// Reading a directory as a file.
	d, err := os.Open(m.path("dir"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Read(make([]byte, 10))
	wantErrno(t, "read of a directory", err, syscall.EISDIR)
	d.Close()
}

func TestMknod(t *testing.T) {
	m := mount(t, newImage(t))
	if err := syscall.Mkfifo(m.path("fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(m.path("null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(m.path("fifo"), &st); err != nil || st.Mode != syscall.S_IFIFO|0o640 {
		t.Fatalf("fifo mode %o %v", st.Mode, err)
	}
	if err := syscall.Lstat(m.path("null"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 1<<8|3 {
		t.Fatalf("char device mode %o rdev %x %v", st.Mode, st.Rdev, err)
	}
}

func TestOwnershipAndSetgid(t *testing.T) {
	m := mount(t, newImage(t))
	if err := os.Mkdir(m.path("g"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(m.path("g"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(m.path("g"), 0o2775); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, m.path("g/f"), nil)
	if err := os.Mkdir(m.path("g/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(m.path("g/f"), &st); err != nil || st.Uid != 0 || st.Gid != 5678 {
		t.Fatalf("file in setgid dir: uid %d gid %d %v", st.Uid, st.Gid, err)
	}
	if err := syscall.Stat(m.path("g/sub"), &st); err != nil || st.Gid != 5678 || st.Mode&syscall.S_ISGID == 0 {
		t.Fatalf("dir in setgid dir: gid %d mode %o %v", st.Gid, st.Mode, err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	m := mount(t, newImage(t))
	const workers, files = 8, 6
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			dir := m.path("w" + strconv.Itoa(w))
			if err := os.Mkdir(dir, 0o755); err != nil {
				errs <- err
				return
			}
			for i := range files {
				data := randBytes(r, 1+r.IntN(300_000))
				p := filepath.Join(dir, strconv.Itoa(i))
				if err := os.WriteFile(p, data, 0o644); err != nil {
					errs <- err
					return
				}
				got, err := os.ReadFile(p)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- errors.New(p + ": read back differs")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestUnmountBusyAndRun(t *testing.T) {
	img := newImage(t)
	needFuse(t)
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(fsys, dir, Options{})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "open"))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Unmount(); err == nil {
		t.Fatal("unmount with an open file succeeded")
	}
	// Run with a cancelled context detaches lazily and serves the open
	// file until it is closed.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for isMounted(t, dir) {
		if time.Now().After(deadline) {
			t.Fatal("still mounted 5s after Run with a cancelled context")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := f.WriteString("still served"); err != nil {
		t.Fatalf("write to a file open on a detached mount: %v", err)
	}
	select {
	case err := <-ran:
		t.Fatalf("Run returned with a file still open: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	f.Close()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the last file closed")
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	checkImage(t, img)
	// What the detached file got is in the image.
	fsys, err = fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	a, err := fsys.Resolve("/open")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := fsys.Read(a.Ino, buf, 0)
	if err != nil || string(buf[:n]) != "still served" {
		t.Fatalf("after a detached unmount: %q %v", buf[:n], err)
	}
}

func TestExternalUnmount(t *testing.T) {
	img := newImage(t)
	needFuse(t)
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(fsys, dir, Options{})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "f"), []byte("kept"))
	if out, err := exec.Command("fusermount3", "-u", dir).CombinedOutput(); err != nil {
		srv.Unmount()
		fsys.Close()
		t.Fatalf("fusermount3 -u: %v %s", err, out)
	}
	select {
	case <-srv.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("server still running after an external unmount")
	}
	if err := srv.Unmount(); err != nil {
		t.Fatalf("Unmount after an external unmount: %v", err)
	}
	if err := srv.Run(context.Background()); err != nil {
		t.Fatalf("Run after an external unmount: %v", err)
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	checkImage(t, img)
}

// isMounted reports whether dir is a mount point.
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func TestDiskFull(t *testing.T) {
	m := mount(t, newImage(t))
	r := rand.New(rand.NewPCG(5, 6))
	chunk := randBytes(r, 1<<20)
	var files []string
	var err error
	for i := 0; i < 100; i++ {
		p := m.path("f" + strconv.Itoa(i))
		if err = os.WriteFile(p, chunk, 0o644); err != nil {
			break
		}
		files = append(files, p)
	}
	wantErrno(t, "filling the disk", err, syscall.ENOSPC)
	if len(files) < 40 {
		t.Fatalf("ENOSPC after %d MiB of 64", len(files))
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Bavail*4096 >= 1<<20 {
		t.Errorf("statfs says %d blocks available on a full disk", sfs.Bavail)
	}
	// Still writable: a directory, a small file, and after deleting, the
	// space comes back at once.
	if err := os.Mkdir(m.path("dir"), 0o755); err != nil {
		t.Fatalf("mkdir on a full disk: %v", err)
	}
	for _, p := range files[:3] {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	files = files[3:]
	// The kernel sends a file's RELEASE after close(2) returns, on its
	// own time: a file unlinked before its release arrives is still open,
	// and its blocks are freed at the release (a loaded machine delayed
	// it past the unlink here). So wait for the space, a while at most.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err := syscall.Statfs(m.dir, &sfs); err != nil {
			t.Fatal(err)
		}
		if sfs.Bavail*4096 >= 2<<20 || time.Now().After(deadline) {
			break
		}
	}
	if sfs.Bavail*4096 < 2<<20 {
		t.Errorf("statfs: %d blocks available 10 s after deleting 3 MiB", sfs.Bavail)
	}
	mustWrite(t, m.path("dir/again"), chunk)
	mustWrite(t, m.path("dir/again2"), chunk)
	m.remount()
	for _, p := range append(files, m.path("dir/again"), m.path("dir/again2")) {
		mustRead(t, p, chunk)
	}
}
