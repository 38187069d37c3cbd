package engine

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

var (
	fuzzOnce  sync.Once
	fuzzImage []byte
	fuzzUsed  []format.BlockNr // blocks that hold metadata
)

// fuzzBase builds a small image with multi-level trees once.
func fuzzBase(t testing.TB) ([]byte, []format.BlockNr) {
	fuzzOnce.Do(func() {
		dev := disk.NewMem(format.MinBlocks * format.BlockSize)
		if err := Mkfs(dev, MkfsOptions{}); err != nil {
			panic(err)
		}
		e, err := Open(nopClose{dev}, Options{CommitInterval: -1})
		if err != nil {
			panic(err)
		}
		w := newWorkload(11)
		for i := 0; i < 1500; i++ {
			if err := e.Update(w.step); err != nil {
				panic(err)
			}
		}
		if err := e.Sync(); err != nil {
			panic(err)
		}
		s := e.Pin()
		for _, id := range s.Trees() {
			tr, _ := s.Tree(id)
			tr.Check(btreeVisitor(func(b format.BlockNr) { fuzzUsed = append(fuzzUsed, b) }))
		}
		fuzzUsed = append(fuzzUsed, 0, 16, 256)
		s.Release()
		e.Close()
		fuzzImage = dev.Bytes()
	})
	return fuzzImage, fuzzUsed
}

// FuzzCheckImage damages metadata blocks of a real image at fuzzer-chosen
// places and requires that checking and mounting it never panic: every
// problem must come back as a finding or a named error.
func FuzzCheckImage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 200, 1})
	f.Add([]byte{1, 0, 0, 50, 0xff, 2, 0, 0, 60, 0x80})
	f.Add([]byte{3, 0, 0, 64, 9, 3, 0, 0, 10, 7})
	f.Fuzz(func(t *testing.T, muts []byte) {
		base, used := fuzzBase(t)
		img := bytes.Clone(base)
		// Each 5-byte group: which used block, offset (2 bytes), xor, and a
		// flag to re-seal the checksum so damage reaches past it.
		for i := 0; i+5 <= len(muts) && i < 50; i += 5 {
			b := used[int(muts[i])%len(used)]
			off := (int(muts[i+1])<<8 | int(muts[i+2])) % format.BlockSize
			blk := img[int(b)*format.BlockSize : int(b+1)*format.BlockSize]
			blk[off] ^= muts[i+3]
			if muts[i+4]&1 == 1 && b != 0 && b != 16 && b != 256 {
				format.Node(blk).Seal()
			}
		}
		if _, _, err := CheckImage(disk.NewMemFrom(img), CheckOptions{Context: context.Background()}); err != nil && !errors.Is(err, format.ErrNotFilesystem) {
			t.Fatalf("check returned an operational error on a memory device: %v", err)
		}
		e, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
		if err != nil {
			return
		}
		// Whatever mounted must survive writes and a commit without panic.
		_ = e.Update(newWorkload(1).step)
		_ = e.Sync()
		e.Close()
	})
}
