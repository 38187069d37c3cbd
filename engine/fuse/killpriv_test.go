package fuse

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine/fs"
)

// TestKillPrivs: writes, truncates and chowns take set-ID bits and file
// capabilities away through the mount exactly as they do on the kernel's
// own filesystem (the test's temporary directory is the reference), now
// that the mount does it itself (FUSE_HANDLE_KILLPRIV_V2) — by a caller
// without CAP_FSETID (nobody) and by root.
func TestKillPrivs(t *testing.T) {
	m := mountAllowOther(t)
	ref := t.TempDir()
	// nobody must reach both directories (the mount's root is 0755).
	for _, d := range []string{ref, filepath.Dir(ref), filepath.Dir(m.dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A version 2 file capability (CAP_NET_BIND_SERVICE permitted).
	capv2 := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	asNobody := func(name string, args ...string) error { return asUser(65534, name, args...) }
	cases := []struct {
		name string
		mode os.FileMode
		caps bool
		op   func(path string) error
	}{
		{"write by nobody, setuid setgid group-exec", 0o777 | os.ModeSetuid | os.ModeSetgid, false,
			func(p string) error { return asNobody("dd", "of="+p, "conv=notrunc", "status=none") }},
		{"write by nobody, setgid without group-exec", 0o666 | os.ModeSetgid, false,
			func(p string) error { return asNobody("dd", "of="+p, "conv=notrunc", "status=none") }},
		{"write by root", 0o777 | os.ModeSetuid | os.ModeSetgid, false,
			func(p string) error { return os.WriteFile(p, []byte("y"), 0) }},
		{"write by root, capability", 0o755, true,
			func(p string) error { return os.WriteFile(p, []byte("y"), 0) }},
		{"truncate by nobody", 0o777 | os.ModeSetuid, false,
			func(p string) error { return asNobody("truncate", "-s", "1", p) }},
		{"truncate by root, capability", 0o4755, true,
			func(p string) error { return os.Truncate(p, 1) }},
		{"chown by root", 0o755 | os.ModeSetuid | os.ModeSetgid, true,
			func(p string) error { return os.Chown(p, 1, 1) }},
		{"chown by root, setgid without group-exec", 0o644 | os.ModeSetuid | os.ModeSetgid, false,
			func(p string) error { return os.Chown(p, 1, 1) }},
		{"write by nobody in the file's group, setgid without group-exec", 0o666 | os.ModeSetgid, false,
			func(p string) error {
				if err := os.Chown(p, 0, 65534); err != nil {
					return err
				}
				return asNobody("dd", "of="+p, "conv=notrunc", "status=none")
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			type outcome struct {
				mode os.FileMode
				caps bool
			}
			var got [2]outcome
			for i, dir := range []string{ref, m.dir} {
				p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
				if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, c.mode); err != nil {
					t.Fatal(err)
				}
				if c.caps {
					if err := syscall.Setxattr(p, "security.capability", capv2, 0); err != nil {
						t.Fatalf("%s: set capability: %v", dir, err)
					}
				}
				if err := c.op(p); err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				st, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				_, xerr := syscall.Getxattr(p, "security.capability", make([]byte, 64))
				got[i] = outcome{st.Mode(), xerr == nil}
			}
			if got[0] != got[1] {
				t.Fatalf("the kernel's filesystem: mode %v, capability %v; the mount: mode %v, capability %v",
					got[0].mode, got[0].caps, got[1].mode, got[1].caps)
			}
			t.Logf("mode %v, capability kept %v", got[1].mode, got[1].caps)
		})
	}
}

// TestWritesAskNoXattr: small writes through the mount bring no GETXATTR
// of security.capability each (the kernel leaves dropping it to the
// mount): one request per write instead of two.
func TestWritesAskNoXattr(t *testing.T) {
	m := mount(t, newImage(t))
	f, err := os.Create(m.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := m.srv.b.getxattrs.Load()
	for i := 0; i < 100; i++ {
		if _, err := f.WriteAt([]byte("0123456789"), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.srv.b.getxattrs.Load() - before; n > 1 {
		t.Fatalf("100 writes brought %d GETXATTR requests", n)
	}
}

// asUser runs a command as uid (group the same number) with "x" on its
// standard input; the error holds its output.
func asUser(uid uint32, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader("x")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return errors.New(strings.TrimSpace(string(out)))
	}
	return nil
}

// mountAllowOther mounts a new image for users other than root too
// (allow_other): only then do their requests reach the mount.
func mountAllowOther(t *testing.T) *testMount {
	t.Helper()
	needFuse(t)
	img := newImage(t)
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(fsys, dir, Options{FsName: img, AllowOther: true})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	m := &testMount{t: t, img: img, dir: dir, fsys: fsys, srv: srv}
	t.Cleanup(m.close)
	return m
}
