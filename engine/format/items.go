package format

// Item types (Key.Type). Values are fixed per type; each has an encoder and a
// bounded decoder.
const (
	TypeRootItem   uint8 = 1  // root tree: (tree id, 1, 0, 0) → RootItem
	TypeExtentItem uint8 = 10 // alloc tree: (start block, 10, length, 0) → ExtentItem
	TypeRmapTree   uint8 = 20 // rmap tree: (start block, 20, owner tree id, 0) → RmapItem
	TypeRmapInode  uint8 = 21 // rmap tree: (start block, 21, inode, file block) → RmapItem
	TypeFreeExtent uint8 = 30 // free tree: (start block, 30, length, 0) → empty
)

// RootItem records where a tree lives. Items counts the tree's leaf items.
type RootItem struct {
	Root  RootPtr
	Items uint64
	Flags uint64
}

const RootItemSize = 40

func (r RootItem) Encode() []byte {
	b := make([]byte, RootItemSize)
	putRootPtr(b, r.Root)
	le.PutUint64(b[24:], r.Items)
	le.PutUint64(b[32:], r.Flags)
	return b
}

// DecodeRootItem decodes a root item; the caller bounds Root.Block against
// the device.
func DecodeRootItem(v []byte) (RootItem, error) {
	if len(v) != RootItemSize {
		return RootItem{}, corrupt(KindBadItem, TreeRoot, 0, "root item of %d bytes, want %d", len(v), RootItemSize)
	}
	r := RootItem{Root: getRootPtr(v), Items: le.Uint64(v[24:]), Flags: le.Uint64(v[32:])}
	if r.Root.Level > MaxLevel {
		return RootItem{}, corrupt(KindBadItem, TreeRoot, 0, "root item level %d", r.Root.Level)
	}
	return r, nil
}

// Extent flags in ExtentItem.Flags.
const (
	ExtentMeta uint64 = 1 // tree blocks and superblocks
	ExtentData uint64 = 2 // file data
)

// ExtentItem is an allocated extent: its reference count and kind.
type ExtentItem struct {
	Refs  uint64
	Flags uint64
}

const ExtentItemSize = 16

func (e ExtentItem) Encode() []byte {
	b := make([]byte, ExtentItemSize)
	le.PutUint64(b, e.Refs)
	le.PutUint64(b[8:], e.Flags)
	return b
}

func DecodeExtentItem(v []byte) (ExtentItem, error) {
	if len(v) != ExtentItemSize {
		return ExtentItem{}, corrupt(KindBadItem, TreeAlloc, 0, "extent item of %d bytes, want %d", len(v), ExtentItemSize)
	}
	e := ExtentItem{Refs: le.Uint64(v), Flags: le.Uint64(v[8:])}
	if e.Refs == 0 || (e.Flags != ExtentMeta && e.Flags != ExtentData) {
		return ExtentItem{}, corrupt(KindBadItem, TreeAlloc, 0, "extent item refs %d flags %#x", e.Refs, e.Flags)
	}
	return e, nil
}

// RmapItem is the value of a reverse mapping: the extent's length in
// blocks and, for a file's reference on an image with IncompatRmapMaps, the
// part of the extent the file maps there (Count blocks from block Offset of
// the extent: the file extent item's own Offset and Count). A record with
// its mapping names everything the file extent item holds, so the extent
// tree can be rebuilt from the rmap tree.
type RmapItem struct {
	Len    uint64
	Offset uint64 // first mapped block within the extent (mapped records)
	Count  uint64 // mapped blocks; 0: the record carries no mapping
}

const (
	RmapItemSize       = 8  // a record without its mapping
	RmapMappedItemSize = 24 // a record with it
)

// Mapped reports whether the record carries the mapped range.
func (r RmapItem) Mapped() bool { return r.Count != 0 }

// Encode encodes the record: 24 bytes when it carries a mapping, else 8.
func (r RmapItem) Encode() []byte {
	return r.AppendTo(make([]byte, 0, RmapMappedItemSize))
}

// AppendTo appends the record's encoding to b.
func (r RmapItem) AppendTo(b []byte) []byte {
	b = le.AppendUint64(b, r.Len)
	if r.Mapped() {
		b = le.AppendUint64(b, r.Offset)
		b = le.AppendUint64(b, r.Count)
	}
	return b
}

func DecodeRmapItem(v []byte) (RmapItem, error) {
	if len(v) != RmapItemSize && len(v) != RmapMappedItemSize {
		return RmapItem{}, corrupt(KindBadItem, TreeRmap, 0, "rmap item of %d bytes, want %d or %d", len(v), RmapItemSize, RmapMappedItemSize)
	}
	r := RmapItem{Len: le.Uint64(v)}
	if r.Len == 0 || r.Len > 1<<48 {
		return RmapItem{}, corrupt(KindBadItem, TreeRmap, 0, "rmap length %d", r.Len)
	}
	if len(v) == RmapMappedItemSize {
		r.Offset, r.Count = le.Uint64(v[8:]), le.Uint64(v[16:])
		if r.Count == 0 || r.Offset >= r.Len || r.Count > r.Len-r.Offset {
			return RmapItem{}, corrupt(KindBadItem, TreeRmap, 0, "rmap mapping [%d,+%d) of a %d-block extent", r.Offset, r.Count, r.Len)
		}
	}
	return r, nil
}

// RootKey is the root-tree key of tree id.
func RootKey(id TreeID) Key { return Key{Obj: uint64(id), Type: TypeRootItem} }

// ExtentKey is the alloc-tree key of an extent.
func ExtentKey(start BlockNr, n uint64) Key {
	return Key{Obj: uint64(start), Type: TypeExtentItem, Off: n}
}

// FreeKey is the free-tree key of a free extent.
func FreeKey(start BlockNr, n uint64) Key {
	return Key{Obj: uint64(start), Type: TypeFreeExtent, Off: n}
}

// Owner names who references an extent: a tree (metadata) or an inode at a
// file block (data).
type Owner struct {
	Tree   TreeID // set for metadata
	Inode  uint64 // set for data
	Offset uint64 // file block of the extent's first block (data)
}

func (o Owner) IsData() bool { return o.Tree == 0 }

func (o Owner) String() string {
	if o.IsData() {
		return "inode " + itoa(o.Inode) + " block " + itoa(o.Offset)
	}
	return "tree " + o.Tree.String()
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// RmapKey is the rmap-tree key of an extent starting at start owned by o.
func RmapKey(start BlockNr, o Owner) Key {
	if o.IsData() {
		return Key{Obj: uint64(start), Type: TypeRmapInode, Off: o.Inode, Aux: o.Offset}
	}
	return Key{Obj: uint64(start), Type: TypeRmapTree, Off: uint64(o.Tree)}
}

// RmapOwner decodes the owner from an rmap key.
func RmapOwner(k Key) (Owner, bool) {
	switch k.Type {
	case TypeRmapTree:
		return Owner{Tree: TreeID(k.Off)}, k.Off != 0 && k.Aux == 0
	case TypeRmapInode:
		return Owner{Inode: k.Off, Offset: k.Aux}, k.Off != 0
	}
	return Owner{}, false
}
