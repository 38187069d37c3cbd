package fs

import (
	"bytes"
	"sync"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

var (
	fuzzOnce  sync.Once
	fuzzImage []byte
	fuzzUsed  []format.BlockNr
)

// fuzzBase makes a small filesystem with files, directories, links and an
// fsync log with records, once.
func fuzzBase() ([]byte, []format.BlockNr) {
	fuzzOnce.Do(func() {
		dev := disk.NewMem(format.MinBlocks * 2 * format.BlockSize)
		if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
			panic(err)
		}
		f, err := Open(nopClose{dev}, Options{CommitInterval: -1})
		if err != nil {
			panic(err)
		}
		d, _ := f.Mkdir(RootIno, "dir", NewInode{Mode: 0o755})
		for i := 0; i < 12; i++ {
			a, _ := f.Create(d.Ino, string(rune('a'+i)), NewInode{Mode: 0o644})
			f.Write(a.Ino, bytes.Repeat([]byte{byte(i)}, 3000*(i+1)), int64(i*100))
		}
		f.Symlink(RootIno, "ln", "dir/a", NewInode{})
		a, _ := f.Lookup(d.Ino, "a")
		f.Link(a.Ino, RootIno, "hard")
		f.Sync()
		f.Write(a.Ino, []byte("logged"), 10) // an fsync log record
		f.Fsync(a.Ino)
		s := f.Engine().Pin()
		for _, id := range s.Trees() {
			tr, _ := s.Tree(id)
			tr.Check(blockVisitor(func(b format.BlockNr) { fuzzUsed = append(fuzzUsed, b) }))
		}
		fuzzUsed = append(fuzzUsed, s.Super().Log.Block)
		s.Release()
		fuzzImage = dev.Bytes() // as after a crash: the log is not yet replayed
	})
	return fuzzImage, fuzzUsed
}

// FuzzMountImage damages metadata blocks (resealing some so the damage gets
// past the checksum) and mounts: replaying the log, freeing orphans, then
// walking and reading everything must give errors, never a panic.
func FuzzMountImage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 200, 1})
	f.Add([]byte{5, 0, 70, 9, 1, 6, 0, 90, 0x40, 0})
	f.Fuzz(func(t *testing.T, muts []byte) {
		base, used := fuzzBase()
		img := bytes.Clone(base)
		for i := 0; i+5 <= len(muts) && i < 50; i += 5 {
			b := used[int(muts[i])%len(used)]
			off := (int(muts[i+1])<<8 | int(muts[i+2])) % format.BlockSize
			blk := img[int(b)*format.BlockSize : int(b+1)*format.BlockSize]
			blk[off] ^= muts[i+3]
			if muts[i+4]&1 == 1 {
				format.Node(blk).Seal()
			}
		}
		fsys, err := Open(disk.NewMemFrom(img), Options{CommitInterval: -1})
		if err != nil {
			return
		}
		defer fsys.Close()
		seen := map[uint64]bool{}
		var walk func(dir uint64, depth int)
		walk = func(dir uint64, depth int) {
			if depth > 8 || seen[dir] || len(seen) > 200 {
				return // a damaged tree may loop
			}
			seen[dir] = true
			var ents []DirEntry
			fsys.ReadDir(dir, 2, func(de DirEntry) bool { ents = append(ents, de); return len(ents) < 100 })
			for _, de := range ents {
				a, err := fsys.GetAttr(de.Ino)
				if err != nil {
					continue
				}
				switch a.Mode & 0o170000 {
				case 0o040000:
					walk(de.Ino, depth+1)
				case 0o120000:
					fsys.Readlink(de.Ino)
				default:
					buf := make([]byte, min(a.Size, 1<<20))
					fsys.Read(de.Ino, buf, 0)
					fsys.Write(de.Ino, []byte("x"), 1)
				}
			}
		}
		walk(RootIno, 0)
		fsys.Create(RootIno, "new", NewInode{Mode: 0o644})
		fsys.Sync()
	})
}
