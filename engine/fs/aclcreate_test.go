package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
)

func aclOf(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// TestACLInheritance: a new inode takes its mode and ACLs from its
// directory's default ACL (the ACL cut to the mode asked for, the mode to
// the ACL), a new directory the default ACL too; without one the umask
// given applies, and the Go API's callers, who give none, get the mode
// they ask for.
func TestACLInheritance(t *testing.T) {
	f := mount(t, newDev(t), Options{})
	defer f.Close()
	none := ^uint32(0)
	def := aclOf([3]uint32{aclUserObj, 7, none}, [3]uint32{aclUser, 7, 1000}, [3]uint32{aclGroupObj, 5, none},
		[3]uint32{aclMask, 7, none}, [3]uint32{aclOther, 0, none})
	d, err := f.Mkdir(RootIno, "d", NewInode{Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetXattr(d.Ino, aclDefault, def, 0); err != nil {
		t.Fatal(err)
	}
	umask := uint32(0o077)
	a, err := f.Create(d.Ino, "f", NewInode{Mode: 0o640, Umask: &umask})
	if err != nil {
		t.Fatal(err)
	}
	// user::rw- (7 & 6), user:1000:rwx, group::r-x, mask::r-- (7 & 4),
	// other::--- ; mode 0640, the umask not applied.
	want := aclOf([3]uint32{aclUserObj, 6, none}, [3]uint32{aclUser, 7, 1000}, [3]uint32{aclGroupObj, 5, none},
		[3]uint32{aclMask, 4, none}, [3]uint32{aclOther, 0, none})
	if got, err := f.GetXattr(a.Ino, aclAccess); err != nil || !bytes.Equal(got, want) || a.Mode&0o777 != 0o640 {
		t.Fatalf("file: mode %o, access ACL %v %v", a.Mode&0o777, got, err)
	}
	if _, err := f.GetXattr(a.Ino, aclDefault); !errors.Is(err, syscall.ENODATA) {
		t.Fatalf("a file got a default ACL: %v", err)
	}
	sub, err := f.Mkdir(d.Ino, "sub", NewInode{Mode: syscall.S_IFDIR | 0o777, Umask: &umask})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.GetXattr(sub.Ino, aclDefault); err != nil || !bytes.Equal(got, def) || sub.Mode&0o777 != 0o770 {
		t.Fatalf("directory: mode %o, default ACL %v %v", sub.Mode&0o777, got, err)
	}
	// Without a default ACL: the umask, or (Go API) the mode as asked.
	b, err := f.Create(RootIno, "masked", NewInode{Mode: 0o666, Umask: &umask})
	if err != nil || b.Mode&0o777 != 0o600 {
		t.Fatalf("masked: %o %v", b.Mode&0o777, err)
	}
	c, err := f.Create(RootIno, "asked", NewInode{Mode: 0o666})
	if err != nil || c.Mode&0o777 != 0o666 {
		t.Fatalf("asked: %o %v", c.Mode&0o777, err)
	}
	mustClean(t, f)
}
