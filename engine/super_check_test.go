package engine

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TestSuperCopyFields damages one field of one superblock copy, checksum
// kept valid, and asserts that the opener never uses that copy (falling
// back to another for the primary) and that the offline check names the
// copy with the exact finding id.
func TestSuperCopyFields(t *testing.T) {
	skipShort(t)
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{Label: "fields"}); err != nil {
		t.Fatal(err)
	}
	// A few commits, so that an older generation exists.
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := e.RewriteSupers(); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	pristine := bytes.Clone(dev.Bytes())
	good, err := format.DecodeSuper(pristine[:format.BlockSize], 0)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		mod  func(s *format.Super)
		want ErrorID
	}{
		{"block size", func(s *format.Super) { s.BlockSize = 8192 }, ErrSuperCopyBad},
		{"total blocks beyond the device", func(s *format.Super) { s.TotalBlocks = testBlocks + 1 }, ErrSuperCopyBad},
		{"total blocks below the minimum", func(s *format.Super) { s.TotalBlocks = 10 }, ErrSuperCopyBad},
		{"free above total", func(s *format.Super) { s.FreeBlocks = s.TotalBlocks + 1 }, ErrSuperCopyBad},
		{"root pointer out of range", func(s *format.Super) { s.Root.Block = testBlocks + 5 }, ErrSuperCopyBad},
		{"root pointer from the future", func(s *format.Super) { s.Root.Gen = s.Gen + 1 }, ErrSuperCopyBad},
		{"root level", func(s *format.Super) { s.Root.Level = format.MaxLevel + 1 }, ErrSuperCopyBad},
		{"generation zero", func(s *format.Super) { s.Gen = 0 }, ErrSuperCopyBad},
		{"reserved flags", func(s *format.Super) { s.Flags = 1 }, ErrSuperCopyBad},
		{"major version", func(s *format.Super) { s.Major++ }, ErrSuperCopyBad},
		{"another filesystem", func(s *format.Super) { s.FSID[0] ^= 1 }, ErrSuperCopyBad},
		{"label differs", func(s *format.Super) { s.Label = "other" }, ErrSuperCopyField},
		{"next object id differs", func(s *format.Super) { s.NextObjectID += 7 }, ErrSuperCopyField},
		{"free count differs", func(s *format.Super) { s.FreeBlocks-- }, ErrSuperCopyField},
		{"older generation", func(s *format.Super) {
			// A copy one commit older: without that commit's root backup.
			s.Backups[s.Gen%format.NumRootBackups] = format.RootBackup{}
			s.Gen--
		}, ErrSuperCopyStale},
		{"root backup out of range", func(s *format.Super) {
			s.Backups[s.Gen%format.NumRootBackups].Roots[3].Root.Block = testBlocks + 1
		}, ErrSuperCopyBad},
		{"root backups differ", func(s *format.Super) {
			s.Backups[(s.Gen-1)%format.NumRootBackups].Roots[2].Items++
		}, ErrSuperCopyField},
	}
	for _, at := range []format.BlockNr{16, 0} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("copy %d %s", at, c.name), func(t *testing.T) {
				img := bytes.Clone(pristine)
				s := *good
				s.Block = at
				c.mod(&s)
				s.Encode(img[int(at)*format.BlockSize : int(at+1)*format.BlockSize])
				// The opener.
				e, err := Open(disk.NewMemFrom(bytes.Clone(img)), Options{ReadOnly: true})
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				mi := e.MountInfo()
				e.Close()
				if c.want == ErrSuperCopyBad && mi.SuperBlock == at {
					t.Fatalf("the opener used the damaged copy %d", at)
				}
				// The check.
				_, fs, err := CheckImage(disk.NewMemFrom(img), CheckOptions{Context: context.Background()})
				if err != nil {
					t.Fatal(err)
				}
				if len(fs) != 1 || fs[0].ID != c.want || fs[0].Block != at {
					t.Fatalf("findings %v, want one %s at block %d", fs, c.want.Name(), at)
				}
			})
		}
	}
}
