package repair

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// TestIncrementalScopes: a data scrub --since a generation reads only the
// data written after it (damage in older data goes unseen, new data is
// verified); --errors re-reads exactly the blocks a run found bad; the
// metadata is checked in full either way.
func TestIncrementalScopes(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Enough files for several extent-tree leaves: the new file's item
	// lands in the last one, the damaged old file's in the first.
	data := bytes.Repeat([]byte("old data"), 4<<10) // 32 KiB
	var old []uint64
	for i := 0; i < 400; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("old%03d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		old = append(old, a.Ino)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	p := f.Engine().Pin()
	gen := uint64(p.Gen())
	p.Release()
	// Damage a block of an old file, on disk.
	pin := f.Engine().Pin()
	et, _ := pin.ScanTree(format.TreeExtent)
	var fe format.FileExtent
	if ok, err := et.Lookup(format.FileExtentKey(old[3], 0), func(v []byte) { fe, _ = format.DecodeFileExtent(v) }); !ok || err != nil {
		t.Fatalf("extent of inode %d: %v %v", old[3], ok, err)
	}
	pin.Release()
	a, _ := f.Create(fs.RootIno, "new", fs.NewInode{Mode: 0o644})
	if _, err := f.Write(a.Ino, bytes.Repeat([]byte("new!"), 1<<14), 0); err != nil { // 64 KiB
		t.Fatal(err)
	}
	f.Close()
	fh, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt(bytes.Repeat([]byte{0xee}, format.BlockSize), int64(fe.Start+2)*format.BlockSize)
	fh.Close()
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()

	since, err := Scrub(ctx, f, img, ScrubOptions{Data: true, Since: gen})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("since %d: %d bytes verified, scope %q, %d found", gen, since.BytesVerified, since.Scope, since.Found)
	if since.Found != 0 || since.BytesVerified < 64<<10 || since.BytesVerified >= uint64(len(data))*200 || since.Scope == "" || since.Requested.Since != gen {
		t.Fatalf("--since: %+v", since)
	}
	full, err := Scrub(ctx, f, img, ScrubOptions{Data: true})
	if err != nil {
		t.Fatal(err)
	}
	var bad []engine.BadBlock
	for _, s := range full.Structures {
		for _, fd := range s.Findings {
			if fd.Name == "data_checksum" {
				bad = append(bad, engine.BadBlock{Ino: fd.Inode, Offset: *fd.Offset, Disk: format.BlockNr(*fd.DiskBlock)})
			}
		}
	}
	if len(bad) != 1 || bad[0].Ino != old[3] || bad[0].Offset != 2*format.BlockSize {
		t.Fatalf("full data scrub found %+v", bad)
	}
	errs, err := Scrub(ctx, f, img, ScrubOptions{Data: true, OnlyErrors: true, Errors: bad})
	if err != nil {
		t.Fatal(err)
	}
	if errs.Found != 1 || errs.BytesVerified != 0 || !errs.Requested.Errors {
		t.Fatalf("--errors: found %d, %d bytes verified (want the one bad block, unverified): %+v", errs.Found, errs.BytesVerified, errs.Notes)
	}
	// Leave the image clean for nobody: this test's image is its own.
}
