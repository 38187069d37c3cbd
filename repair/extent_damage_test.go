package repair

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// TestExtentDamageFailsOnlyItsFiles: with a leaf of the file-extent tree
// damaged (no repairer exists for it yet), the files it maps fail reads,
// writes, truncates and their unlink with EIO, the extent tree is marked sick, and
// nothing else changes: the mount stays read-write, every other file reads
// and writes, new files are made and fsync'd, and the image after unmount
// has the damage and nothing more.
func TestExtentDamageFailsOnlyItsFiles(t *testing.T) {
	img := populatedImage(t)
	lv := 0
	inj, err := inject.Offline(img, inject.Options{Tree: format.TreeExtent, Kind: inject.Bitflip, Seed: 2, Level: &lv})
	if err != nil {
		t.Fatal(err)
	}
	before, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var bad, good []uint64
	var badName string
	buf := make([]byte, 64<<10)
	for i := 1; i < 600; i += 2 {
		a, err := f.Lookup(fs.RootIno, fmt.Sprintf("f%04d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Read(a.Ino, buf, 0); err != nil {
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("read of inode %d: %v, want EIO", a.Ino, err)
			}
			if bad == nil {
				badName = fmt.Sprintf("f%04d", i)
			}
			bad = append(bad, a.Ino)
		} else {
			good = append(good, a.Ino)
		}
	}
	if len(bad) == 0 || len(good) == 0 {
		t.Fatalf("damaged extent block %d: %d files unreadable, %d readable", inj.Block, len(bad), len(good))
	}
	// A whole block: no partial block to read first, so only the probe
	// of the extent records stands between the damage and a change.
	if _, err := f.Write(bad[0], make([]byte, format.BlockSize), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to a file whose extent records are damaged: %v, want EIO", err)
	}
	if err := f.Truncate(bad[0], 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("truncate of a file whose extent records are damaged: %v, want EIO", err)
	}
	if err := f.Unlink(fs.RootIno, badName); !errors.Is(err, syscall.EIO) {
		t.Fatalf("unlink of a file whose extent records are damaged: %v, want EIO", err)
	}
	if !f.Engine().Sick(engine.StructExtent) {
		t.Fatal("extent tree not marked sick")
	}
	// Everything else goes on.
	if _, err := f.Write(good[0], []byte("still writing"), 0); err != nil {
		t.Fatal(err)
	}
	a, err := f.Create(fs.RootIno, "after", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, []byte("new file"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Fsync(a.Ino); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("commit with a damaged extent leaf: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := CheckOffline(context.Background(), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Found != before.Found || foundIn(after, "extent") != foundIn(before, "extent") {
		t.Fatalf("findings changed: %d (extent %d) before, %d (extent %d) after", before.Found, foundIn(before, "extent"), after.Found, foundIn(after, "extent"))
	}
}

// foundIn is how many findings a report has in structure name.
func foundIn(r *Report, name string) int {
	for _, s := range r.Structures {
		if s.Name == name {
			return s.Found
		}
	}
	return 0
}
