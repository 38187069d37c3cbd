package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/repair"
)

func statOf(t *testing.T, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestRenameat2 drives renameat2 through the kernel: RENAME_EXCHANGE of
// files and directories, in one directory and across two (".." and the
// parents' link counts follow), the kernel's and the engine's errors,
// RENAME_NOREPLACE; all of it still there after a remount, the image
// checked clean.
func TestRenameat2(t *testing.T) {
	m := mount(t, newImage(t))
	for _, d := range []string{"d1", "d2", "d2/sub", "d2/sub/deep"} {
		if err := os.Mkdir(m.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, m.path("d1/a"), []byte("aaa"))
	mustWrite(t, m.path("d1/b"), []byte("bbbb"))
	mustWrite(t, m.path("d2/sub/f"), []byte("in sub"))
	ino := func(p string) uint64 { return statOf(t, m.path(p)).Ino }
	nlink := func(p string) uint64 { return statOf(t, m.path(p)).Nlink }
	a, sub := ino("d1/a"), ino("d2/sub")

	// Two files in one directory.
	if err := renameat2(m.path("d1/a"), m.path("d1/b"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m.path("d1/a"), []byte("bbbb"))
	mustRead(t, m.path("d1/b"), []byte("aaa"))
	// A file and a directory across parents.
	if err := renameat2(m.path("d1/b"), m.path("d2/sub"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	if ino("d1/b") != sub || ino("d2/sub") != a || ino("d1/b/..") != ino("d1") {
		t.Fatalf("file and directory not exchanged: d1/b %d, d2/sub %d, d1/b/.. %d", ino("d1/b"), ino("d2/sub"), ino("d1/b/.."))
	}
	mustRead(t, m.path("d1/b/f"), []byte("in sub"))
	if nlink("d1") != 3 || nlink("d2") != 2 {
		t.Fatalf("parents' link counts %d, %d after a directory moved; want 3, 2", nlink("d1"), nlink("d2"))
	}
	// Two directories across parents.
	if err := os.Mkdir(m.path("d2/other"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := renameat2(m.path("d1/b"), m.path("d2/other"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	if ino("d2/other") != sub || ino("d2/other/..") != ino("d2") || ino("d1/b/..") != ino("d1") || nlink("d1") != 3 || nlink("d2") != 3 {
		t.Fatal("directories exchanged wrong")
	}
	// Errors.
	wantErrno(t, "exchange with a missing name", renameat2(m.path("d1/a"), m.path("d2/none"), unix.RENAME_EXCHANGE), syscall.ENOENT)
	wantErrno(t, "exchange a directory with its descendant", renameat2(m.path("d2"), m.path("d2/other/deep"), unix.RENAME_EXCHANGE), syscall.EINVAL)
	wantErrno(t, "exchange a directory with its ancestor", renameat2(m.path("d2/other/deep"), m.path("d2"), unix.RENAME_EXCHANGE), syscall.EINVAL)
	wantErrno(t, "both flags", renameat2(m.path("d1/a"), m.path("d2/sub"), unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE), syscall.EINVAL)
	wantErrno(t, "noreplace over a file", renameat2(m.path("d1/a"), m.path("d2/sub"), unix.RENAME_NOREPLACE), syscall.EEXIST)
	wantErrno(t, "noreplace over a directory", renameat2(m.path("d1/b"), m.path("d2/other"), unix.RENAME_NOREPLACE), syscall.EEXIST)
	// NOREPLACE onto a free name moves, a directory across parents too.
	if err := renameat2(m.path("d2/other"), m.path("d1/moved"), unix.RENAME_NOREPLACE); err != nil {
		t.Fatal(err)
	}
	if ino("d1/moved") != sub || ino("d1/moved/..") != ino("d1") || nlink("d1") != 4 || nlink("d2") != 2 {
		t.Fatal("noreplace rename of a directory wrong")
	}
	want := map[string]uint64{"d1/a": ino("d1/a"), "d1/b": ino("d1/b"), "d2/sub": a, "d1/moved": sub}
	m.remount()
	for p, i := range want {
		if ino(p) != i {
			t.Fatalf("%s is inode %d after remount, want %d", p, ino(p), i)
		}
	}
	mustRead(t, m.path("d1/moved/f"), []byte("in sub"))
	if ino("d1/moved/..") != ino("d1") || nlink("d1") != 4 || nlink("d2") != 2 {
		t.Fatal("parents wrong after remount")
	}
}

// TestLongSymlinkMount: symlink(2) and readlink(2) of targets up to 4095
// bytes through the kernel (4096 is ENAMETOOLONG), across a remount.
func TestLongSymlinkMount(t *testing.T) {
	m := mount(t, newImage(t))
	targets := map[string]string{}
	for _, n := range []int{1, 900, 901, 2000, 4095} {
		name := fmt.Sprintf("l%d", n)
		tg := strings.Repeat("../x/", n)[:n]
		if err := os.Symlink(tg, m.path(name)); err != nil {
			t.Fatalf("symlink of %d bytes: %v", n, err)
		}
		targets[name] = tg
	}
	wantErrno(t, "symlink of 4096 bytes", os.Symlink(strings.Repeat("y", 4096), m.path("toolong")), syscall.ENAMETOOLONG)
	check := func() {
		t.Helper()
		for name, tg := range targets {
			got, err := os.Readlink(m.path(name))
			if err != nil || got != tg {
				t.Fatalf("readlink %s: %d bytes, %v; want %d", name, len(got), err, len(tg))
			}
			if st := statOf(t, m.path(name)); st.Size != int64(len(tg)) {
				t.Fatalf("%s: size %d, want %d", name, st.Size, len(tg))
			}
		}
	}
	check()
	m.remount()
	check()
	if err := os.Remove(m.path("l4095")); err != nil {
		t.Fatal(err)
	}
	delete(targets, "l4095")
	check()
}

// semOp is one operation of the semantics model: the model test's, or a
// renameat2 with a flag, or a symlink of a long target.
func semApply(o modelOp, root string) string {
	p, q := filepath.Join(root, o.p), filepath.Join(root, o.q)
	res := func(err error) string {
		var en syscall.Errno
		switch {
		case errors.As(err, &en):
			return "errno " + en.Error()
		case err != nil:
			return "error " + err.Error()
		}
		return "ok"
	}
	switch o.kind {
	case "exchange":
		return res(renameat2(p, q, unix.RENAME_EXCHANGE))
	case "noreplace":
		return res(renameat2(p, q, unix.RENAME_NOREPLACE))
	case "longsymlink":
		n := 850 + int(o.size)%(4096-850+1) // 4096: ENAMETOOLONG
		if err := syscall.Symlink(strings.Repeat("s", n), p); err != nil {
			return res(err)
		}
		got, err := os.Readlink(p)
		if err != nil {
			return res(err)
		}
		return fmt.Sprintf("ok %d", len(got))
	case "readlink":
		got, err := os.Readlink(p)
		if err != nil {
			return res(err)
		}
		return fmt.Sprintf("%d bytes %x", len(got), crc([]byte(got)))
	}
	return o.apply(root)
}

// TestModelSemantics is the model test (model_test.go) with exchanges,
// NOREPLACE renames and long symlinks among the operations: the mount
// and the host's filesystem must agree on every outcome.
func TestModelSemantics(t *testing.T) {
	m := mount(t, newImage(t))
	ref := t.TempDir()
	r := rand.New(rand.NewPCG(18, 8))
	n := 2000
	if testing.Short() {
		n = 250
	}
	extra := []string{"exchange", "exchange", "noreplace", "longsymlink", "readlink"}
	succeeded := map[string]int{}
	for i := range n {
		o := randOp(r)
		if r.IntN(3) == 0 {
			o.kind = extra[r.IntN(len(extra))]
		}
		want, got := semApply(o, ref), semApply(o, m.dir)
		if want != got {
			t.Fatalf("op %d %v: mount %q, host %q", i, o, got, want)
		}
		if strings.HasPrefix(got, "ok") {
			succeeded[o.kind]++
		}
		if i == n/2 {
			m.remount()
			compareTrees(t, ref, m.dir)
		}
	}
	for _, k := range []string{"exchange", "noreplace", "longsymlink"} {
		if succeeded[k] == 0 {
			t.Errorf("no %s succeeded: %v", k, succeeded)
		}
	}
	t.Logf("succeeded: %v", succeeded)
	m.remount()
	compareTrees(t, ref, m.dir)
	compareLinks(t, ref, m.dir)
	for _, p := range modelPaths {
		if a, b := semApply(modelOp{kind: "readlink", p: p}, ref), semApply(modelOp{kind: "readlink", p: p}, m.dir); a != b {
			t.Errorf("readlink %s: mount %q, host %q", p, b, a)
		}
	}
}

// syncBuffer is a log destination tests read.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSyncfsNotSent records what sync(2) and syncfs(2) send a FUSE server:
// Linux sends FUSE_SYNCFS only to virtiofs (fc->sync_fs), and go-fuse
// v2.12.1 would answer it ENOSYS anyway, so neither reaches the engine and
// neither can make anything durable (docs/operations.md: durability). The
// test fails if a kernel starts sending it: then it should be handled.
// fsync(2) of a file and of a directory do reach it, as FSYNC and
// FSYNCDIR.
func TestSyncfsNotSent(t *testing.T) {
	needFuse(t)
	img := newImage(t)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := t.TempDir()
	srv, err := Mount(fsys, dir, Options{Debug: true, Logger: log})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	m := &testMount{t: t, img: img, dir: dir, fsys: fsys, srv: srv}
	t.Cleanup(m.close)
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, m.path("d/f"), []byte("x"))
	d, err := os.Open(m.path("d"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		t.Fatalf("syncfs: %v", err)
	}
	unix.Sync()
	if strings.Contains(buf.String(), "SYNCFS") {
		t.Fatalf("the kernel sent FUSE_SYNCFS: handle it (go-fuse answers ENOSYS)\n%s", buf.String())
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync of a directory: %v", err)
	}
	if !strings.Contains(buf.String(), "FSYNCDIR") {
		t.Fatal("fsync of a directory sent no FSYNCDIR")
	}
}

// TestWriteErrorsLogged: every error answered to a write, fsync, fsyncdir
// or flush is logged (the kernel may report it again later, as EIO, on
// another call), rate-limited; a lookup's ENOENT is not.
func TestWriteErrorsLogged(t *testing.T) {
	var buf syncBuffer
	b := &bridge{log: slog.New(slog.NewTextHandler(&buf, nil))}
	if en := b.errno("lookup", 5, syscall.ENOENT); en != syscall.ENOENT || buf.String() != "" {
		t.Fatalf("lookup ENOENT: %v, logged %q", en, buf.String())
	}
	if en := b.errno("fsync", 5, syscall.EROFS); en != syscall.EROFS || !strings.Contains(buf.String(), "fsync failed") {
		t.Fatalf("fsync EROFS: %v, logged %q", en, buf.String())
	}
	before := buf.String()
	for range 100 {
		b.errno("write", 6, syscall.ENOSPC)
	}
	if got := strings.Count(buf.String(), "write failed"); got > 1 || buf.String() == before && got == 0 && b.suppressed.Load() == 0 {
		t.Fatalf("100 failed writes logged %d lines (suppressed %d)", got, b.suppressed.Load())
	}
	if en := b.errno("write", 6, fmt.Errorf("device gone")); en != syscall.EIO || !strings.Contains(buf.String(), "device gone") {
		t.Fatalf("write EIO: %v, logged %q", en, buf.String())
	}
}

// TestInodeRebuildLongSymlinks: the inode tree rebuild keeps whole long
// targets (every chunk) and drops a target one of whose chunks was lost,
// leaving no part of it (readlink then fails with EIO); the image checks
// clean after.
func TestInodeRebuildLongSymlinks(t *testing.T) {
	img := newImage(t)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{"s": strings.Repeat("s", 100), "l1": strings.Repeat("1", 4095), "l2": strings.Repeat("2", 2000)}
	inos := map[string]uint64{}
	for name, tg := range targets {
		a, err := fsys.Symlink(fs.RootIno, name, tg, fs.NewInode{})
		if err != nil {
			t.Fatal(err)
		}
		inos[name] = a.Ino
	}
	if err := fsys.Engine().Update(func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeInode)
		if err != nil {
			return err
		}
		_, err = tr.Delete(format.SymlinkChunkKey(inos["l2"], format.MaxSymlinkItem, 2000))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := repair.RebuildInode(context.Background(), fsys.Engine(), repair.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s", "l1"} {
		if got, err := fsys.Readlink(inos[name]); err != nil || got != targets[name] {
			t.Fatalf("readlink %s after the rebuild: %d bytes, %v", name, len(got), err)
		}
	}
	if got, err := fsys.Readlink(inos["l2"]); fs.Errno(err) != syscall.EIO {
		t.Fatalf("readlink of the target that lost a chunk: %d bytes, %v; want EIO", len(got), err)
	}
	if err := fsys.Engine().View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeInode)
		return tr.Ascend(format.SymlinkKey(inos["l2"]), func(k format.Key, _ []byte) bool {
			if k.Obj == inos["l2"] && k.Type == format.TypeSymlink {
				t.Errorf("item %s of the incomplete target kept", k)
			}
			return false
		})
	}); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	checkImage(t, img)
}
