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
// A value whose name and value together fit in MaxValueSize less the
// 4-byte header (1020 bytes) lives in its one item. A larger one (format
// 1.6, IncompatLargeXattrs; up to XATTR_SIZE_MAX, 64 KiB) is split: the
// head item, under the same key, has a longer header and the value's
// first bytes,
//
//	value u16 name length | 0x8000 | u16 0 | u32 value length | name | first part
//
// filling the item, and the rest follows in chunk items of up to
// MaxValueSize bytes each,
//
//	key   (ino, TypeXattrChunk, name hash, seq<<16 | index)   index 1, 2, …
//	value the bytes
//
// so every chunk's place and length follow from its key and the head's
// length: the checker joins them (a head whose chunks are not all there,
// or a chunk without its head, is damage), and the repair keeps an
// attribute only whole. Without the feature a larger value is refused
// with ENOSPC, as ext4 refuses a value that does not fit its xattr block;
// one over XATTR_SIZE_MAX gets E2BIG, as the kernel's VFS gives.
//
// On an image whose version has RoCompatXattr (mkfs, an upgrade), the
// tree is created by the first attribute set (the engine creates it on
// first use, see CreatedOnUse); without the bit a set is refused. A build
// that does not know the tree mounts the image read-only, since it would
// free inodes and leave their attributes.

// TypeXattr is the item type of the xattr tree: (ino, 90, name hash, seq).
const TypeXattr uint8 = 90

// TypeXattrChunk is the type of a large value's chunk items: (ino, 91,
// name hash, seq<<16 | index).
const TypeXattrChunk uint8 = 91

const (
	// MaxXattrName bounds an attribute's full name, as XATTR_NAME_MAX.
	MaxXattrName = 255
	// XattrSizeMax is the kernel's XATTR_SIZE_MAX: a larger value is
	// refused with E2BIG.
	XattrSizeMax = 65536
	xattrHeader  = 4
	// MaxXattrPayload bounds name plus value in one item.
	MaxXattrPayload = MaxValueSize - xattrHeader
	// xattrLargeHeader is the header of a large value's head item; the
	// flag marks it in the name length.
	xattrLargeHeader = 8
	xattrLargeFlag   = 0x8000
)

// XattrItem is one extended attribute's item: for a large value (Total
// more than Value holds), its head, whose Value is the first part.
type XattrItem struct {
	Name  string
	Value []byte
	Total int // the whole value's length; len(Value) for an unsplit one
}

// Large reports whether the item is the head of a split value.
func (x XattrItem) Large() bool { return x.Total > len(x.Value) }

// XattrHeadPart is how many bytes of a large value of an attribute named
// name its head item holds.
func XattrHeadPart(name string) int { return MaxValueSize - xattrLargeHeader - len(name) }

// XattrChunks returns the number of chunk items a value of total bytes of
// an attribute named name takes (0 when it fits one item).
func XattrChunks(name string, total int) int {
	if total <= MaxXattrValue(name) {
		return 0
	}
	return (total - XattrHeadPart(name) + MaxValueSize - 1) / MaxValueSize
}

// XattrChunkSpan returns where chunk index (1-based) of a large value of
// total bytes starts in the value, and its length.
func XattrChunkSpan(name string, total, index int) (int, int) {
	at := XattrHeadPart(name) + (index-1)*MaxValueSize
	return at, min(MaxValueSize, total-at)
}

// XattrChunkKey is the key of chunk index of the attribute at key head.
func XattrChunkKey(head Key, index int) Key {
	return Key{Obj: head.Obj, Type: TypeXattrChunk, Off: head.Off, Aux: head.Aux<<16 | uint64(index)}
}

// XattrChunkHead returns the key of the head item of a chunk key, and the
// chunk's index.
func XattrChunkHead(k Key) (Key, int) {
	return Key{Obj: k.Obj, Type: TypeXattr, Off: k.Off, Aux: k.Aux >> 16}, int(k.Aux & 0xffff)
}

// SplitXattr returns the items of attribute name = value: the head (or
// only) item, and the chunk items in index order.
func SplitXattr(name string, value []byte) (head XattrItem, chunks [][]byte) {
	if len(value) <= MaxXattrValue(name) {
		return XattrItem{Name: name, Value: value, Total: len(value)}, nil
	}
	head = XattrItem{Name: name, Value: value[:XattrHeadPart(name)], Total: len(value)}
	for i := 1; i <= XattrChunks(name, len(value)); i++ {
		at, n := XattrChunkSpan(name, len(value), i)
		chunks = append(chunks, value[at:at+n])
	}
	return head, chunks
}

// MaxXattrValue is the largest value an attribute named name can hold.
func MaxXattrValue(name string) int { return MaxXattrPayload - len(name) }

// Encode returns the item's value bytes.
func (x XattrItem) Encode() []byte {
	if x.Large() {
		b := make([]byte, xattrLargeHeader+len(x.Name)+len(x.Value))
		le.PutUint16(b, uint16(len(x.Name))|xattrLargeFlag)
		le.PutUint32(b[4:], uint32(x.Total))
		copy(b[xattrLargeHeader:], x.Name)
		copy(b[xattrLargeHeader+len(x.Name):], x.Value)
		return b
	}
	b := make([]byte, xattrHeader+len(x.Name)+len(x.Value))
	le.PutUint16(b, uint16(len(x.Name)))
	le.PutUint16(b[2:], uint16(len(x.Value)))
	copy(b[xattrHeader:], x.Name)
	copy(b[xattrHeader+len(x.Name):], x.Value)
	return b
}

// DecodeXattrItem decodes an xattr item, bounding every length: a name of
// 1..MaxXattrName bytes without NUL, a value that fills the rest exactly;
// a large value's head must be too large for one item, at most
// XattrSizeMax, and its first part fill the item. The value shares v's
// memory.
func DecodeXattrItem(v []byte) (XattrItem, error) {
	if len(v) < xattrHeader {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr item of %d bytes", len(v))
	}
	n, m := int(le.Uint16(v)), int(le.Uint16(v[2:]))
	hdr, total := xattrHeader, m
	if n&xattrLargeFlag != 0 {
		n &^= xattrLargeFlag
		if len(v) < xattrLargeHeader || m != 0 {
			return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "large xattr head of %d bytes", len(v))
		}
		hdr, total = xattrLargeHeader, int(le.Uint32(v[4:]))
		if n == 0 || n > MaxXattrName || total <= MaxXattrPayload-n || total > XattrSizeMax || len(v) != MaxValueSize {
			return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "large xattr: name of %d bytes, value of %d, head item of %d bytes", n, total, len(v))
		}
		m = len(v) - hdr - n
	} else if n == 0 || n > MaxXattrName || n+m > MaxXattrPayload || xattrHeader+n+m != len(v) {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr name of %d bytes and value of %d in a %d-byte item", n, m, len(v))
	}
	name := v[hdr : hdr+n]
	if bytes.IndexByte(name, 0) >= 0 {
		return XattrItem{}, corrupt(KindBadItem, TreeXattr, 0, "xattr name %q holds a NUL", name)
	}
	return XattrItem{Name: string(name), Value: v[hdr+n : hdr+n+m], Total: total}, nil
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
