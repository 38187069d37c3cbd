package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// BlockSize is the size of every block on the image, metadata and data alike.
const BlockSize = 4096

// Version of the on-disk format this code writes. A different major version is
// refused; a newer minor version is accepted (it only adds optional fields).
const (
	VersionMajor = 1
	VersionMinor = 8
)

// BlockNr is a block number on the image (byte offset / BlockSize).
type BlockNr uint64

// Gen is a transaction generation. Generation 1 is written by mkfs; every
// commit writes the next one.
type Gen uint64

// TreeID names a tree. Tree ids are also the owners of metadata blocks in the
// reverse-mapping and allocation trees.
type TreeID uint64

// The trees. Ids that this version does not know are kept in the root tree and
// their blocks stay allocated, but their items are not interpreted.
const (
	TreeRoot      TreeID = 1  // tree id → root item
	TreeAlloc     TreeID = 2  // allocated extents and their reference counts
	TreeRmap      TreeID = 3  // disk extent → owner (tree id, or inode + offset)
	TreeFree      TreeID = 4  // free extents
	TreeInode     TreeID = 5  // inode items
	TreeDir       TreeID = 6  // directory entries (by name hash, and by index)
	TreeExtent    TreeID = 7  // file extents: (inode, file offset) → disk extent
	TreeCsum      TreeID = 8  // crc32c per 4 KiB data block
	TreeSubvol    TreeID = 9  // subvolumes
	TreeSnapshot  TreeID = 10 // snapshots
	TreeUUID      TreeID = 11 // subvolume UUID → subvolume id
	TreeDeleted   TreeID = 12 // inodes unlinked but still open
	TreeLoggedOps TreeID = 13 // multi-transaction operations to resume
	TreeLog       TreeID = 14 // owner of the fsync log blocks (not in the root tree)
	TreeXattr     TreeID = 15 // extended attributes, created on first use (xattr.go)

	// OwnerSuper owns the superblock copies in the allocation and rmap trees.
	OwnerSuper TreeID = 0xFFFF_FFFF_FFFF_FF00
	// OwnerData names file data in findings (a data block that fails its
	// checksum); no tree or record on disk uses it.
	OwnerData TreeID = 0xFFFF_FFFF_FFFF_FF01
)

// KnownTrees lists the trees this version creates and interprets, in order.
var KnownTrees = []TreeID{
	TreeRoot, TreeAlloc, TreeRmap, TreeFree, TreeInode, TreeDir, TreeExtent,
	TreeCsum, TreeSubvol, TreeSnapshot, TreeUUID, TreeDeleted, TreeLoggedOps,
}

var treeNames = map[TreeID]string{
	TreeRoot: "root", TreeAlloc: "alloc", TreeRmap: "rmap", TreeFree: "free",
	TreeInode: "inode", TreeDir: "dir", TreeExtent: "extent", TreeCsum: "csum",
	TreeSubvol: "subvol", TreeSnapshot: "snapshot", TreeUUID: "uuid",
	TreeDeleted: "deleted", TreeLoggedOps: "logged_ops", TreeLog: "log", TreeXattr: "xattr", OwnerSuper: "super", OwnerData: "data",
}

// String returns the tree's name, or "tree-N" for an unknown id.
func (id TreeID) String() string {
	if n, ok := treeNames[id]; ok {
		return n
	}
	return fmt.Sprintf("tree-%d", uint64(id))
}

// TreeByName returns the id of a tree named by String.
func TreeByName(name string) (TreeID, bool) {
	for id, n := range treeNames {
		if n == name && id != OwnerSuper && id != OwnerData {
			return id, true
		}
	}
	return 0, false
}

// FSID is a filesystem UUID.
type FSID [16]byte

func (u FSID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the crc32c (Castagnoli) of p.
func Checksum(p []byte) uint32 { return crc32.Checksum(p, crcTable) }

// blockChecksum is the crc32c of a block with its 4-byte checksum field at
// csumOff treated as zero.
var zero4 [4]byte

func blockChecksum(b []byte, csumOff int) uint32 {
	c := crc32.Update(0, crcTable, b[:csumOff])
	c = crc32.Update(c, crcTable, zero4[:])
	return crc32.Update(c, crcTable, b[csumOff+4:])
}

var le = binary.LittleEndian

// ErrCorrupt is the one corruption sentinel: every error caused by bad on-disk
// data wraps it, so callers classify with errors.Is(err, ErrCorrupt).
var ErrCorrupt = errors.New("corrupt metadata")

// ErrNotFilesystem says a device or file holds no scrubd filesystem at all:
// no superblock copy is valid (a foreign or truncated image, every copy
// destroyed, a device too small). It is an operational error, not damage a
// repair could fix: fsck and scrub exit 8 for it, as e2fsck does for "not
// an ext2 filesystem". Errors that wrap it may wrap ErrCorrupt too.
var ErrNotFilesystem = errors.New("not a scrubd filesystem")

// Corruption kinds: what exactly is wrong with a block. They are stable names
// that findings and reports carry.
type Kind string

const (
	KindBadMagic    Kind = "bad_magic"
	KindBadChecksum Kind = "bad_checksum"
	KindWrongFS     Kind = "wrong_fs"    // block belongs to another filesystem
	KindMisdirected Kind = "misdirected" // header names another block number
	KindWrongOwner  Kind = "wrong_owner" // header names another tree
	KindStale       Kind = "stale"       // generation differs from the parent pointer's
	KindBadLevel    Kind = "bad_level"   // level differs from what the parent implies
	KindBadLayout   Kind = "bad_layout"  // item count, offsets or lengths out of bounds
	KindKeyOrder    Kind = "key_order"   // keys not strictly increasing or outside parent range
	KindBadItem     Kind = "bad_item"    // an item's value does not decode
	KindBadSuper    Kind = "bad_super"   // superblock fields out of range
	KindUnsupported Kind = "unsupported" // a feature or version this code cannot handle
	KindShortRead   Kind = "short_read"  // block lies beyond the end of the device
	KindItemCount   Kind = "item_count"  // root item count differs from the tree
)

// CorruptError describes corrupt on-disk data. It wraps ErrCorrupt.
type CorruptError struct {
	Kind   Kind
	Tree   TreeID
	Block  BlockNr
	Detail string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: tree %s block %d: %s: %s", ErrCorrupt, e.Tree, e.Block, e.Kind, e.Detail)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

func corrupt(kind Kind, tree TreeID, block BlockNr, format string, args ...any) error {
	return &CorruptError{Kind: kind, Tree: tree, Block: block, Detail: fmt.Sprintf(format, args...)}
}

// AsCorrupt returns the CorruptError inside err, if any.
func AsCorrupt(err error) (*CorruptError, bool) {
	var ce *CorruptError
	ok := errors.As(err, &ce)
	return ce, ok
}
