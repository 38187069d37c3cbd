package format

import "bytes"

// Log blocks (the fsync log; see docs/format.md "Fsync log").
//
// A log block has the node layout of a leaf, with magic "SCRL", owner
// TreeLog, level 0, and in the header's reserved bytes:
//
//	52  4  sequence number within the chain
//	56  1  flags: bit 0 = last block of an fsync group
//	57  7  reserved, 0
//	64 …   items, as in a leaf
//
// Item 0 of every log block is the chain pointer: key (0, TypeLogNext, next
// block, 0) with an empty value, naming the block the next log block will
// be written to (allocated before this one is written, so one flush makes a
// record durable). The generation field holds the chain's tag; a block
// whose tag or sequence number is not the one expected is not part of the
// current log (Super.LogChain says where the log starts).
var logMagic = [4]byte{'S', 'C', 'R', 'L'}

// LogFlagGroupEnd marks the last block of one fsync's records.
const LogFlagGroupEnd = 1

// TypeLogNext is the key type of a log block's chain pointer item, and
// TypeLogRecord that of a record: key (position, TypeLogRecord, 0, 0), value
// = tree id (u64) + the record's key (25 bytes) + the record's value.
const (
	TypeLogNext   uint8 = 0xF0
	TypeLogRecord uint8 = 0xF1
	// LogRecordOverhead is what a record adds to its value.
	LogRecordOverhead = 8 + KeySize
)

// EncodeLogRecord builds a record's value.
func EncodeLogRecord(tree TreeID, k Key, v []byte) []byte {
	b := make([]byte, LogRecordOverhead+len(v))
	le.PutUint64(b, uint64(tree))
	k.Put(b[8:])
	copy(b[LogRecordOverhead:], v)
	return b
}

// DecodeLogRecord splits a record's value.
func DecodeLogRecord(b []byte) (TreeID, Key, []byte, error) {
	if len(b) < LogRecordOverhead {
		return 0, Key{}, nil, corrupt(KindBadItem, TreeLog, 0, "log record of %d bytes", len(b))
	}
	return TreeID(le.Uint64(b)), DecodeKey(b[8:]), b[LogRecordOverhead:], nil
}

// InitLogBlock formats b as an empty log block.
func InitLogBlock(b []byte, fsid FSID, block BlockNr, gen Gen, seq uint32, next BlockNr) Node {
	n := InitNode(b, fsid, block, gen, TreeLog, 0)
	copy(n[0:4], logMagic[:])
	le.PutUint32(n[52:], seq)
	n.InsertItem(0, Key{Type: TypeLogNext, Off: uint64(next)}, 0)
	return n
}

// LogSeq returns a log block's sequence number.
func (n Node) LogSeq() uint32 { return le.Uint32(n[52:]) }

// LogFlags returns a log block's flags.
func (n Node) LogFlags() uint8 { return n[56] }

// SetLogFlags sets a log block's flags.
func (n Node) SetLogFlags(f uint8) { n[56] = f }

// LogNext returns the block the next log block goes to.
func (n Node) LogNext() BlockNr { return BlockNr(n.Key(0).Off) }

// IsLogBlock says whether b carries the log block magic.
func IsLogBlock(b []byte) bool { return len(b) >= 4 && bytes.Equal(b[0:4], logMagic[:]) }

// SealedLogBlock says whether a log block's checksum verifies.
func SealedLogBlock(n Node) bool {
	return len(n) == BlockSize && n.Checksum() == blockChecksum(n, offCsum)
}

// VerifyLogBlock checks a log block read from block at, which must carry
// the chain's tag gen and sequence number seq.
func VerifyLogBlock(b []byte, fsid FSID, at BlockNr, gen Gen, seq uint32, total uint64) error {
	if len(b) != BlockSize {
		return corrupt(KindBadLayout, TreeLog, at, "log block of %d bytes", len(b))
	}
	n := Node(b)
	if !bytes.Equal(n[0:4], logMagic[:]) {
		return corrupt(KindBadMagic, TreeLog, at, "magic %q", n[0:4])
	}
	if got, want := n.Checksum(), blockChecksum(n, offCsum); got != want {
		return corrupt(KindBadChecksum, TreeLog, at, "stored crc32c %#08x, computed %#08x", got, want)
	}
	switch {
	case n.FSID() != fsid:
		return corrupt(KindWrongFS, TreeLog, at, "filesystem %s", n.FSID())
	case n.Block() != at:
		return corrupt(KindMisdirected, TreeLog, at, "header says block %d", n.Block())
	case n.Owner() != TreeLog:
		return corrupt(KindWrongOwner, TreeLog, at, "owner %s", n.Owner())
	case n.Gen() != gen:
		return corrupt(KindStale, TreeLog, at, "log tag %d, chain %d", n.Gen(), gen)
	case n.Level() != 0:
		return corrupt(KindBadLevel, TreeLog, at, "level %d", n.Level())
	case n.LogSeq() != seq:
		return corrupt(KindStale, TreeLog, at, "sequence %d, expected %d", n.LogSeq(), seq)
	}
	if err := VerifyLayout(n, TreeLog, at); err != nil {
		return err
	}
	if n.NrItems() == 0 || n.Key(0).Type != TypeLogNext || n.Key(0).Obj != 0 || n.LogNext() >= BlockNr(total) {
		return corrupt(KindBadItem, TreeLog, at, "log block without a valid chain pointer")
	}
	return nil
}
