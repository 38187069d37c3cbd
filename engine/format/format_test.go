package format

import (
	"errors"
	"testing"
)

func TestSuperRoundTripAndFeatures(t *testing.T) {
	s := &Super{Major: VersionMajor, Minor: 3, FSID: FSID{9}, Block: 16, Gen: 7, BlockSize: BlockSize,
		TotalBlocks: 5000, FreeBlocks: 100, Root: RootPtr{Block: 40, Gen: 7, Level: 1},
		RecoveryPasses: 5, Label: "data", NextObjectID: 300,
		Devices: []DeviceStats{{ID: 1, ReadErrors: 2}}, Errors: []ErrorEntry{{ID: 11, Count: 3, Last: 99}}}
	s.ErrorsSilent[0] = 1 << 11
	b := make([]byte, BlockSize)
	s.Encode(b)
	got, err := DecodeSuper(b, 16)
	if err != nil {
		t.Fatal(err)
	}
	if got.Gen != 7 || got.Label != "data" || got.Errors[0] != s.Errors[0] || got.Devices[0] != s.Devices[0] || !got.Silent(11) || got.Silent(12) {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := DecodeSuper(b, 0); err == nil {
		t.Fatal("copy read from the wrong block accepted")
	}
	b[100] ^= 1
	if _, err := DecodeSuper(b, 16); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: %v", err)
	}
	s.Incompat = 1 << 40
	if err := s.CheckFeatures(true); err == nil {
		t.Fatal("unknown incompat feature accepted")
	}
	s.Incompat, s.RoCompat = 0, 1<<3
	if err := s.CheckFeatures(false); err == nil {
		t.Fatal("unknown ro-compat feature accepted for writing")
	}
	if err := s.CheckFeatures(true); err != nil {
		t.Fatalf("unknown ro-compat feature refused read-only: %v", err)
	}
}

func TestVerifyClassifies(t *testing.T) {
	x := Expect{FSID: FSID{1}, Block: 7, Tree: TreeInode, Gen: 3, Level: 0}
	cases := []struct {
		name string
		mut  func(n Node)
		x    func(x *Expect)
		kind Kind
	}{
		{"checksum", func(n Node) { n[200] ^= 1 }, nil, KindBadChecksum},
		{"magic", func(n Node) { n[0] = 'X'; n.Seal() }, nil, KindBadMagic},
		{"misdirected", nil, func(x *Expect) { x.Block = 8 }, KindMisdirected},
		{"owner", nil, func(x *Expect) { x.Tree = TreeRmap }, KindWrongOwner},
		{"stale", nil, func(x *Expect) { x.Gen = 4 }, KindStale},
		{"level", nil, func(x *Expect) { x.Level = 1 }, KindBadLevel},
		{"fs", nil, func(x *Expect) { x.FSID = FSID{2} }, KindWrongFS},
		{"layout", func(n Node) { le.PutUint16(n[HeaderSize+KeySize:], 10); n.Seal() }, nil, KindBadLayout},
		{"order", func(n Node) { Key{Obj: 99}.Put(n.RawKey(0)); n.Seal() }, nil, KindKeyOrder},
	}
	for _, c := range cases {
		b := validLeaf()
		xx := x
		if c.mut != nil {
			c.mut(Node(b))
		}
		if c.x != nil {
			c.x(&xx)
		}
		err := VerifyNode(b, xx)
		ce, ok := AsCorrupt(err)
		if !ok || ce.Kind != c.kind || !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want kind %s", c.name, err, c.kind)
		}
	}
	if err := VerifyNode(validLeaf(), x); err != nil {
		t.Fatal(err)
	}
}

func TestSuperLogChain(t *testing.T) {
	s := &Super{Major: VersionMajor, Minor: 1, Block: 0, Gen: 9, BlockSize: BlockSize,
		TotalBlocks: 5000, Root: RootPtr{Block: 40, Gen: 9}, Log: RootPtr{Block: 12, Gen: 2}}
	// Format 1.0: the log starts at the head, tagged with the generation.
	if start, seq, tag := s.LogChain(); start != 12 || seq != 1 || tag != 9 {
		t.Fatalf("1.0 log chain: %d %d %d", start, seq, tag)
	}
	s.Incompat = IncompatLogChain
	s.LogStart, s.LogSeq, s.LogTag = 700, 33, 0xfeed
	b := make([]byte, BlockSize)
	s.Encode(b)
	got, err := DecodeSuper(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.CheckFeatures(false); err != nil {
		t.Fatalf("log chain feature refused: %v", err)
	}
	if start, seq, tag := got.LogChain(); start != 700 || seq != 33 || tag != 0xfeed {
		t.Fatalf("1.1 log chain after round trip: %d %d %d", start, seq, tag)
	}
	for _, bad := range []func(*Super){
		func(s *Super) { s.LogStart = 5000 },
		func(s *Super) { s.LogStart = 0 },
		func(s *Super) { s.LogSeq = 0 },
		func(s *Super) { s.LogTag = 0 },
	} {
		c := *s
		bad(&c)
		c.Encode(b)
		if _, err := DecodeSuper(b, 0); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("log chain %d %d %d accepted: %v", c.LogStart, c.LogSeq, c.LogTag, err)
		}
	}
}

func TestRmapItemSizes(t *testing.T) {
	for _, c := range []struct {
		v    []byte
		ok   bool
		name string
	}{
		{RmapItem{Len: 8}.Encode(), true, "unmapped"},
		{RmapItem{Len: 8, Offset: 2, Count: 6}.Encode(), true, "mapped to the end"},
		{RmapItem{Len: 8, Offset: 0, Count: 9}.Encode(), false, "count past the end"},
		{RmapItem{Len: 8, Offset: 8, Count: 1}.Encode(), false, "offset at the end"},
		{RmapItem{Len: 8, Offset: 1<<64 - 1, Count: 2}.Encode(), false, "offset wraps"},
		{append(RmapItem{Len: 8}.Encode(), make([]byte, 16)...), false, "mapped, count 0"},
		{make([]byte, 16), false, "16 bytes"},
		{nil, false, "empty"},
	} {
		_, err := DecodeRmapItem(c.v)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrCorrupt)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if n := len(RmapItem{Len: 3, Count: 3}.Encode()); n != RmapMappedItemSize {
		t.Errorf("mapped record of %d bytes", n)
	}
}
