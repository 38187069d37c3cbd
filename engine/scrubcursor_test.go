package engine

import (
	"errors"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TestScrubCursor: a cursor with its bad blocks survives a remount (the
// logged_ops recovery pass leaves it alone), is replaced by the next one,
// and goes when cleared; a format 1.1 image keeps none.
func TestScrubCursor(t *testing.T) {
	e, dev := newTestEngine(t, Options{})
	if _, ok, err := e.ScrubCursor(); ok || err != nil {
		t.Fatalf("cursor of a new image: %v %v", ok, err)
	}
	var bad []BadBlock
	for i := 0; i < 100; i++ { // more than one part
		bad = append(bad, BadBlock{Ino: 300 + uint64(i), Offset: 4096 * uint64(i), Disk: format.BlockNr(1000 + i)})
	}
	want := ScrubCursor{Run: 1733380000123456789, Data: true, Repair: true, NextIno: 399, Verified: 1 << 30, Found: 100, Bad: bad}
	if err := e.Update(func(tx *Tx) error { return tx.SetScrubCursor(want) }); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	img := append([]byte(nil), dev.Bytes()...)
	e2 := reopen(t, img, Options{})
	got, ok, err := e2.ScrubCursor()
	if err != nil || !ok || got.Run != want.Run || !got.Data || !got.Repair || got.NextIno != 399 || got.Verified != 1<<30 ||
		got.Found != 100 || len(got.Bad) != 100 || got.Bad[99] != bad[99] {
		t.Fatalf("cursor after remount: %+v %v %v", got, ok, err)
	}
	// The next cursor replaces it, parts and all.
	if err := e2.Update(func(tx *Tx) error { return tx.SetScrubCursor(ScrubCursor{Run: 5, NextIno: 7}) }); err != nil {
		t.Fatal(err)
	}
	e2.Sync()
	if got, _, _ := e2.ScrubCursor(); got.Run != 5 || len(got.Bad) != 0 {
		t.Fatalf("replaced cursor: %+v", got)
	}
	if err := e2.Update(func(tx *Tx) error { return tx.ClearScrubCursor() }); err != nil {
		t.Fatal(err)
	}
	e2.Sync()
	if _, ok, _ := e2.ScrubCursor(); ok {
		t.Fatal("cursor left after clearing")
	}
	mustCheck(t, e2)
	e2.Close()

	old := disk.NewMem(testBlocks * format.BlockSize)
	if err := Mkfs(old, MkfsOptions{NoRmapMaps: true}); err != nil {
		t.Fatal(err)
	}
	e3, err := Open(nopClose{old}, Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	if err := e3.Update(func(tx *Tx) error { return tx.SetScrubCursor(want) }); !errors.Is(err, ErrNoCursorFormat) {
		t.Fatalf("cursor on a 1.1 image: %v", err)
	}
}

// TestScrubCursorVersions: a disk-order cursor keeps its position and
// flag; an inode-order cursor of the older 56-byte form still decodes;
// unknown flags and a disk position without the flag are refused.
func TestScrubCursorVersions(t *testing.T) {
	c := ScrubCursor{Run: 9, Data: true, DiskOrder: true, NextDisk: 123456, NextIno: 300, Verified: 7, Found: 2}
	got, err := decodeScrubCursor(c.encode())
	if err != nil || got.Run != 9 || !got.Data || got.Repair || !got.DiskOrder || got.NextDisk != 123456 || got.NextIno != 300 || got.Verified != 7 || got.Found != 2 {
		t.Fatalf("disk-order cursor: %+v %v", got, err)
	}
	old := ScrubCursor{Run: 5, Data: true, NextIno: 777, Verified: 1 << 20}.encode()[:scrubCursorSizeV1]
	got, err = decodeScrubCursor(old)
	if err != nil || got.DiskOrder || got.NextDisk != 0 || got.NextIno != 777 || got.Verified != 1<<20 {
		t.Fatalf("old cursor: %+v %v", got, err)
	}
	bad := c.encode()
	bad[24] |= 8
	if _, err := decodeScrubCursor(bad); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("unknown flag: %v", err)
	}
	oldDisk := ScrubCursor{Run: 5, DiskOrder: true}.encode()[:scrubCursorSizeV1]
	if _, err := decodeScrubCursor(oldDisk); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("disk flag in a 56-byte cursor: %v", err)
	}
	noFlag := ScrubCursor{Run: 5, NextDisk: 10}.encode()
	if _, err := decodeScrubCursor(noFlag); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("disk position without the flag: %v", err)
	}
}
