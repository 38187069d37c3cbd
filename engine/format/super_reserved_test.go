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
	for _, backups := range []bool{false, true} {
		t.Run(fmt.Sprint("backups=", backups), func(t *testing.T) { testSuperReservedBytes(t, backups) })
	}
}

func testSuperReservedBytes(t *testing.T, backups bool) {
	s := &Super{Major: VersionMajor, Minor: 1, Block: 0, Gen: 5, BlockSize: BlockSize, TotalBlocks: 4096,
		FreeBlocks: 100, Root: RootPtr{Block: 20, Gen: 5}, NextObjectID: 300, Label: "lbl",
		Devices: []DeviceStats{{ID: 1}}, Errors: []ErrorEntry{{ID: 11, Count: 2, Last: 7}}}
	if backups {
		s.Minor, s.Incompat = 3, IncompatRootBackups
		s.Backups[1] = testBackup(5)
	}
	b := make([]byte, BlockSize)
	s.Encode(b)
	got, err := DecodeSuper(b, 0)
	if err != nil {
		t.Fatalf("encoded superblock rejected: %v", err)
	}
	if d := s.Differs(got); d != "" {
		t.Fatalf("decoded superblock differs in its %s", d)
	}
	var offs []int
	if backups {
		// An unused slot must be zero: its first and last byte.
		offs = append(offs, rootBackupOff, rootBackupOff+rootBackupSize-1)
	}
	for _, r := range superReserved(len(s.Devices), len(s.Errors), backups) {
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

// testBackup is a valid root backup of generation g.
func testBackup(g Gen) RootBackup {
	rb := RootBackup{Gen: g}
	for j := range rb.Roots {
		rb.Roots[j] = RootItem{Root: RootPtr{Block: BlockNr(20 + j), Gen: g, Level: uint8(j % 2)}, Items: uint64(j)}
	}
	return rb
}

// TestSuperRootBackups: a backup names a slot by its generation, only the
// current one is found by Backup, and a backup naming a block out of
// range, a generation newer than the superblock's or another slot is
// rejected.
func TestSuperRootBackups(t *testing.T) {
	s := &Super{Major: VersionMajor, Minor: 3, Incompat: IncompatRootBackups, Block: 0, Gen: 7, BlockSize: BlockSize,
		TotalBlocks: 4096, Root: RootPtr{Block: 20, Gen: 7}, NextObjectID: 300}
	for g := Gen(4); g <= 7; g++ {
		s.Backups[g%NumRootBackups] = testBackup(g)
	}
	b := make([]byte, BlockSize)
	s.Encode(b)
	got, err := DecodeSuper(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rb, ok := got.Backup(7); !ok || rb != testBackup(7) {
		t.Fatalf("backup of generation 7: %v %+v", ok, rb)
	}
	if _, ok := got.Backup(3); ok {
		t.Fatal("a backup of generation 3, overwritten by 7")
	}
	for name, damage := range map[string]func(*Super){
		"block out of range": func(s *Super) { s.Backups[3].Roots[2].Root.Block = 4096 },
		"block zero":         func(s *Super) { s.Backups[3].Roots[0].Root.Block = 0 },
		"newer than super":   func(s *Super) { s.Backups[0] = testBackup(8) },
		"wrong slot":         func(s *Super) { s.Backups[1] = testBackup(6) },
		"tree gen too new":   func(s *Super) { s.Backups[2].Roots[4].Root.Gen = 7 },
	} {
		c := *s
		damage(&c)
		c.Encode(b)
		if _, err := DecodeSuper(b, 0); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
