package format

// Snapshots (format 1.8, IncompatSnapshots).
//
// A snapshot is a subvolume (subvol.go) whose item names its source by
// ParentUUID. It is made in one transaction of fixed size and filled
// afterwards: until its fill ends it reads each inode it has not copied
// yet from its source, and the source copies an inode into it before
// changing it (engine/fs/snapshot.go). The snapshot tree records the fill:
//
//	(snapshot id, TypeSnapFill, 0, 0)        → SnapFillItem
//	(snapshot id, TypeSnapWhiteout, local, 0) → empty
//
// A fill item exists while the snapshot is being filled. A whiteout marks
// an inode the snapshot freed before its fill passed it, so that neither
// the fill nor a change in the source copies it back; whiteouts go with
// the fill item when the fill ends.
const (
	TypeSnapFill     uint8 = 120
	TypeSnapWhiteout uint8 = 121
)

// SnapFillKey is the fill item key of snapshot id.
func SnapFillKey(id uint64) Key { return Key{Obj: id, Type: TypeSnapFill} }

// SnapWhiteoutKey is the whiteout key of local inode number n in snapshot
// id.
func SnapWhiteoutKey(id, n uint64) Key { return Key{Obj: id, Type: TypeSnapWhiteout, Off: n} }

// SnapFillItem is a snapshot's fill in progress.
type SnapFillItem struct {
	// Source is the subvolume the snapshot was taken of.
	Source uint64
	// Limit is the largest local inode number the snapshot can hold from
	// its source: the object id counter's value, less one, when it was
	// taken (every inode made later has a larger number).
	Limit uint64
	// Next is the local inode number the fill goes on from; inodes below
	// it are the snapshot's own or were never its.
	Next uint64
}

// SnapFillItemSize is the encoded size (a fourth word is reserved).
const SnapFillItemSize = 4 * 8

// Encode encodes the item.
func (s *SnapFillItem) Encode() []byte {
	b := make([]byte, SnapFillItemSize)
	le.PutUint64(b[0:], s.Source)
	le.PutUint64(b[8:], s.Limit)
	le.PutUint64(b[16:], s.Next)
	return b
}

// DecodeSnapFillItem decodes a fill item, checking its bounds.
func DecodeSnapFillItem(b []byte) (*SnapFillItem, error) {
	if len(b) != SnapFillItemSize {
		return nil, corrupt(KindBadItem, TreeSnapshot, 0, "snapshot fill item of %d bytes, want %d", len(b), SnapFillItemSize)
	}
	s := &SnapFillItem{Source: le.Uint64(b[0:]), Limit: le.Uint64(b[8:]), Next: le.Uint64(b[16:])}
	if le.Uint64(b[24:]) != 0 {
		return nil, corrupt(KindBadItem, TreeSnapshot, 0, "snapshot fill item: reserved bytes set")
	}
	if s.Source > MaxSubvolID || s.Limit >= 1<<SubvolShift || s.Next > s.Limit+1 {
		return nil, corrupt(KindBadItem, TreeSnapshot, 0, "snapshot fill item out of bounds: source %d, limit %d, next %d", s.Source, s.Limit, s.Next)
	}
	return s, nil
}
