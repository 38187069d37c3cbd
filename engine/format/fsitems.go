package format

import "fmt"

// Filesystem item types (in the inode, dir, extent, csum and deleted trees).
const (
	TypeInodeItem  uint8 = 40 // inode tree: (ino, 40, 0, 0) → InodeItem
	TypeSymlink    uint8 = 45 // inode tree: (ino, 45, 0, 0) → target bytes; long targets: see SymlinkChunkKey
	TypeDirEntry   uint8 = 50 // dir tree: (dir, 50, name hash, seq) → DirEntry
	TypeDirIndex   uint8 = 51 // dir tree: (dir, 51, index, 0) → DirEntry
	TypeFileExtent uint8 = 60 // extent tree: (ino, 60, file block, 0) → FileExtent
	TypeCsum       uint8 = 70 // csum tree: (disk start, 70, 0, 0) → crc32c per block
	TypeDeleted    uint8 = 80 // deleted tree: (ino, 80, 0, 0) → empty
	MaxNameLen           = 255
	// MaxSymlinkLen is the longest symlink target (PATH_MAX less the
	// terminating NUL, as ext4, XFS and tmpfs allow).
	MaxSymlinkLen = 4095
	// MaxSymlinkItem is the most target bytes one item holds: a target
	// longer than that is split into chunks (SymlinkChunkKey), a format
	// 1.5 feature (IncompatLongSymlinks).
	MaxSymlinkItem = 900
	// MaxExtentBlocks bounds a data extent so that its csum item (4 bytes a
	// block) fits in a value with room to spare for a log record header.
	MaxExtentBlocks = 224
)

// Timespec is a time with nanoseconds.
type Timespec struct {
	Sec  int64
	Nsec uint32
}

// InodeItem is an inode.
type InodeItem struct {
	Mode       uint32
	UID, GID   uint32
	Nlink      uint32
	Size       uint64
	Blocks     uint64 // data blocks referenced
	Rdev       uint64
	Flags      uint64
	Generation uint64 // transaction that created it
	Parent     uint64 // directories: the parent directory
	NextIndex  uint64 // directories: next directory index
	Atime      Timespec
	Mtime      Timespec
	Ctime      Timespec
	Btime      Timespec
}

const InodeItemSize = 16 + 7*8 + 4*12

func putTime(b []byte, t Timespec) {
	le.PutUint64(b, uint64(t.Sec))
	le.PutUint32(b[8:], t.Nsec)
}

func getTime(b []byte) Timespec {
	return Timespec{Sec: int64(le.Uint64(b)), Nsec: le.Uint32(b[8:])}
}

func (in *InodeItem) Encode() []byte {
	b := make([]byte, InodeItemSize)
	in.Put(b)
	return b
}

// Put encodes into b[:InodeItemSize].
func (in *InodeItem) Put(b []byte) {
	le.PutUint32(b[0:], in.Mode)
	le.PutUint32(b[4:], in.UID)
	le.PutUint32(b[8:], in.GID)
	le.PutUint32(b[12:], in.Nlink)
	for i, v := range []uint64{in.Size, in.Blocks, in.Rdev, in.Flags, in.Generation, in.Parent, in.NextIndex} {
		le.PutUint64(b[16+8*i:], v)
	}
	for i, t := range []Timespec{in.Atime, in.Mtime, in.Ctime, in.Btime} {
		putTime(b[72+12*i:], t)
	}
}

func DecodeInodeItem(v []byte) (InodeItem, error) {
	if len(v) != InodeItemSize {
		return InodeItem{}, corrupt(KindBadItem, TreeInode, 0, "inode item of %d bytes, want %d", len(v), InodeItemSize)
	}
	in := InodeItem{Mode: le.Uint32(v), UID: le.Uint32(v[4:]), GID: le.Uint32(v[8:]), Nlink: le.Uint32(v[12:])}
	ptrs := []*uint64{&in.Size, &in.Blocks, &in.Rdev, &in.Flags, &in.Generation, &in.Parent, &in.NextIndex}
	for i, p := range ptrs {
		*p = le.Uint64(v[16+8*i:])
	}
	for i, p := range []*Timespec{&in.Atime, &in.Mtime, &in.Ctime, &in.Btime} {
		*p = getTime(v[72+12*i:])
	}
	if in.Size > 1<<62 || in.Atime.Nsec >= 1e9 || in.Mtime.Nsec >= 1e9 || in.Ctime.Nsec >= 1e9 || in.Btime.Nsec >= 1e9 {
		return InodeItem{}, corrupt(KindBadItem, TreeInode, 0, "inode item fields out of range (size %d)", in.Size)
	}
	return in, nil
}

// DirEntry is a directory entry: under its name hash and under its index.
type DirEntry struct {
	Ino   uint64
	Type  uint8 // file type, as the S_IFMT bits >> 12
	Index uint64
	Name  string
}

func (d DirEntry) Encode() []byte {
	b := make([]byte, 19+len(d.Name))
	le.PutUint64(b, d.Ino)
	b[8] = d.Type
	le.PutUint64(b[9:], d.Index)
	le.PutUint16(b[17:], uint16(len(d.Name)))
	copy(b[19:], d.Name)
	return b
}

func DecodeDirEntry(v []byte) (DirEntry, error) {
	if len(v) < 19 {
		return DirEntry{}, corrupt(KindBadItem, TreeDir, 0, "directory entry of %d bytes", len(v))
	}
	n := int(le.Uint16(v[17:]))
	if n == 0 || n > MaxNameLen || 19+n != len(v) {
		return DirEntry{}, corrupt(KindBadItem, TreeDir, 0, "directory entry name of %d bytes in a %d-byte item", n, len(v))
	}
	d := DirEntry{Ino: le.Uint64(v), Type: v[8], Index: le.Uint64(v[9:]), Name: string(v[19:])}
	if d.Ino == 0 {
		return DirEntry{}, corrupt(KindBadItem, TreeDir, 0, "directory entry %q for inode 0", d.Name)
	}
	return d, nil
}

// FileExtent maps Count blocks of a file, starting at the item's file
// block, to blocks Offset… of the disk extent [Start, Start+Len).
type FileExtent struct {
	Start  BlockNr
	Len    uint64
	Offset uint64
	Count  uint64
	Flags  uint64
}

const FileExtentSize = 40

func (f FileExtent) Encode() []byte {
	b := make([]byte, FileExtentSize)
	le.PutUint64(b, uint64(f.Start))
	le.PutUint64(b[8:], f.Len)
	le.PutUint64(b[16:], f.Offset)
	le.PutUint64(b[24:], f.Count)
	le.PutUint64(b[32:], f.Flags)
	return b
}

func DecodeFileExtent(v []byte) (FileExtent, error) {
	if len(v) != FileExtentSize {
		return FileExtent{}, corrupt(KindBadItem, TreeExtent, 0, "file extent of %d bytes, want %d", len(v), FileExtentSize)
	}
	f := FileExtent{Start: BlockNr(le.Uint64(v)), Len: le.Uint64(v[8:]), Offset: le.Uint64(v[16:]), Count: le.Uint64(v[24:]), Flags: le.Uint64(v[32:])}
	if f.Len == 0 || f.Len > MaxExtentBlocks || f.Count == 0 || f.Offset+f.Count > f.Len || f.Start == 0 {
		return FileExtent{}, corrupt(KindBadItem, TreeExtent, 0, "file extent %+v out of range", f)
	}
	return f, nil
}

// Disk returns the disk block holding file block fb of an extent whose item
// is at file block at.
func (f FileExtent) Disk(at, fb uint64) BlockNr {
	return f.Start + BlockNr(f.Offset+fb-at)
}

// DecodeCsums checks a csum item's value: one crc32c per block.
func DecodeCsums(v []byte) ([]byte, error) {
	if len(v) == 0 || len(v)%4 != 0 || len(v)/4 > MaxExtentBlocks {
		return nil, corrupt(KindBadItem, TreeCsum, 0, "checksum item of %d bytes", len(v))
	}
	return v, nil
}

// CsumAt returns checksum i of a decoded csum item.
func CsumAt(v []byte, i uint64) uint32 { return le.Uint32(v[4*i:]) }

// PutCsum stores checksum c at index i.
func PutCsum(v []byte, i uint64, c uint32) { le.PutUint32(v[4*i:], c) }

// InodeKey and friends build the keys of filesystem items.
func InodeKey(ino uint64) Key   { return Key{Obj: ino, Type: TypeInodeItem} }
func SymlinkKey(ino uint64) Key { return Key{Obj: ino, Type: TypeSymlink} }
func DirEntryKey(dir, hash, seq uint64) Key {
	return Key{Obj: dir, Type: TypeDirEntry, Off: hash, Aux: seq}
}
func DirIndexKey(dir, index uint64) Key { return Key{Obj: dir, Type: TypeDirIndex, Off: index} }
func FileExtentKey(ino, fb uint64) Key  { return Key{Obj: ino, Type: TypeFileExtent, Off: fb} }
func CsumKey(start BlockNr) Key         { return Key{Obj: uint64(start), Type: TypeCsum} }
func DeletedKey(ino uint64) Key         { return Key{Obj: ino, Type: TypeDeleted} }

func (f FileExtent) String() string {
	return fmt.Sprintf("disk %d+%d [%d,+%d)", f.Start, f.Len, f.Offset, f.Count)
}

// Symlink targets.
//
// A target of up to MaxSymlinkItem bytes is one item, (ino, TypeSymlink,
// 0, 0), as in every format. A longer one (up to MaxSymlinkLen) is split
// into chunks of MaxSymlinkItem bytes, the last one shorter: the chunk
// at byte offset off is the item (ino, TypeSymlink, off, total), where
// total is the whole target's length. So every chunk bounds itself — its
// offset is a multiple of MaxSymlinkItem below total, its length
// min(MaxSymlinkItem, total-off) — and a set of chunks is complete when
// their lengths add up to total. Chunks with a non-zero Aux exist only
// on images with IncompatLongSymlinks.

// SymlinkChunkKey is the key of the chunk of a total-byte target at byte
// offset off (a target of up to MaxSymlinkItem bytes: SymlinkKey).
func SymlinkChunkKey(ino, off, total uint64) Key {
	if total <= MaxSymlinkItem {
		return SymlinkKey(ino)
	}
	return Key{Obj: ino, Type: TypeSymlink, Off: off, Aux: total}
}

// SymlinkTotal returns the length of the whole target a symlink item
// with key k and a value of n bytes belongs to, or an error if the item
// breaks the chunk layout.
func SymlinkTotal(k Key, n int) (uint64, error) {
	if k.Type != TypeSymlink {
		return 0, corrupt(KindBadItem, TreeInode, 0, "item %s is not a symlink target", k)
	}
	if k.Aux == 0 {
		if k.Off != 0 || n == 0 || n > MaxSymlinkItem {
			return 0, corrupt(KindBadItem, TreeInode, 0, "symlink target item %s of %d bytes", k, n)
		}
		return uint64(n), nil
	}
	total, off := k.Aux, k.Off
	if total <= MaxSymlinkItem || total > MaxSymlinkLen || off%MaxSymlinkItem != 0 || off >= total ||
		uint64(n) != min(MaxSymlinkItem, total-off) {
		return 0, corrupt(KindBadItem, TreeInode, 0, "symlink target chunk %s of %d bytes", k, n)
	}
	return total, nil
}

// SplitSymlink returns the items that hold target: keys and values.
func SplitSymlink(ino uint64, target []byte) ([]Key, [][]byte) {
	total := uint64(len(target))
	var ks []Key
	var vs [][]byte
	for off := uint64(0); off < total; off += MaxSymlinkItem {
		end := min(off+MaxSymlinkItem, total)
		ks = append(ks, SymlinkChunkKey(ino, off, total))
		vs = append(vs, target[off:end])
	}
	return ks, vs
}
