package format

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// Subvolumes (format 1.7, IncompatSubvols).
//
// A subvolume is a directory tree with its own inode space: the top 24
// bits of an inode number name the subvolume (0 is the top level, the
// tree the image was made with), the low 40 bits come from the image's
// object id counter. A subvolume's root directory is inode
// SubvolRootIno(id) and appears in its parent subvolume as an ordinary
// directory entry. The inode, directory, extent and xattr trees hold every
// subvolume's items, so everything that reads them by inode number works
// unchanged; what is a subvolume's own lives in two trees:
//
//	subvol tree  (id, TypeSubvolItem, 0, 0)           → SubvolItem
//	uuid tree    (uuid[0:8], TypeUUIDSubvol, uuid[8:16], id)   → empty
//	             (uuid[0:8], TypeUUIDReceived, uuid[8:16], id) → empty
//
// The uuid tree is the btrfs one: an index from a subvolume's own UUID,
// and from its received UUID, to the subvolume's id, so a lookup by UUID
// is one descent. It holds nothing the subvolume items do not: it can be
// rebuilt from them at any time (repair/subvol_repair.go).
const (
	TypeSubvolItem   uint8 = 100
	TypeUUIDSubvol   uint8 = 110
	TypeUUIDReceived uint8 = 111

	// SubvolShift: an inode number's subvolume is ino >> SubvolShift.
	SubvolShift = 40
	// MaxSubvolID is the largest subvolume id.
	MaxSubvolID = 1<<(64-SubvolShift) - 1
	// subvolRootLocal is a subvolume root's inode number within its
	// subvolume (the top level's root is 256 too).
	subvolRootLocal = 256
)

// SubvolOf returns the subvolume inode ino belongs to.
func SubvolOf(ino uint64) uint64 { return ino >> SubvolShift }

// LocalIno returns ino's number within its subvolume.
func LocalIno(ino uint64) uint64 { return ino & (1<<SubvolShift - 1) }

// SubvolIno returns the inode number of local number n in subvolume id.
func SubvolIno(id, n uint64) uint64 { return id<<SubvolShift | n }

// SubvolRootIno returns the inode number of subvolume id's root directory.
func SubvolRootIno(id uint64) uint64 { return SubvolIno(id, subvolRootLocal) }

// IsSubvolRoot reports whether ino is the root of a subvolume other than
// the top level.
func IsSubvolRoot(ino uint64) bool {
	return SubvolOf(ino) != 0 && LocalIno(ino) == subvolRootLocal
}

// SubvolKey is subvolume id's item key.
func SubvolKey(id uint64) Key { return Key{Obj: id, Type: TypeSubvolItem} }

// UUID is a subvolume's 16-byte identifier.
type UUID [16]byte

// IsZero reports whether u is unset.
func (u UUID) IsZero() bool { return u == UUID{} }

// String formats u as 8-4-4-4-12 hex digits.
func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ParseUUID reads a UUID, with or without its dashes.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 32 {
		return u, fmt.Errorf("uuid %q: want 32 hex digits", s)
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("uuid %q: %v", s, err)
	}
	return u, nil
}

// UUIDKey is the uuid tree's key mapping u (typ: TypeUUIDSubvol or
// TypeUUIDReceived) to subvolume id.
func UUIDKey(u UUID, typ uint8, id uint64) Key {
	return Key{Obj: le.Uint64(u[0:8]), Type: typ, Off: le.Uint64(u[8:16]), Aux: id}
}

// UUIDOfKey returns the UUID a uuid tree key maps.
func UUIDOfKey(k Key) UUID {
	var u UUID
	le.PutUint64(u[0:8], k.Obj)
	le.PutUint64(u[8:16], k.Off)
	return u
}

// Subvolume flags.
const (
	// SubvolReadOnly: nothing in the subvolume may change.
	SubvolReadOnly uint64 = 1 << 0
	// SubvolDeleting: the subvolume was deleted; its directory entry is
	// gone and the background reaper frees its inodes (the subvol_reap
	// recovery pass resumes it after a crash). Its item and UUIDs go last.
	SubvolDeleting uint64 = 1 << 1
	// SubvolFilling (format 1.8): a snapshot whose fill is under way
	// (snapshot.go). Its fill item in the snapshot tree says where the
	// fill is; this flag and FillLimit let a repair make that item again.
	SubvolFilling uint64 = 1 << 2

	subvolKnownFlags = SubvolReadOnly | SubvolDeleting | SubvolFilling
)

// SubvolItem describes one subvolume.
type SubvolItem struct {
	Flags        uint64
	CTransID     uint64 // the generation that created it
	UUID         UUID
	ParentUUID   UUID // the subvolume it is a snapshot of (zero: none)
	ReceivedUUID UUID // set by a receive (zero: none)
	CTime        Timespec
	// ReapNext is where the reaper goes on (inode number), while
	// SubvolDeleting is set.
	ReapNext uint64
	// FillLimit (format 1.8; reserved, 0, before): for a snapshot, the
	// largest local inode number it can hold from its source (the fill
	// item's Limit, kept here too).
	FillLimit uint64
}

// SubvolItemSize is the encoded size. (The directory a subvolume's root
// is linked in is its root inode's Parent, as for any directory.)
const SubvolItemSize = 4*8 + 3*16 + 12

// Encode encodes the item.
func (s *SubvolItem) Encode() []byte {
	b := make([]byte, SubvolItemSize)
	le.PutUint64(b[0:], s.Flags)
	le.PutUint64(b[8:], s.FillLimit)
	le.PutUint64(b[16:], s.CTransID)
	le.PutUint64(b[24:], s.ReapNext)
	copy(b[32:], s.UUID[:])
	copy(b[48:], s.ParentUUID[:])
	copy(b[64:], s.ReceivedUUID[:])
	putTime(b[80:], s.CTime)
	return b
}

// DecodeSubvolItem decodes a subvolume item.
func DecodeSubvolItem(b []byte) (*SubvolItem, error) {
	if len(b) != SubvolItemSize {
		return nil, corrupt(KindBadItem, TreeSubvol, 0, "subvolume item of %d bytes, want %d", len(b), SubvolItemSize)
	}
	s := &SubvolItem{Flags: le.Uint64(b[0:]), FillLimit: le.Uint64(b[8:]), CTransID: le.Uint64(b[16:]),
		ReapNext: le.Uint64(b[24:]), CTime: getTime(b[80:])}
	copy(s.UUID[:], b[32:])
	copy(s.ParentUUID[:], b[48:])
	copy(s.ReceivedUUID[:], b[64:])
	if s.Flags&^subvolKnownFlags != 0 {
		return nil, corrupt(KindBadItem, TreeSubvol, 0, "subvolume item: unknown flags %#x", s.Flags&^subvolKnownFlags)
	}
	if s.UUID.IsZero() {
		return nil, corrupt(KindBadItem, TreeSubvol, 0, "subvolume item: no uuid")
	}
	if s.FillLimit >= 1<<SubvolShift || s.FillLimit != 0 && s.ParentUUID.IsZero() || s.Flags&SubvolFilling != 0 && s.ParentUUID.IsZero() {
		return nil, corrupt(KindBadItem, TreeSubvol, 0, "subvolume item: a fill limit or filling flag without a parent uuid, or a limit out of range")
	}
	return s, nil
}
