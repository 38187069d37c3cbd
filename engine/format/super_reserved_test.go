package format

import (
	"errors"
	"fmt"
	"testing"
)

// TestSuperReservedBytes: a non-zero byte in any reserved range, or a label
// not NUL-padded, is rejected with a valid checksum; the encoded
// superblock itself passes.
func TestSuperReservedBytes(t *testing.T) {
	s := &Super{Major: VersionMajor, Minor: 1, Block: 0, Gen: 5, BlockSize: BlockSize, TotalBlocks: 4096,
		FreeBlocks: 100, Root: RootPtr{Block: 20, Gen: 5}, NextObjectID: 300, Label: "lbl",
		Devices: []DeviceStats{{ID: 1}}, Errors: []ErrorEntry{{ID: 11, Count: 2, Last: 7}}}
	b := make([]byte, BlockSize)
	s.Encode(b)
	if _, err := DecodeSuper(b, 0); err != nil {
		t.Fatalf("encoded superblock rejected: %v", err)
	}
	var offs []int
	for _, r := range superReserved(len(s.Devices), len(s.Errors)) {
		offs = append(offs, r[0], r[1]-1)
	}
	offs = append(offs, 192+10) // inside the label's padding, after its NUL
	for _, off := range offs {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			c := append([]byte(nil), b...)
			c[off] = 0x5a
			le.PutUint32(c[8:], blockChecksum(c, 8))
			_, err := DecodeSuper(c, 0)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d set: %v", off, err)
			}
		})
	}
}
