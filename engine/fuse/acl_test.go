package fuse

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// aclBlob encodes a POSIX ACL attribute: entries of (tag, perm, id);
// ids of the owner, group, mask and other entries are -1.
func aclBlob(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

const (
	tUserObj, tUser, tGroupObj, tGroup, tMask, tOther = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
	noID                                              = ^uint32(0)
)

// TestACLs: through the mount, POSIX ACLs are enforced and inherited as
// on the kernel's own filesystem (the test's temporary directory, the
// reference): an access ACL grants and withdraws access; a directory's
// default ACL decides a new file's and directory's mode and ACLs instead
// of the umask; without one the umask applies.
func TestACLs(t *testing.T) {
	m := mountAllowOther(t)
	ref := t.TempDir()
	for _, d := range []string{ref, filepath.Dir(ref)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Setxattr(ref, "system.posix_acl_access", aclBlob([3]uint32{tUserObj, 7, noID}, [3]uint32{tGroupObj, 5, noID}, [3]uint32{tOther, 5, noID}), 0); err != nil {
		t.Skipf("the reference filesystem takes no ACLs: %v", err)
	}
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	xattr := func(p, name string) []byte {
		buf := make([]byte, 1024)
		n, err := syscall.Getxattr(p, name, buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	type state struct {
		mode           os.FileMode
		access, deflt  []byte
		nobodyWrites   bool
		nobodyReadsDir bool
	}
	describe := func(p string) state {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		s := state{mode: st.Mode(), access: xattr(p, "system.posix_acl_access"), deflt: xattr(p, "system.posix_acl_default")}
		if st.IsDir() {
			s.nobodyReadsDir = asUser(65534, "ls", p) == nil
		} else {
			s.nobodyWrites = asUser(65534, "dd", "of="+p, "conv=notrunc", "status=none") == nil
		}
		return s
	}
	grantNobody := aclBlob([3]uint32{tUserObj, 6, noID}, [3]uint32{tUser, 6, 65534}, [3]uint32{tGroupObj, 0, noID},
		[3]uint32{tMask, 6, noID}, [3]uint32{tOther, 0, noID})
	inherit := aclBlob([3]uint32{tUserObj, 7, noID}, [3]uint32{tUser, 7, 65534}, [3]uint32{tGroupObj, 5, noID},
		[3]uint32{tMask, 7, noID}, [3]uint32{tOther, 0, noID})
	minimal := aclBlob([3]uint32{tUserObj, 7, noID}, [3]uint32{tGroupObj, 7, noID}, [3]uint32{tOther, 7, noID})
	steps := []struct {
		name string
		do   func(root string) string // returns the path to describe
	}{
		{"file 0600 without ACL", func(root string) string {
			p := filepath.Join(root, "plain")
			must(t, os.WriteFile(p, nil, 0o600))
			return p
		}},
		{"an access ACL grants nobody", func(root string) string {
			p := filepath.Join(root, "plain")
			must(t, syscall.Setxattr(p, "system.posix_acl_access", grantNobody, 0))
			return p
		}},
		{"chmod narrows the mask", func(root string) string {
			p := filepath.Join(root, "plain")
			must(t, os.Chmod(p, 0o600&^0o060|0o040))
			return p
		}},
		{"the ACL removed", func(root string) string {
			p := filepath.Join(root, "plain")
			must(t, syscall.Removexattr(p, "system.posix_acl_access"))
			return p
		}},
		{"a directory with a default ACL", func(root string) string {
			p := filepath.Join(root, "inherit")
			must(t, os.Mkdir(p, 0o755))
			must(t, syscall.Setxattr(p, "system.posix_acl_default", inherit, 0))
			return p
		}},
		{"a file made in it", func(root string) string {
			p := filepath.Join(root, "inherit", "f")
			must(t, os.WriteFile(p, nil, 0o666))
			return p
		}},
		{"a directory made in it", func(root string) string {
			p := filepath.Join(root, "inherit", "d")
			must(t, os.Mkdir(p, 0o777))
			return p
		}},
		{"a file made two levels down", func(root string) string {
			p := filepath.Join(root, "inherit", "d", "f")
			must(t, os.WriteFile(p, nil, 0o640))
			return p
		}},
		{"a minimal default ACL", func(root string) string {
			p := filepath.Join(root, "minimal")
			must(t, os.Mkdir(p, 0o755))
			must(t, syscall.Setxattr(p, "system.posix_acl_default", minimal, 0))
			p = filepath.Join(p, "f")
			must(t, os.WriteFile(p, nil, 0o664))
			return p
		}},
		{"the umask without a default ACL", func(root string) string {
			p := filepath.Join(root, "masked")
			must(t, os.WriteFile(p, nil, 0o666))
			return p
		}},
	}
	for _, s := range steps {
		got := [2]state{describe(s.do(ref)), describe(s.do(m.dir))}
		if got[0].mode != got[1].mode || !bytes.Equal(got[0].access, got[1].access) || !bytes.Equal(got[0].deflt, got[1].deflt) ||
			got[0].nobodyWrites != got[1].nobodyWrites || got[0].nobodyReadsDir != got[1].nobodyReadsDir {
			t.Fatalf("%s:\n the kernel's filesystem %+v\n the mount               %+v", s.name, got[0], got[1])
		}
		t.Logf("%s: %+v", s.name, got[1])
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
