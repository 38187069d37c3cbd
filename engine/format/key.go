package format

import (
	"encoding/binary"
	"fmt"
)

// KeySize is the encoded size of a Key.
const KeySize = 25

// Key orders every item in every tree: by Obj, then Type, then Off, then Aux.
// Keys are encoded big-endian so that byte order equals key order, which lets
// node search compare raw bytes without decoding.
type Key struct {
	Obj  uint64 // object: inode number, disk block, tree id …
	Type uint8  // item type (ItemType)
	Off  uint64 // offset within the object, name hash, owner …
	Aux  uint64 // tie-breaker: owner offset, snapshot id …
}

// MaxKey is greater than or equal to every key.
var MaxKey = Key{Obj: ^uint64(0), Type: ^uint8(0), Off: ^uint64(0), Aux: ^uint64(0)}

// Compare returns -1, 0 or +1.
func (k Key) Compare(o Key) int {
	switch {
	case k.Obj != o.Obj:
		return cmpU64(k.Obj, o.Obj)
	case k.Type != o.Type:
		return cmpU64(uint64(k.Type), uint64(o.Type))
	case k.Off != o.Off:
		return cmpU64(k.Off, o.Off)
	default:
		return cmpU64(k.Aux, o.Aux)
	}
}

// Less reports k < o.
func (k Key) Less(o Key) bool { return k.Compare(o) < 0 }

func cmpU64(a, b uint64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func (k Key) String() string {
	return fmt.Sprintf("(%d %d %d %d)", k.Obj, k.Type, k.Off, k.Aux)
}

// Put encodes k into b[:KeySize].
func (k Key) Put(b []byte) {
	_ = b[KeySize-1]
	binary.BigEndian.PutUint64(b[0:], k.Obj)
	b[8] = k.Type
	binary.BigEndian.PutUint64(b[9:], k.Off)
	binary.BigEndian.PutUint64(b[17:], k.Aux)
}

// Encode returns the encoded key.
func (k Key) Encode() [KeySize]byte {
	var b [KeySize]byte
	k.Put(b[:])
	return b
}

// DecodeKey decodes b[:KeySize]; b must be at least KeySize long.
func DecodeKey(b []byte) Key {
	_ = b[KeySize-1]
	return Key{
		Obj:  binary.BigEndian.Uint64(b[0:]),
		Type: b[8],
		Off:  binary.BigEndian.Uint64(b[9:]),
		Aux:  binary.BigEndian.Uint64(b[17:]),
	}
}
