package format

import (
	"bytes"
	"encoding/binary"
)

// Metadata block layout (every tree node, on the image and on an xfile):
//
//	off  size  field
//	  0     4  magic "SCRN"
//	  4     4  crc32c of the block with this field zero
//	  8    16  filesystem UUID
//	 24     8  own block number
//	 32     8  generation that wrote the block
//	 40     8  owning tree id
//	 48     1  level (0 = leaf)
//	 49     1  flags (reserved, 0)
//	 50     2  number of items
//	 52    12  reserved, 0
//	 64        items
//
// A leaf's items are an array of item headers {key[25], value offset u16,
// value length u16} growing up from offset 64, and their values packed at the
// end of the block growing down: item 0's value ends at BlockSize and item i's
// value ends where item i-1's begins. An interior node's items are pointers
// {key[25], child block u64, child generation u64}. Key i of a node is <= every
// key in child i and > every key in child i-1. Integers are little-endian;
// keys big-endian (see Key).
const (
	HeaderSize   = 64
	LeafItemSize = KeySize + 4
	PtrSize      = KeySize + 16
	// Capacity is the room for items in a block.
	Capacity = BlockSize - HeaderSize
	// MaxPtrs is the number of child pointers an interior node holds.
	MaxPtrs = Capacity / PtrSize
	// MaxValueSize bounds a value so that any full leaf can always be split
	// into two halves that each take one more largest item.
	MaxValueSize = 1024
	// MaxLeafItems bounds the item count of a leaf (empty values).
	MaxLeafItems = Capacity / LeafItemSize
	// MaxLevel bounds tree height; far above what any image needs.
	MaxLevel = 16
)

var nodeMagic = [4]byte{'S', 'C', 'R', 'N'}

const (
	offCsum    = 4
	offFSID    = 8
	offBlock   = 24
	offGen     = 32
	offOwner   = 40
	offLevel   = 48
	offFlags   = 49
	offNrItems = 50
)

// Node is a view of one metadata block. Methods assume the block passed
// VerifyNode (or was built by these methods); they never read out of bounds
// on a verified block.
type Node []byte

// InitNode formats b as an empty node.
func InitNode(b []byte, fsid FSID, block BlockNr, gen Gen, owner TreeID, level int) Node {
	n := Node(b[:BlockSize])
	clear(n)
	copy(n[0:4], nodeMagic[:])
	copy(n[offFSID:offFSID+16], fsid[:])
	n.SetBlock(block)
	n.SetGen(gen)
	le.PutUint64(n[offOwner:], uint64(owner))
	n[offLevel] = byte(level)
	return n
}

func (n Node) Block() BlockNr     { return BlockNr(le.Uint64(n[offBlock:])) }
func (n Node) Gen() Gen           { return Gen(le.Uint64(n[offGen:])) }
func (n Node) Owner() TreeID      { return TreeID(le.Uint64(n[offOwner:])) }
func (n Node) Level() int         { return int(n[offLevel]) }
func (n Node) IsLeaf() bool       { return n[offLevel] == 0 }
func (n Node) NrItems() int       { return int(le.Uint16(n[offNrItems:])) }
func (n Node) SetBlock(b BlockNr) { le.PutUint64(n[offBlock:], uint64(b)) }
func (n Node) SetGen(g Gen)       { le.PutUint64(n[offGen:], uint64(g)) }
func (n Node) SetOwner(t TreeID)  { le.PutUint64(n[offOwner:], uint64(t)) }
func (n Node) setNrItems(c int)   { le.PutUint16(n[offNrItems:], uint16(c)) }
func (n Node) FSID() (u FSID)     { copy(u[:], n[offFSID:offFSID+16]); return u }

// Seal computes and stores the block checksum; call it last before writing.
func (n Node) Seal() { le.PutUint32(n[offCsum:], blockChecksum(n, offCsum)) }

// Checksum returns the stored checksum.
func (n Node) Checksum() uint32 { return le.Uint32(n[offCsum:]) }

func (n Node) itemOff(i int) int { return HeaderSize + i*LeafItemSize }
func (n Node) ptrOff(i int) int  { return HeaderSize + i*PtrSize }

// RawKey returns the encoded key of item or pointer i.
func (n Node) RawKey(i int) []byte {
	if n.IsLeaf() {
		o := n.itemOff(i)
		return n[o : o+KeySize]
	}
	o := n.ptrOff(i)
	return n[o : o+KeySize]
}

// Key returns the key of item or pointer i.
func (n Node) Key(i int) Key { return DecodeKey(n.RawKey(i)) }

// SetKey overwrites key i (interior nodes: fixing a low key).
func (n Node) SetKey(i int, k Key) { k.Put(n.RawKey(i)) }

// Search returns the first index whose key is >= k, and whether it is equal.
func (n Node) Search(k Key) (int, bool) {
	kb := k.Encode()
	// Most comparisons are decided by the first 8 bytes (the object), so
	// compare them as one big-endian integer before the rest.
	head := k.Obj
	rest := kb[8:]
	lo, hi := 0, n.NrItems()
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		rk := n.RawKey(m)
		var c int
		if h := binary.BigEndian.Uint64(rk); h != head {
			if h < head {
				c = -1
			} else {
				c = 1
			}
		} else {
			c = bytes.Compare(rk[8:], rest)
		}
		if c < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < n.NrItems() && bytes.Equal(n.RawKey(lo), kb[:])
}

// ChildSlot returns the index of the child of an interior node whose range
// holds k: the last pointer with key <= k, or 0 if k is below them all.
func (n Node) ChildSlot(k Key) int {
	i, eq := n.Search(k)
	if eq {
		return i
	}
	if i == 0 {
		return 0
	}
	return i - 1
}

// --- leaves ---

func (n Node) valOff(i int) int { return int(le.Uint16(n[n.itemOff(i)+KeySize:])) }
func (n Node) valLen(i int) int { return int(le.Uint16(n[n.itemOff(i)+KeySize+2:])) }

// Value returns the value of leaf item i (a slice of the block).
func (n Node) Value(i int) []byte {
	o := n.valOff(i)
	return n[o : o+n.valLen(i)]
}

// dataStart is where the lowest value begins.
func (n Node) dataStart() int {
	c := n.NrItems()
	if c == 0 {
		return BlockSize
	}
	return n.valOff(c - 1)
}

// LeafUsed is the number of bytes the items of a leaf occupy.
func (n Node) LeafUsed() int {
	return n.NrItems()*LeafItemSize + (BlockSize - n.dataStart())
}

// LeafFree is the room left in a leaf.
func (n Node) LeafFree() int { return Capacity - n.LeafUsed() }

// ItemSize is the room one item with a value of vlen bytes takes.
func ItemSize(vlen int) int { return LeafItemSize + vlen }

// InsertItem makes room for an item at index i with a value of vlen bytes,
// stores the key, and returns the value's bytes for the caller to fill. The
// caller has checked LeafFree() >= ItemSize(vlen).
func (n Node) InsertItem(i int, k Key, vlen int) []byte {
	c := n.NrItems()
	ds := n.dataStart()
	end := BlockSize // where item i's value must end
	if i > 0 {
		end = n.valOff(i - 1)
	}
	// Values of items i..c-1 live in [ds, end): slide them down by vlen.
	copy(n[ds-vlen:end-vlen], n[ds:end])
	for j := i; j < c; j++ {
		o := n.itemOff(j) + KeySize
		le.PutUint16(n[o:], uint16(n.valOff(j)-vlen))
	}
	// Slide item headers i..c-1 up by one.
	copy(n[n.itemOff(i+1):n.itemOff(c+1)], n[n.itemOff(i):n.itemOff(c)])
	o := n.itemOff(i)
	k.Put(n[o:])
	le.PutUint16(n[o+KeySize:], uint16(end-vlen))
	le.PutUint16(n[o+KeySize+2:], uint16(vlen))
	n.setNrItems(c + 1)
	return n[end-vlen : end]
}

// DeleteItem removes leaf item i.
func (n Node) DeleteItem(i int) {
	c := n.NrItems()
	ds := n.dataStart()
	vlen := n.valLen(i)
	vo := n.valOff(i)
	// Values of items i+1..c-1 live in [ds, vo): slide them up by vlen.
	copy(n[ds+vlen:vo+vlen], n[ds:vo])
	for j := i + 1; j < c; j++ {
		o := n.itemOff(j) + KeySize
		le.PutUint16(n[o:], uint16(n.valOff(j)+vlen))
	}
	copy(n[n.itemOff(i):], n[n.itemOff(i+1):n.itemOff(c)])
	n.setNrItems(c - 1)
	clear(n[n.itemOff(c-1):n.itemOff(c)])
	clear(n[ds : ds+vlen])
}

// TruncateItems keeps the first c items of a leaf or interior node.
func (n Node) TruncateItems(c int) {
	for n.NrItems() > c {
		if n.IsLeaf() {
			n.DeleteItem(n.NrItems() - 1)
		} else {
			n.DeletePtr(n.NrItems() - 1)
		}
	}
}

// --- interior nodes ---

// Child returns child pointer i.
func (n Node) Child(i int) (BlockNr, Gen) {
	o := n.ptrOff(i) + KeySize
	return BlockNr(le.Uint64(n[o:])), Gen(le.Uint64(n[o+8:]))
}

// SetChild overwrites the block and generation of pointer i.
func (n Node) SetChild(i int, b BlockNr, g Gen) {
	o := n.ptrOff(i) + KeySize
	le.PutUint64(n[o:], uint64(b))
	le.PutUint64(n[o+8:], uint64(g))
}

// InsertPtr inserts a pointer at index i; the caller checked NrItems() < MaxPtrs.
func (n Node) InsertPtr(i int, k Key, b BlockNr, g Gen) {
	c := n.NrItems()
	copy(n[n.ptrOff(i+1):n.ptrOff(c+1)], n[n.ptrOff(i):n.ptrOff(c)])
	k.Put(n[n.ptrOff(i):])
	n.setNrItems(c + 1)
	n.SetChild(i, b, g)
}

// DeletePtr removes pointer i.
func (n Node) DeletePtr(i int) {
	c := n.NrItems()
	copy(n[n.ptrOff(i):], n[n.ptrOff(i+1):n.ptrOff(c)])
	n.setNrItems(c - 1)
	clear(n[n.ptrOff(c-1):n.ptrOff(c)])
}

// --- verification ---

// Expect is what the reader of a block knows about it from the pointer it
// followed. Gen 0 and Level -1 mean "not known".
type Expect struct {
	FSID  FSID
	Block BlockNr
	Tree  TreeID
	Gen   Gen
	Level int
}

// VerifyHeader checks magic, checksum and header fields of a block against
// what its parent implies, classifying the first problem found. It bounds
// nothing beyond the header; VerifyNode checks the layout too.
func VerifyHeader(b []byte, x Expect) error {
	if len(b) != BlockSize {
		return corrupt(KindBadLayout, x.Tree, x.Block, "block is %d bytes, want %d", len(b), BlockSize)
	}
	n := Node(b)
	if !bytes.Equal(n[0:4], nodeMagic[:]) {
		return corrupt(KindBadMagic, x.Tree, x.Block, "magic %q", n[0:4])
	}
	if got, want := n.Checksum(), blockChecksum(n, offCsum); got != want {
		return corrupt(KindBadChecksum, x.Tree, x.Block, "stored crc32c %#08x, computed %#08x", got, want)
	}
	if n.FSID() != x.FSID {
		return corrupt(KindWrongFS, x.Tree, x.Block, "filesystem %s, want %s", n.FSID(), x.FSID)
	}
	if n.Block() != x.Block {
		return corrupt(KindMisdirected, x.Tree, x.Block, "header says block %d", n.Block())
	}
	if n.Owner() != x.Tree {
		return corrupt(KindWrongOwner, x.Tree, x.Block, "header says owner %s", n.Owner())
	}
	if x.Gen != 0 && n.Gen() != x.Gen {
		return corrupt(KindStale, x.Tree, x.Block, "generation %d, parent expects %d", n.Gen(), x.Gen)
	}
	if n.Level() > MaxLevel || (x.Level >= 0 && n.Level() != x.Level) {
		return corrupt(KindBadLevel, x.Tree, x.Block, "level %d, expected %d", n.Level(), x.Level)
	}
	return nil
}

// MatchHeader checks that a node already verified once (a cached copy)
// is the one a pointer expects: block number, owner, generation and level.
// It skips the checksum, which VerifyHeader computed when the node was read.
func MatchHeader(n Node, x Expect) error {
	switch {
	case n.Block() != x.Block:
		return corrupt(KindMisdirected, x.Tree, x.Block, "header says block %d", n.Block())
	case n.Owner() != x.Tree:
		return corrupt(KindWrongOwner, x.Tree, x.Block, "header says owner %s", n.Owner())
	case x.Gen != 0 && n.Gen() != x.Gen:
		return corrupt(KindStale, x.Tree, x.Block, "generation %d, parent expects %d", n.Gen(), x.Gen)
	case x.Level >= 0 && n.Level() != x.Level:
		return corrupt(KindBadLevel, x.Tree, x.Block, "level %d, expected %d", n.Level(), x.Level)
	}
	return nil
}

// VerifyNode checks the header (see VerifyHeader) and the layout: the item
// count, every value offset and length, and strict key order. After it
// passes, every Node accessor stays within the block.
func VerifyNode(b []byte, x Expect) error {
	if err := VerifyHeader(b, x); err != nil {
		return err
	}
	return VerifyLayout(Node(b), x.Tree, x.Block)
}

// VerifyLayout checks the item layout and key order of a node whose header
// is known to be sane.
func VerifyLayout(n Node, tree TreeID, block BlockNr) error {
	if len(n) != BlockSize || n.Level() > MaxLevel {
		return corrupt(KindBadLayout, tree, block, "not a node")
	}
	c := n.NrItems()
	if n.IsLeaf() {
		if c > MaxLeafItems {
			return corrupt(KindBadLayout, tree, block, "%d items exceed leaf capacity", c)
		}
		end := BlockSize
		itemsEnd := HeaderSize + c*LeafItemSize
		for i := 0; i < c; i++ {
			o := HeaderSize + i*LeafItemSize + KeySize
			off, l := int(le.Uint16(n[o:])), int(le.Uint16(n[o+2:]))
			if l > MaxValueSize || off+l != end || off < itemsEnd {
				return corrupt(KindBadLayout, tree, block, "item %d value [%d,+%d) misplaced (want end %d, items end %d)", i, off, l, end, itemsEnd)
			}
			end = off
		}
	} else {
		if c == 0 || c > MaxPtrs {
			return corrupt(KindBadLayout, tree, block, "interior node with %d pointers", c)
		}
	}
	for i := 1; i < c; i++ {
		if bytes.Compare(n.RawKey(i-1), n.RawKey(i)) >= 0 {
			return corrupt(KindKeyOrder, tree, block, "key %d %s not above key %d %s", i, n.Key(i), i-1, n.Key(i-1))
		}
	}
	return nil
}
