package format

import (
	"bytes"
	"hash/fnv"
)

// Extended attributes (format 1.4, RoCompatXattr).
//
// The xattr tree holds one item per attribute of an inode:
//
//	key   (ino, TypeXattr, name hash, seq)
//	value u16 name length | u16 value length | name | value
//
// The name hash is the directory tree's (FNV-1a, 64 bits) of the full name
// ("user.foo"); seq tells apart names of one inode with the same hash: a
// new name takes the first seq not in use under its hash, so lookups scan
// the (almost always one) items under the hash and compare names, as the
// directory tree does.
//
// A value lives in one item, never split: the name and the value together
// fit in MaxValueSize less the 4-byte header (1020 bytes: a value of up to
// 1020-len(name) bytes, 997 for a POSIX ACL, which is 124 ACL entries). A
// larger value is refused with ENOSPC, as ext4 refuses a value that does
// not fit in its one xattr block; one over XATTR_SIZE_MAX (64 KiB) gets
// E2BIG, as the kernel's VFS gives. Splitting a value over several items
// would lift the limit to 64 KiB at the cost of items that can be lost
// apart (a checker and repairer that must join them).
//
// On an image whose version has RoCompatXattr (mkfs, an upgrade), the
// tree is created by the first attribute set (the engine creates it on
// first use, see CreatedOnUse); without the bit a set is refused. A build
// that does not know the tree mounts the image read-only, since it would
// free inodes and leave their attributes.

// TypeXattr is the item type of the xattr tree: (ino, 90, name hash, seq).
const TypeXattr uint8 = 90

const (
	// MaxXattrName bounds an attribute's full name, as XATTR_NAME_MAX.
	MaxXattrName = 255
	// XattrSizeMax is the kernel's XATTR_SIZE_MAX: a larger value is
	// refused with E2BIG.
	XattrSizeMax = 65536
	xattrHeader  = 4
	// MaxXattrPayload bounds name plus value in one item.
	MaxXattrPayload = MaxValueSize - xattrHeader
)

// XattrItem is one extended attribute.
type XattrItem struct {
	Name  string
	Value []byte
}

// MaxXattrValue is the largest value an attribute named name can hold.
func MaxXattrValue(name string) int { return MaxXattrPayload - len(name) }

// Encode returns the item's value bytes.
func (x XattrItem) Encode() []byte {
	b := make([]byte, xattrHeader+len(x.Name)+len(x.Value))
	le.PutUint16(b, uint16(len(x.Name)))
	le.PutUint16(b[2:], uint16(len(x.Value)))
	copy(b[xattrHeader:], x.Name)
	copy(b[xattrHeader+len(x.Name):], x.Value)
	return b
}

// DecodeXattrItem decodes an xattr item, bounding every length: a name of
// 1..MaxXattrName bytes without NUL, a value that fills the rest exactly.
// The value shares v's memory.
func DecodeXattrItem(v []byte) (XattrItem, error) {
	if len(v) < xattrHeader {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr item of %d bytes", len(v))
	}
	n, m := int(le.Uint16(v)), int(le.Uint16(v[2:]))
	if n == 0 || n > MaxXattrName || n+m > MaxXattrPayload || xattrHeader+n+m != len(v) {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr name of %d bytes and value of %d in a %d-byte item", n, m, len(v))
	}
	name := v[xattrHeader : xattrHeader+n]
	if bytes.IndexByte(name, 0) >= 0 {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr name %q holds a NUL", name)
	}
	return XattrItem{Name: string(name), Value: v[xattrHeader+n:]}, nil
}

// XattrHash is the hash an attribute named name is keyed by.
func XattrHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// XattrKey is the key of inode ino's attribute with name hash h, seq seq.
func XattrKey(ino, h, seq uint64) Key { return Key{Obj: ino, Type: TypeXattr, Off: h, Aux: seq} }

// XattrNamespaceOK reports whether name is in a namespace the filesystem
// stores: user., trusted., security. (with a non-empty rest), and the two
// POSIX ACLs, system.posix_acl_access and system.posix_acl_default.
func XattrNamespaceOK(name string) bool {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if len(name) > len(p) && name[:len(p)] == p {
			return true
		}
	}
	return name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

// CreatedOnUse says whether tree id is one the engine creates the first
// time a transaction asks for it to write (trees added after images
// existed), and the ro-compat feature bit it then sets.
func CreatedOnUse(id TreeID) (roCompat uint64, ok bool) {
	if id == TreeXattr {
		return RoCompatXattr, true
	}
	return 0, false
}
