package fuse

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine/format"
)

// listNames splits a listxattr buffer.
func listNames(b []byte) []string {
	var out []string
	for _, n := range bytes.Split(b, []byte{0}) {
		if len(n) > 0 {
			out = append(out, string(n))
		}
	}
	slices.Sort(out)
	return out
}

// TestXattrSyscalls drives the xattr system calls through the kernel.
func TestXattrSyscalls(t *testing.T) {
	m := mount(t, newImage(t))
	p := m.path("f")
	mustWrite(t, p, []byte("data"))
	if err := unix.Setxattr(p, "user.a", []byte("one"), 0); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "XATTR_CREATE of an existing name", unix.Setxattr(p, "user.a", []byte("x"), unix.XATTR_CREATE), syscall.EEXIST)
	wantErrno(t, "XATTR_REPLACE of a missing name", unix.Setxattr(p, "user.b", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA)
	if err := unix.Setxattr(p, "user.a", []byte("value"), unix.XATTR_REPLACE); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "trusted.t", []byte{0, 1, 2}, unix.XATTR_CREATE); err != nil {
		t.Fatal(err)
	}
	_, err := unix.Getxattr(p, "user.missing", nil)
	wantErrno(t, "getxattr of a missing name", err, syscall.ENODATA)
	n, err := unix.Getxattr(p, "user.a", nil)
	if err != nil || n != 5 {
		t.Fatalf("size probe: %d %v", n, err)
	}
	_, err = unix.Getxattr(p, "user.a", make([]byte, 2))
	wantErrno(t, "getxattr into a small buffer", err, syscall.ERANGE)
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(p, "user.a", buf); err != nil || string(buf[:n]) != "value" {
		t.Fatalf("getxattr: %q %v", buf[:n], err)
	}
	wantErrno(t, "setxattr in an unknown namespace", unix.Setxattr(p, "os2.x", []byte("x"), 0), syscall.EOPNOTSUPP)
	huge := bytes.Repeat([]byte("0123456789abcdef"), format.XattrSizeMax/16)
	if err := unix.Setxattr(p, "user.huge", huge, 0); err != nil {
		t.Fatalf("setxattr of a 64 KiB value: %v", err)
	}
	got := make([]byte, format.XattrSizeMax)
	if n, err := unix.Getxattr(p, "user.huge", got); err != nil || !bytes.Equal(got[:n], huge) {
		t.Fatalf("getxattr of the 64 KiB value: %d bytes, %v", n, err)
	}
	if err := unix.Removexattr(p, "user.huge"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "setxattr of a value over XATTR_SIZE_MAX", unix.Setxattr(p, "user.big", make([]byte, format.XattrSizeMax+1), 0), syscall.E2BIG)
	if err := unix.Setxattr(p, "user.big", bytes.Repeat([]byte{'b'}, format.MaxXattrValue("user.big")), 0); err != nil {
		t.Fatal(err)
	}
	sz, err := unix.Listxattr(p, nil)
	want := []string{"trusted.t", "user.a", "user.big"}
	if err != nil || sz != len(strings.Join(want, "\x00"))+1 {
		t.Fatalf("listxattr size probe: %d %v", sz, err)
	}
	_, err = unix.Listxattr(p, make([]byte, 3))
	wantErrno(t, "listxattr into a small buffer", err, syscall.ERANGE)
	lb := make([]byte, sz)
	if n, err := unix.Listxattr(p, lb); err != nil || !slices.Equal(listNames(lb[:n]), want) || lb[n-1] != 0 {
		t.Fatalf("listxattr: %q %v", lb, err)
	}
	// A symlink's own attributes (trusted.: user. is for files and
	// directories only, the kernel refuses it on a symlink).
	if err := os.Symlink("f", m.path("l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(m.path("l"), "trusted.link", []byte("l"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Removexattr(p, "user.a"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "second removexattr", unix.Removexattr(p, "user.a"), syscall.ENODATA)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsetxattr(int(f.Fd()), "user.synced", []byte("s"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	m.remount()
	lb = make([]byte, 256)
	n, err = unix.Listxattr(p, lb)
	if want := []string{"trusted.t", "user.big", "user.synced"}; err != nil || !slices.Equal(listNames(lb[:n]), want) {
		t.Fatalf("after remount: %q %v, want %q", lb[:n], err, want)
	}
	if n, err := unix.Lgetxattr(m.path("l"), "trusted.link", buf); err != nil || string(buf[:n]) != "l" {
		t.Fatalf("symlink attribute after remount: %q %v", buf[:n], err)
	}
	// The last unlink drops the attributes (the check at cleanup would
	// report orphans).
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

// TestXattrTools: cp -a keeps attributes and ACLs, setfattr/getfattr and
// setfacl/getfacl work (when the attr and acl packages are installed).
func TestXattrTools(t *testing.T) {
	needFuse(t)
	for _, tool := range []string{"setfattr", "getfattr", "setfacl", "getfacl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s (apt-get install attr acl)", tool)
		}
	}
	m := mount(t, newImage(t))
	run := func(name string, args ...string) string {
		t.Helper()
		var stderr bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s%s", name, args, err, out, stderr.Bytes())
		}
		return string(out)
	}
	src := m.path("src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, src+"/a", []byte("a"))
	run("setfattr", "-n", "user.color", "-v", "blue", src+"/a")
	run("setfattr", "-n", "user.bin", "-v", "0x00ff00", src+"/a")
	run("setfacl", "-m", "u:1234:rw,g:55:r", src+"/a")
	run("setfacl", "-d", "-m", "u:1234:rwx", src)
	if out := run("getfattr", "--absolute-names", "-n", "user.color", "--only-values", src+"/a"); out != "blue" {
		t.Fatalf("getfattr: %q", out)
	}
	acl := run("getfacl", "-p", "-c", src+"/a")
	for _, want := range []string{"user:1234:rw-", "group:55:r--"} {
		if !strings.Contains(acl, want) {
			t.Fatalf("getfacl lacks %q:\n%s", want, acl)
		}
	}
	run("cp", "-a", src, m.path("dst"))
	before := run("getfattr", "--absolute-names", "-d", "-m", "-", "-e", "hex", src+"/a")
	after := run("getfattr", "--absolute-names", "-d", "-m", "-", "-e", "hex", m.path("dst/a"))
	if strings.ReplaceAll(before, "src", "dst") != after {
		t.Fatalf("cp -a: attributes differ:\n%s\nvs\n%s", before, after)
	}
	if got := run("getfacl", "-p", "-c", m.path("dst/a")); got != acl {
		t.Fatalf("cp -a: ACL differs:\n%s\nvs\n%s", got, acl)
	}
	if got := run("getfacl", "-p", "-c", "-d", m.path("dst")); !strings.Contains(got, "user:1234:rwx") {
		t.Fatalf("cp -a: default ACL lost:\n%s", got)
	}
	run("setfattr", "-x", "user.color", m.path("dst/a"))
	if out, err := exec.Command("getfattr", "-n", "user.color", m.path("dst/a")).CombinedOutput(); err == nil {
		t.Fatalf("getfattr of a removed attribute succeeded: %s", out)
	}
	m.remount()
	if got := run("getfacl", "-p", "-c", m.path("dst/a")); got != acl {
		t.Fatalf("ACL after remount:\n%s\nvs\n%s", got, acl)
	}
}
