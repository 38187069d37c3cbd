package engine

import (
	"encoding/binary"
	"fmt"

	"github.com/scrubd/scrubd/engine/format"
)

// The scrub cursor: where a data scrub has got to, kept in the image so
// that a scrub interrupted by an unmount, a kill or a reboot resumes where
// it stopped. It is one item of the logged_ops tree under the reserved
// operation id 1 (ids NextObjectID hands out start at 256), of kind 3,
// which the logged_ops recovery pass leaves alone: it is not an operation
// for the mount to complete but state for the scrub to read. Only images
// of format 1.2 (IncompatRmapMaps) hold one: a 1.1 build, which would
// refuse the unknown kind, cannot open those anyway.
//
// Two positions: NextIno, of the data scrubs that read file by file in
// inode order (the cursors older builds wrote, 56 bytes), and NextDisk, of
// the scrubs that read the data in disk order (64 bytes, flag DiskOrder).
// Both are read; a resumed run honours both (the blocks of the files
// below NextIno and the blocks below NextDisk are not read again), so an
// old cursor resumes safely.

const (
	scrubCursorID     = 1
	opScrubCursor     = 3
	scrubCursorSizeV1 = 16 + 5*8
	scrubCursorSize   = scrubCursorSizeV1 + 8
	cursorFlagDisk    = 4
)

// ScrubCursor is a data scrub's position.
type ScrubCursor struct {
	// Run identifies the interrupted run: its start, in Unix nanoseconds.
	Run int64
	// Repair and Data are what the run was asked to do.
	Repair, Data bool
	// NextIno is the first inode the data scrub has not verified yet
	// (a cursor of a scrub that read inodes in number order; 0 in a
	// disk-order cursor unless resumed from such a one).
	NextIno uint64
	// DiskOrder says the scrub reads the data in disk order: NextDisk is
	// its position.
	DiskOrder bool
	// NextDisk is the first disk block whose data the scrub has not
	// verified yet (every mapped block below it was, for every file
	// mapping it).
	NextDisk format.BlockNr
	// Verified counts the bytes of file data verified before the
	// position.
	Verified uint64
	// Found counts the findings the run had made so far.
	Found uint64
	// Bad are the data blocks found bad before the position (at most
	// MaxCursorBad are kept), so the resumed run reports them again.
	Bad []BadBlock
}

// BadBlock is a data block that failed its check: the file, the offset in
// it, and the disk block (0 if unknown).
type BadBlock struct {
	Ino, Offset uint64
	Disk        format.BlockNr
}

// MaxCursorBad bounds the bad blocks a cursor keeps.
const MaxCursorBad = 4096

// badPerPart is how many bad blocks one cursor item holds.
const badPerPart = (format.MaxValueSize - 16) / 24

func (c ScrubCursor) encode() []byte {
	v := make([]byte, scrubCursorSize)
	le := binary.LittleEndian
	le.PutUint64(v, opScrubCursor)
	flags := uint64(0)
	if c.Data {
		flags |= 1
	}
	if c.Repair {
		flags |= 2
	}
	if c.DiskOrder {
		flags |= cursorFlagDisk
	}
	le.PutUint64(v[16:], uint64(c.Run))
	le.PutUint64(v[24:], flags)
	le.PutUint64(v[32:], c.NextIno)
	le.PutUint64(v[40:], c.Verified)
	le.PutUint64(v[48:], c.Found)
	le.PutUint64(v[56:], uint64(c.NextDisk))
	return v
}

func decodeScrubCursor(v []byte) (ScrubCursor, error) {
	le := binary.LittleEndian
	if (len(v) != scrubCursorSize && len(v) != scrubCursorSizeV1) || le.Uint64(v) != opScrubCursor {
		return ScrubCursor{}, fmt.Errorf("scrub cursor of %d bytes: %w", len(v), format.ErrCorrupt)
	}
	f := le.Uint64(v[24:])
	known := uint64(3)
	if len(v) == scrubCursorSize {
		known |= cursorFlagDisk
	}
	if f&^known != 0 {
		return ScrubCursor{}, fmt.Errorf("scrub cursor of %d bytes with flags %#x: %w", len(v), f, format.ErrCorrupt)
	}
	c := ScrubCursor{Run: int64(le.Uint64(v[16:])), Data: f&1 != 0, Repair: f&2 != 0, DiskOrder: f&cursorFlagDisk != 0,
		NextIno: le.Uint64(v[32:]), Verified: le.Uint64(v[40:]), Found: le.Uint64(v[48:])}
	if len(v) == scrubCursorSize {
		c.NextDisk = format.BlockNr(le.Uint64(v[56:]))
	}
	if !c.DiskOrder && c.NextDisk != 0 {
		return ScrubCursor{}, fmt.Errorf("scrub cursor with a disk position %d but not in disk order: %w", c.NextDisk, format.ErrCorrupt)
	}
	return c, nil
}

func scrubCursorKey() format.Key { return format.Key{Obj: scrubCursorID, Type: TypeLoggedOp} }

// ErrNoCursorFormat: the image's format cannot hold a scrub cursor (1.1).
var ErrNoCursorFormat = fmt.Errorf("this image's format (1.1) keeps no scrub cursor")

// SetScrubCursor records c in this transaction (replacing any other).
func (tx *Tx) SetScrubCursor(c ScrubCursor) error {
	if tx.e.super.Incompat&format.IncompatRmapMaps == 0 {
		return ErrNoCursorFormat
	}
	if err := tx.ClearScrubCursor(); err != nil {
		return err
	}
	tr, err := tx.Tree(format.TreeLoggedOps)
	if err != nil {
		return err
	}
	if err := tr.Put(scrubCursorKey(), c.encode()); err != nil {
		return err
	}
	bad := c.Bad[:min(len(c.Bad), MaxCursorBad)]
	for part := 1; len(bad) > 0; part++ {
		chunk := bad[:min(len(bad), badPerPart)]
		bad = bad[len(chunk):]
		v := make([]byte, 16+24*len(chunk))
		binary.LittleEndian.PutUint64(v, opScrubCursor)
		for i, b := range chunk {
			binary.LittleEndian.PutUint64(v[16+24*i:], b.Ino)
			binary.LittleEndian.PutUint64(v[24+24*i:], b.Offset)
			binary.LittleEndian.PutUint64(v[32+24*i:], uint64(b.Disk))
		}
		k := scrubCursorKey()
		k.Off = uint64(part)
		if err := tr.Put(k, v); err != nil {
			return err
		}
	}
	return nil
}

// ClearScrubCursor removes the scrub cursor, if any.
func (tx *Tx) ClearScrubCursor() error {
	return tx.DropLoggedOp(scrubCursorID)
}

// ScrubCursor returns the scrub cursor of the last commit, if there is
// one.
func (e *Engine) ScrubCursor() (ScrubCursor, bool, error) {
	s := e.Pin()
	defer s.Release()
	t, ok := s.ScanTree(format.TreeLoggedOps)
	if !ok {
		return ScrubCursor{}, false, nil
	}
	var c ScrubCursor
	var derr error
	found := false
	err := t.Ascend(scrubCursorKey(), func(k format.Key, v []byte) bool {
		if k.Obj != scrubCursorID || k.Type != TypeLoggedOp {
			return false
		}
		if k.Off == 0 {
			c, derr = decodeScrubCursor(v)
			found = derr == nil
			return derr == nil
		}
		if len(v) < 16 || (len(v)-16)%24 != 0 || binary.LittleEndian.Uint64(v) != opScrubCursor {
			derr = fmt.Errorf("scrub cursor part %d of %d bytes: %w", k.Off, len(v), format.ErrCorrupt)
			return false
		}
		for i := 16; i < len(v) && len(c.Bad) < MaxCursorBad; i += 24 {
			c.Bad = append(c.Bad, BadBlock{Ino: binary.LittleEndian.Uint64(v[i:]), Offset: binary.LittleEndian.Uint64(v[i+8:]),
				Disk: format.BlockNr(binary.LittleEndian.Uint64(v[i+16:]))})
		}
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil || !found {
		return ScrubCursor{}, false, err
	}
	return c, true, nil
}
