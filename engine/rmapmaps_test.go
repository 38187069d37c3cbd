package engine

import (
	"context"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// A file's rmap record carries the part of the extent its file extent item
// maps (format 1.2), follows the item when its range changes (RemapRef),
// and the check compares the two. Format 1.1 images keep 8-byte records.

const mapIno = 300

// openFormat makes and opens an image of format 1.2, or 1.1 if legacy; the
// full self-check runs when the test ends.
func openFormat(t *testing.T, legacy bool) *Engine {
	t.Helper()
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{NoRmapMaps: legacy}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Sync(); err != nil {
			t.Errorf("final sync: %v", err)
		}
		mustCheck(t, e)
		e.Close()
	})
	return e
}

// putItem writes the file extent item of mapIno at file block fb.
func putItem(tx *Tx, fb uint64, fe format.FileExtent) error {
	etr, err := tx.Tree(format.TreeExtent)
	if err != nil {
		return err
	}
	return etr.Put(format.FileExtentKey(mapIno, fb), fe.Encode())
}

// rmapRecord reads the committed rmap record of mapIno at fb for the extent
// at start, and its encoded size.
func rmapRecord(t *testing.T, e *Engine, start format.BlockNr, fb uint64) (format.RmapItem, int) {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	rt, _ := s.ScanTree(format.TreeRmap)
	var it format.RmapItem
	n := 0
	ok, err := rt.Lookup(format.RmapKey(start, format.Owner{Inode: mapIno, Offset: fb}), func(v []byte) {
		n = len(v)
		var derr error
		if it, derr = format.DecodeRmapItem(v); derr != nil {
			t.Errorf("decode: %v", derr)
		}
	})
	if err != nil || !ok {
		t.Fatalf("rmap record of inode %d block %d at %d: found %v, %v", mapIno, fb, start, ok, err)
	}
	return it, n
}

func checkIDs(t *testing.T, e *Engine) []ErrorID {
	t.Helper()
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	defer s.Release()
	var ids []ErrorID
	if _, err := s.Check(context.Background(), func(f Finding) { ids = append(ids, f.ID) }); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestRmapRecordsCarryMappings(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "format1.2"
		if legacy {
			name = "format1.1"
		}
		t.Run(name, func(t *testing.T) {
			e := openFormat(t, legacy)
			wantSize, wantMinor := format.RmapMappedItemSize, uint16(format.VersionMinor)
			if legacy {
				wantSize, wantMinor = format.RmapItemSize, 1
			}
			if got := e.Pin(); got.Super().Minor != wantMinor {
				got.Release()
				t.Fatalf("minor version %d, want %d", got.Super().Minor, wantMinor)
			} else {
				got.Release()
			}
			var start format.BlockNr
			// A new extent: its record maps all of it.
			if err := e.Update(func(tx *Tx) error {
				var err error
				if start, err = tx.AllocExtent(16, format.Owner{Inode: mapIno}); err != nil {
					return err
				}
				ctr, err := tx.Tree(format.TreeCsum)
				if err != nil {
					return err
				}
				if err := ctr.Put(format.CsumKey(start), make([]byte, 4*16)); err != nil {
					return err
				}
				return putItem(tx, 0, format.FileExtent{Start: start, Len: 16, Count: 16})
			}); err != nil {
				t.Fatal(err)
			}
			if ids := checkIDs(t, e); len(ids) != 0 {
				t.Fatalf("findings %v", ids)
			}
			it, n := rmapRecord(t, e, start, 0)
			if n != wantSize || (!legacy && (it.Offset != 0 || it.Count != 16)) || it.Len != 16 {
				t.Fatalf("record %+v of %d bytes", it, n)
			}
			// Split in the middle in one transaction: the left part is
			// cut short (remap), the right part is a new reference.
			if err := e.Update(func(tx *Tx) error {
				left := format.FileExtent{Start: start, Len: 16, Count: 4}
				right := format.FileExtent{Start: start, Len: 16, Offset: 10, Count: 6}
				if err := putItem(tx, 0, left); err != nil {
					return err
				}
				tx.RemapRef(format.Owner{Inode: mapIno}, left)
				if err := putItem(tx, 10, right); err != nil {
					return err
				}
				tx.AddRef(format.Owner{Inode: mapIno, Offset: 10}, right)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if ids := checkIDs(t, e); len(ids) != 0 {
				t.Fatalf("findings after the split %v", ids)
			}
			if !legacy {
				if it, _ := rmapRecord(t, e, start, 0); it.Offset != 0 || it.Count != 4 {
					t.Fatalf("left record %+v", it)
				}
				if it, _ := rmapRecord(t, e, start, 10); it.Offset != 10 || it.Count != 6 {
					t.Fatalf("right record %+v", it)
				}
			}
			// The item moves its head: dropped and added again under the
			// same key in one transaction, the record is rewritten.
			if err := e.Update(func(tx *Tx) error {
				if err := tx.DropRef(start, 16, format.Owner{Inode: mapIno, Offset: 10}); err != nil {
					return err
				}
				moved := format.FileExtent{Start: start, Len: 16, Offset: 11, Count: 5}
				if err := putItem(tx, 10, moved); err != nil {
					return err
				}
				tx.AddRef(format.Owner{Inode: mapIno, Offset: 10}, moved)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if ids := checkIDs(t, e); len(ids) != 0 {
				t.Fatalf("findings after the move %v", ids)
			}
			if it, _ := rmapRecord(t, e, start, 10); !legacy && (it.Offset != 11 || it.Count != 5) {
				t.Fatalf("moved record %+v", it)
			}
			// An item changed without its record: on format 1.2 the
			// check names the mismatch; format 1.1 cannot see it.
			if err := e.Update(func(tx *Tx) error {
				return putItem(tx, 0, format.FileExtent{Start: start, Len: 16, Count: 3})
			}); err != nil {
				t.Fatal(err)
			}
			ids := checkIDs(t, e)
			if legacy {
				if len(ids) != 0 {
					t.Fatalf("format 1.1 findings %v", ids)
				}
			} else if len(ids) != 1 || ids[0] != ErrRmapMapping {
				t.Fatalf("findings %v, want exactly %v", ids, ErrRmapMapping)
			}
			// Put it right again so the final check passes.
			if err := e.Update(func(tx *Tx) error {
				fe := format.FileExtent{Start: start, Len: 16, Count: 3}
				tx.RemapRef(format.Owner{Inode: mapIno}, fe)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
