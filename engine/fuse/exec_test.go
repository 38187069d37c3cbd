package fuse

import (
	"bytes"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Ordinary tools on the mount: cp, mv, ln, rm, diff.

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// makeTree fills dir with directories, files of awkward sizes, a symlink
// and a hard link.
func makeTree(t *testing.T, dir string, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+1))
	sizes := []int{0, 1, 4095, 4096, 4097, 65536, 300_000, 2<<20 + 17}
	for d := range 3 {
		sub := filepath.Join(dir, "dir"+strconv.Itoa(d), "nested")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, size := range sizes {
			p := filepath.Join(filepath.Dir(sub), "f"+strconv.Itoa(i))
			if i%2 == 1 {
				p = filepath.Join(sub, "g"+strconv.Itoa(i))
			}
			mustWrite(t, p, randBytes(r, size))
		}
	}
	if err := os.Chmod(filepath.Join(dir, "dir0", "f2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("dir0/f4", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "dir1", "f4"), filepath.Join(dir, "hard")); err != nil {
		t.Fatal(err)
	}
}

// compareTrees checks that a and b hold the same names, types,
// permissions, contents and symlink targets.
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		seen[rel] = true
		q := filepath.Join(b, rel)
		fa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fb, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if fa.Mode() != fb.Mode() {
			t.Errorf("%s: mode %v, want %v", rel, fb.Mode(), fa.Mode())
			return nil
		}
		switch {
		case fa.Mode().IsRegular():
			da, _ := os.ReadFile(p)
			db, err := os.ReadFile(q)
			if err != nil || !bytes.Equal(da, db) {
				t.Errorf("%s: contents differ (%d vs %d bytes, %v)", rel, len(da), len(db), err)
			}
		case fa.Mode()&os.ModeSymlink != 0:
			la, _ := os.Readlink(p)
			lb, err := os.Readlink(q)
			if err != nil || la != lb {
				t.Errorf("%s: symlink to %q, want %q (%v)", rel, lb, la, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(b, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b, p)
		if !seen[rel] {
			t.Errorf("%s: only in %s", rel, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Lstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Lstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Ino == sb.Ino && sa.Dev == sb.Dev
}

func TestTools(t *testing.T) {
	for _, tool := range []string{"cp", "mv", "ln", "rm", "diff"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	m := mount(t, newImage(t))
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 7)

	// Into the mount, preserving everything (hard links included).
	runTool(t, "cp", "-a", src, m.path("copy"))
	compareTrees(t, src, m.path("copy"))
	runTool(t, "diff", "-r", "--no-dereference", src, m.path("copy"))
	if !sameInode(t, m.path("copy/hard"), m.path("copy/dir1/f4")) {
		t.Error("cp -a did not keep the hard link")
	}
	// Within the mount.
	runTool(t, "cp", "-r", m.path("copy"), m.path("copy2"))
	runTool(t, "diff", "-r", m.path("copy"), m.path("copy2"))
	runTool(t, "mv", m.path("copy2"), m.path("moved"))
	if _, err := os.Stat(m.path("copy2")); !os.IsNotExist(err) {
		t.Fatalf("copy2 after mv: %v", err)
	}
	runTool(t, "diff", "-r", m.path("copy"), m.path("moved"))
	runTool(t, "mv", m.path("moved/dir2/f6"), m.path("moved/dir0/nested/renamed"))
	runTool(t, "mv", "-f", m.path("moved/dir1/f0"), m.path("moved/dir1/f2")) // over a file
	runTool(t, "cmp", m.path("copy/dir2/f6"), m.path("moved/dir0/nested/renamed"))
	runTool(t, "cmp", m.path("copy/dir1/f0"), m.path("moved/dir1/f2"))
	// Links.
	runTool(t, "ln", m.path("moved/dir0/f2"), m.path("moved/hard2"))
	runTool(t, "ln", "-s", "dir0/f2", m.path("moved/soft2"))
	if !sameInode(t, m.path("moved/hard2"), m.path("moved/dir0/f2")) {
		t.Error("ln made no hard link")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(m.path("moved/hard2"), &st); err != nil || st.Nlink != 2 {
		t.Errorf("nlink after ln: %d %v", st.Nlink, err)
	}
	runTool(t, "cmp", m.path("moved/soft2"), m.path("copy/dir0/f2"))
	// Back out of the mount: the round trip is exact.
	back := filepath.Join(t.TempDir(), "back")
	runTool(t, "cp", "-a", m.path("copy"), back)
	compareTrees(t, src, back)
	// Remove.
	runTool(t, "rm", "-r", m.path("moved"))
	runTool(t, "rm", "-rf", m.path("copy"))
	if names := readNames(t, m.dir); len(names) != 0 {
		t.Fatalf("after rm -r: %v", names)
	}
	// Everything freed: the engine has no inodes but the root left, once
	// the kernel has released the files cp and diff had open.
	m.remount()
	if names := readNames(t, m.dir); len(names) != 0 {
		t.Fatalf("after remount: %v", names)
	}
}
