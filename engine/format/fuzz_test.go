package format

import (
	"bytes"
	"errors"
	"testing"
)

// Every decoder gets arbitrary bytes and must return a value or a named
// error, never panic; what it accepts must re-encode to the same meaning.

func FuzzDecodeSuper(f *testing.F) {
	s := &Super{Major: VersionMajor, BlockSize: BlockSize, TotalBlocks: MinBlocks, Gen: 3,
		Root: RootPtr{Block: 5, Gen: 2}, Devices: []DeviceStats{{ID: 1}}, Errors: []ErrorEntry{{ID: 11, Count: 2}}}
	b := make([]byte, BlockSize)
	s.Encode(b)
	f.Add(b, uint64(0))
	// Format 1.3: with root backups.
	s.Minor, s.Incompat = 3, IncompatRootBackups
	s.Backups[3] = testBackup(3)
	b = make([]byte, BlockSize)
	s.Encode(b)
	f.Add(b, uint64(0))
	f.Add(make([]byte, BlockSize), uint64(16))
	f.Add([]byte("short"), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, at uint64) {
		s, err := DecodeSuper(b, BlockNr(at))
		if err != nil {
			if _, ok := AsCorrupt(err); !ok {
				t.Fatalf("error %v is not a CorruptError", err)
			}
			return
		}
		out := make([]byte, BlockSize)
		s.Encode(out)
		s2, err := DecodeSuper(out, BlockNr(at))
		if err != nil {
			t.Fatalf("re-encoded superblock does not decode: %v", err)
		}
		if s2.Gen != s.Gen || s2.Root != s.Root || len(s2.Errors) != len(s.Errors) || s2.FSID != s.FSID || s2.Backups != s.Backups {
			t.Fatalf("round trip changed the superblock")
		}
		_ = s.CheckFeatures(false)
	})
}

func validLeaf() []byte {
	b := make([]byte, BlockSize)
	n := InitNode(b, FSID{1}, 7, 3, TreeInode, 0)
	for i := 0; i < 5; i++ {
		copy(n.InsertItem(i, Key{Obj: uint64(i)}, i*3), "abcdefghijklmnop")
	}
	n.Seal()
	return b
}

func validInterior() []byte {
	b := make([]byte, BlockSize)
	n := InitNode(b, FSID{1}, 7, 3, TreeInode, 1)
	for i := 0; i < 5; i++ {
		n.InsertPtr(i, Key{Obj: uint64(i * 10)}, BlockNr(100+i), 2)
	}
	n.Seal()
	return b
}

func FuzzVerifyNode(f *testing.F) {
	f.Add(validLeaf())
	f.Add(validInterior())
	f.Add(make([]byte, BlockSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != BlockSize {
			b = append(b, make([]byte, max(0, BlockSize-len(b)))...)[:BlockSize]
		}
		n := Node(b)
		n.Seal() // let the fuzzer reach past the checksum
		err := VerifyNode(b, Expect{FSID: n.FSID(), Block: n.Block(), Tree: n.Owner(), Gen: n.Gen(), Level: -1})
		if err != nil {
			if _, ok := AsCorrupt(err); !ok {
				t.Fatalf("error %v is not a CorruptError", err)
			}
			return
		}
		// A verified node must be safe to use through every accessor.
		for i := 0; i < n.NrItems(); i++ {
			_ = n.Key(i)
			if n.IsLeaf() {
				_ = n.Value(i)
			} else {
				_, _ = n.Child(i)
			}
		}
		n.Search(Key{Obj: 3})
		if n.IsLeaf() {
			_ = n.LeafFree()
			if n.NrItems() > 0 {
				n.DeleteItem(0)
			}
			if n.LeafFree() >= ItemSize(4) {
				n.InsertItem(0, Key{}, 4)
			}
		} else {
			n.ChildSlot(Key{Obj: 3})
		}
	})
}

func FuzzDecodeRootItem(f *testing.F) {
	f.Add(RootItem{Root: RootPtr{Block: 9, Gen: 2, Level: 1}, Items: 4}.Encode())
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := DecodeRootItem(v)
		if err != nil {
			return
		}
		if r2, err := DecodeRootItem(r.Encode()); err != nil || r2 != r {
			t.Fatalf("round trip: %v %v", r2, err)
		}
	})
}

func FuzzDecodeExtentItem(f *testing.F) {
	f.Add(ExtentItem{Refs: 1, Flags: ExtentMeta}.Encode())
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := DecodeExtentItem(v)
		if err != nil {
			return
		}
		if e2, err := DecodeExtentItem(e.Encode()); err != nil || e2 != e {
			t.Fatalf("round trip: %v %v", e2, err)
		}
	})
}

func FuzzDecodeRmapItem(f *testing.F) {
	f.Add(RmapItem{Len: 3}.Encode())
	f.Add(RmapItem{Len: 16, Offset: 10, Count: 6}.Encode())
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := DecodeRmapItem(v)
		if err != nil {
			return
		}
		if r.Mapped() && (r.Offset+r.Count > r.Len || r.Offset+r.Count < r.Offset) {
			t.Fatalf("accepted mapping %+v", r)
		}
		if r2, err := DecodeRmapItem(r.Encode()); err != nil || r2 != r || len(r.Encode()) != len(v) {
			t.Fatalf("round trip: %v %v", r2, err)
		}
	})
}

func FuzzDecodeKey(f *testing.F) {
	k := Key{Obj: 1, Type: 2, Off: 3, Aux: 4}.Encode()
	f.Add(k[:], k[:])
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if len(a) < KeySize || len(b) < KeySize {
			return
		}
		ka, kb := DecodeKey(a), DecodeKey(b)
		if ka.Encode() != [KeySize]byte(a[:KeySize]) {
			t.Fatal("key round trip")
		}
		// Byte order equals key order.
		ea, eb := ka.Encode(), kb.Encode()
		if cmpBytes(ea[:], eb[:]) != ka.Compare(kb) {
			t.Fatalf("order of %s and %s differs from byte order", ka, kb)
		}
		if o, ok := RmapOwner(ka); ok {
			_ = o.String()
		}
	})
}

func cmpBytes(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func FuzzDecodeSubvolItem(f *testing.F) {
	f.Add((&SubvolItem{Flags: SubvolDeleting, CTransID: 7, UUID: UUID{1, 2}, ReceivedUUID: UUID{3}, ReapNext: 1 << 40}).Encode())
	f.Add(make([]byte, SubvolItemSize))
	f.Fuzz(func(t *testing.T, v []byte) {
		s, err := DecodeSubvolItem(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not corruption", err)
			}
			return
		}
		enc := s.Encode()
		if !bytes.Equal(enc, v) {
			t.Fatalf("round trip: %x, was %x", enc, v)
		}
		if s.UUID.IsZero() || s.Flags&^(SubvolReadOnly|SubvolDeleting|SubvolFilling) != 0 || s.FillLimit >= 1<<SubvolShift {
			t.Fatalf("accepted %+v", s)
		}
	})
}

func FuzzDecodeSnapFillItem(f *testing.F) {
	f.Add((&SnapFillItem{Source: 3, Limit: 1000, Next: 257}).Encode())
	f.Add(make([]byte, SnapFillItemSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, v []byte) {
		s, err := DecodeSnapFillItem(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not corruption", err)
			}
			return
		}
		if enc := s.Encode(); !bytes.Equal(enc, v) {
			t.Fatalf("round trip: %x, was %x", enc, v)
		}
		if s.Source > MaxSubvolID || s.Limit >= 1<<SubvolShift || s.Next > s.Limit+1 {
			t.Fatalf("accepted %+v", s)
		}
	})
}

func FuzzParseUUID(f *testing.F) {
	f.Add("2b6f0c1e-8d3a-4b8e-9f4e-5a1d2c3b4a59")
	f.Add("2b6f0c1e8d3a4b8e9f4e5a1d2c3b4a59")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUUID(s)
		if err != nil {
			return
		}
		if u2, err := ParseUUID(u.String()); err != nil || u2 != u {
			t.Fatalf("round trip of %q: %v %v", s, u2, err)
		}
	})
}
