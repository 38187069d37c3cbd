package fs

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// extentItems returns the file extent items of ino in the last commit.
func extentItems(t *testing.T, f *FS, ino uint64) []format.FileExtent {
	t.Helper()
	s := f.Engine().Pin()
	defer s.Release()
	tr, _ := s.Tree(format.TreeExtent)
	var out []format.FileExtent
	if err := tr.Ascend(format.FileExtentKey(ino, 0), func(k format.Key, v []byte) bool {
		if k.Obj != ino || k.Type != format.TypeFileExtent {
			return false
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fe)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkBlocks fails unless ino's st_blocks is its mapped blocks plus its
// buffered blocks that map nothing yet.
func checkBlocks(t *testing.T, f *FS, ino uint64) {
	t.Helper()
	mapped := uint64(0)
	if err := f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeExtent)
		var derr error
		err := tr.Ascend(format.FileExtentKey(ino, 0), func(k format.Key, v []byte) bool {
			if k.Obj != ino || k.Type != format.TypeFileExtent {
				return false
			}
			fe, err := format.DecodeFileExtent(v)
			if err != nil {
				derr = err
				return false
			}
			mapped += fe.Count
			return true
		})
		return cmp.Or(err, derr)
	}); err != nil {
		t.Fatal(err)
	}
	at, err := f.GetAttr(ino)
	if err != nil {
		t.Fatal(err)
	}
	if want := mapped + f.unmappedBlocks(ino); at.Blocks != want {
		t.Fatalf("inode %d: st_blocks %d, want %d (%d mapped, %d buffered unmapped)", ino, at.Blocks, want, mapped, f.unmappedBlocks(ino))
	}
}

// A write that crosses the buffer's bound writes the buffers out first,
// its own file's included, and must store the block count the write-out
// left (it once stored the one it read before, so a 1 GiB file written
// in 1 MiB writes showed 32 MiB of blocks).
func TestDelallocBoundKeepsBlockCount(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{MaxDelayedBlocks: 64})
	defer f.Close()
	a, err := f.Create(RootIno, "big", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 16 * bs
	for i := 0; i < 20; i++ {
		if _, err := f.Write(a.Ino, bytes.Repeat([]byte{byte(i + 1)}, chunk), int64(i*chunk)); err != nil {
			t.Fatal(err)
		}
		checkBlocks(t, f, a.Ino)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, f, a.Ino)
	if at, _ := f.GetAttr(a.Ino); at.Blocks != 20*16 {
		t.Fatalf("st_blocks %d after the commit, want %d", at.Blocks, 20*16)
	}
}

// Writes between two commits are allocated together: 256 sequential 4 KiB
// writes become ceil(256/MaxExtentBlocks) extents, not 256, and a block
// written 50 times costs one new block, not 50. Without delayed allocation
// each write is its own extent.
func TestDelallocFewerExtents(t *testing.T) {
	for _, noDelay := range []bool{false, true} {
		t.Run(fmt.Sprintf("nodelalloc=%v", noDelay), func(t *testing.T) {
			f := mount(t, nopClose{newDev(t)}, Options{NoDelayedAlloc: noDelay})
			defer f.Close()
			a, err := f.Create(RootIno, "seq", NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 256*bs)
			for i := 0; i < 256; i++ {
				blk := bytes.Repeat([]byte{byte(i + 1)}, bs)
				copy(want[i*bs:], blk)
				if _, err := f.Write(a.Ino, blk, int64(i*bs)); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			items := extentItems(t, f, a.Ino)
			wantItems := (256 + format.MaxExtentBlocks - 1) / format.MaxExtentBlocks
			if noDelay {
				wantItems = 256
			}
			if len(items) != wantItems {
				t.Fatalf("%d extent items after 256 sequential writes, want %d", len(items), wantItems)
			}
			if got := fileBytes(t, f, a.Ino); !bytes.Equal(got, want) {
				t.Fatal("sequential file reads back wrong")
			}
			b, err := f.Create(RootIno, "hot", NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			before := settledFree(t, f)
			for i := 0; i < 50; i++ {
				if _, err := f.Write(b.Ino, bytes.Repeat([]byte{byte(i)}, 100), int64(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			used := before - settledFree(t, f)
			if !noDelay && used > 1+4 { // the block, and metadata blocks at most
				t.Fatalf("50 writes of one block used %d blocks", used)
			}
			if n := len(extentItems(t, f, b.Ino)); n != 1 {
				t.Fatalf("%d extent items for one block", n)
			}
			mustClean(t, f)
		})
	}
}

// TestDelallocModel writes, reads, truncates, clones, copies, fsyncs and
// commits at random on three files against byte slices, with the buffer
// bound small so that the writers' write-outs, the commits', the fsyncs'
// and the clones' all happen; reads at random offsets cross buffered
// blocks, written ones and holes. Every commit is followed by the full
// self-check, and the files are compared after a remount and after a kill
// (the image as the last commit and fsyncs left it, the log replayed:
// each file then reads as one of the states it went through, no older than
// its last fsync).
func TestDelallocModel(t *testing.T) {
	seeds := []uint64{1, 2}
	if testing.Short() || raceEnabled {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { delallocModel(t, seed) })
	}
}

func delallocModel(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 31))
	dev := newDev(t)
	opts := Options{MaxDelayedBlocks: 6}
	f := mount(t, nopClose{dev}, opts)
	const nfiles = 3
	inos := make([]uint64, nfiles)
	model := make([][]byte, nfiles)
	history := make([][][]byte, nfiles) // states since the last commit
	synced := make([]int, nfiles)       // index in history of the last fsync'd state
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprint("f", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[i] = a.Ino
		history[i] = [][]byte{nil}
	}
	// DELTRACE=1 (debugging) compares every file after every step and
	// logs the steps of a failed run.
	var trace []string
	logf := func(format string, a ...any) {
		if os.Getenv("DELTRACE") != "" {
			trace = append(trace, fmt.Sprintf(format, a...))
		}
	}
	defer func() {
		if t.Failed() {
			for _, l := range trace {
				t.Log(l)
			}
		}
	}()
	record := func(i int) { history[i] = append(history[i], slices.Clone(model[i])) }
	commit := func() {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		for i := range history {
			history[i] = [][]byte{slices.Clone(model[i])}
			synced[i] = 0
		}
	}
	check := func(g *FS, i int) {
		t.Helper()
		got := fileBytes(t, g, inos[i])
		if !bytes.Equal(got, model[i]) {
			t.Fatalf("file %d: %d bytes read, model has %d (first difference at %d)", i, len(got), len(model[i]), firstDiff(got, model[i]))
		}
		checkBlocks(t, g, inos[i])
	}
	const span = 12 * bs
	steps := 600
	if testing.Short() || raceEnabled {
		steps = 200
	}
	for s := 0; s < steps; s++ {
		i := r.IntN(nfiles)
		switch op := r.IntN(20); {
		case op < 8: // write
			off := r.IntN(span)
			data := randBytes(r, 1+r.IntN(3*bs))
			if _, err := f.Write(inos[i], data, int64(off)); err != nil {
				t.Fatalf("step %d: write: %v", s, err)
			}
			if end := off + len(data); end > len(model[i]) {
				model[i] = append(model[i], make([]byte, end-len(model[i]))...)
			}
			copy(model[i][off:], data)
			record(i)
			logf("step %d: write file %d %d+%d", s, i, off, len(data))
		case op < 11: // read a random range
			off := r.IntN(span + bs)
			p := make([]byte, r.IntN(4*bs))
			n, err := f.Read(inos[i], p, int64(off))
			if err != nil {
				t.Fatalf("step %d: read: %v", s, err)
			}
			var want []byte
			if off < len(model[i]) {
				want = model[i][off:min(len(model[i]), off+len(p))]
			}
			if !bytes.Equal(p[:n], want) {
				t.Fatalf("step %d: file %d read %d+%d: differs from the model at %d", s, i, off, len(p), firstDiff(p[:n], want))
			}
		case op < 13: // truncate
			size := r.IntN(span)
			if err := f.Truncate(inos[i], uint64(size)); err != nil {
				t.Fatalf("step %d: truncate: %v", s, err)
			}
			if size < len(model[i]) {
				model[i] = model[i][:size]
			} else {
				model[i] = append(model[i], make([]byte, size-len(model[i]))...)
			}
			record(i)
			logf("step %d: truncate file %d %d", s, i, size)
		case op < 15: // clone or copy into another file
			j := (i + 1 + r.IntN(nfiles-1)) % nfiles
			if len(model[i]) < bs {
				continue
			}
			a := r.IntN(len(model[i])/bs) * bs
			n := min(len(model[i])-a, (1+r.IntN(3))*bs)
			d := r.IntN(span/bs) * bs
			if op == 13 {
				d += r.IntN(bs) // a copy: partial blocks are written
			}
			done, err := f.CopyRange(inos[i], int64(a), inos[j], int64(d), int64(n))
			if err != nil || done != int64(n) {
				t.Fatalf("step %d: copy %d+%d to %d: %d, %v", s, a, n, d, done, err)
			}
			src := slices.Clone(model[i][a : a+n])
			if end := d + n; end > len(model[j]) {
				model[j] = append(model[j], make([]byte, end-len(model[j]))...)
			}
			copy(model[j][d:], src)
			record(j)
			logf("step %d: copy file %d %d+%d to file %d at %d", s, i, a, n, j, d)
		case op < 18:
			if err := f.Fsync(inos[i]); err != nil {
				t.Fatalf("step %d: fsync: %v", s, err)
			}
			synced[i] = len(history[i]) - 1
			logf("step %d: fsync file %d (logged %d)", s, i, f.Stats().FsyncLogged)
		default:
			logf("step %d: commit", s)
			commit()
			mustClean(t, f)
		}
		if os.Getenv("DELTRACE") != "" {
			for j := range inos {
				check(f, j)
			}
		}
		if s%50 == 25 {
			if os.Getenv("DELTRACE") != "" {
				for j := range inos {
					check(f, j)
				}
			}
			// Killed: the image as it is on the device now.
			k := mount(t, nopClose{disk.NewMemFrom(slices.Clone(dev.Bytes()))}, Options{})
			for j := range inos {
				got := fileBytes(t, k, inos[j])
				ok := false
				for _, h := range history[j][synced[j]:] {
					if bytes.Equal(got, h) {
						ok = true
						break
					}
				}
				if !ok {
					for hi, h := range history[j] {
						t.Logf("state %d (synced %d): len %d firstdiff %d", hi, synced[j], len(h), firstDiff(got, h))
					}
					t.Fatalf("step %d: killed image: file %d (%d bytes) matches no state since its last fsync", s, j, len(got))
				}
			}
			mustClean(t, k)
			k.Close()
		}
	}
	if f.Stats().FsyncLogged == 0 {
		t.Fatal("no fsync went through the log")
	}
	for i := range inos {
		check(f, i)
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, opts)
	defer f.Close()
	for i := range inos {
		check(f, i)
	}
	mustClean(t, f)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A write that the free space could not hold together with what is
// buffered fails with ENOSPC when it is made — not at the commit, which
// would abort — and changes nothing; the filesystem goes on.
func TestDelallocNoSpace(t *testing.T) {
	f := mount(t, nopClose{smallDev(t)}, Options{})
	defer f.Close()
	a, err := f.Create(RootIno, "fill", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{7}, 16*bs)
	var off int64
	for {
		_, err := f.Write(a.Ino, chunk, off)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		off += int64(len(chunk))
		if off > 2048*bs {
			t.Fatal("no ENOSPC on an 8 MiB image")
		}
	}
	at, err := f.GetAttr(a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if at.Size != uint64(off) {
		t.Fatalf("size %d after the refused write, want %d", at.Size, off)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("commit after ENOSPC: %v", err)
	}
	if got := fileBytes(t, f, a.Ino); !bytes.Equal(got, bytes.Repeat([]byte{7}, int(off))) {
		t.Fatal("file reads back wrong")
	}
	if err := f.Truncate(a.Ino, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil { // the freed blocks return once it is durable
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, chunk, 0); err != nil {
		t.Fatalf("write after freeing: %v", err)
	}
	mustClean(t, f)
}

// Damage to the extent records a write-out needs keeps that file's
// buffer: the commit goes on (the engine stays writable), reads of the
// buffered blocks return them (the blocks around them need the damaged
// records, and get EIO), an fsync of the file fails with EIO, and once the records
// read again the next commit writes the buffer out.
func TestDelallocDamageKeepsBuffer(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	defer f.Close()
	// Enough files for an extent tree of several leaves.
	for i := 0; i < 300; i++ {
		o, err := f.Create(RootIno, fmt.Sprint("o", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(o.Ino, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	a, err := f.Create(RootIno, "a", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte{1}, 8*bs)
	if _, err := f.Write(a.Ino, old, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The leaf holding the file's extent item.
	s := f.Engine().Pin()
	tr, _ := s.Tree(format.TreeExtent)
	var leaf format.BlockNr
	if err := tr.Check(eb.CheckVisitor{Node: func(n format.Node, p eb.Ptr) {
		for i := 0; n.IsLeaf() && i < n.NrItems(); i++ {
			if n.Key(i).Obj == a.Ino {
				leaf = p.Block
			}
		}
	}}); err != nil {
		t.Fatal(err)
	}
	s.Release()
	if leaf == 0 {
		t.Fatal("no leaf holds the file's extent")
	}
	newer := bytes.Repeat([]byte{2}, 3*bs)
	if _, err := f.Write(a.Ino, newer, 2*bs); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(old)
	copy(want[2*bs:], newer)
	at := int64(leaf) * bs
	saved := make([]byte, bs)
	if _, err := dev.ReadAt(saved, at); err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(saved)
	bad[100] ^= 0xff
	if _, err := dev.WriteAt(bad, at); err != nil {
		t.Fatal(err)
	}
	f.Engine().DropCached(leaf)
	if err := f.Sync(); err != nil {
		t.Fatalf("commit with a file's write-out held back: %v", err)
	}
	if f.Stats().DelayedKept == 0 || f.DelayedBlocks() != 3 {
		t.Fatalf("kept %d, buffered %d blocks", f.Stats().DelayedKept, f.DelayedBlocks())
	}
	got := make([]byte, len(newer))
	if n, err := f.Read(a.Ino, got, 2*bs); err != nil || !bytes.Equal(got[:n], newer) {
		t.Fatalf("buffered blocks not read back (%d bytes, %v)", n, err)
	}
	if err := f.Fsync(a.Ino); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with the write-out held back: %v, want EIO", err)
	}
	if _, err := f.Mkdir(RootIno, "d", NewInode{Mode: 0o755}); err != nil {
		t.Fatalf("the filesystem stopped taking changes: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// An unmount now would lose the blocks, and says so.
	kdev := disk.NewMemFrom(dev.Bytes())
	if _, err := kdev.WriteAt(saved, at); err != nil {
		t.Fatal(err)
	}
	k := mount(t, nopClose{kdev}, Options{})
	if _, err := k.Write(a.Ino, newer, 2*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := k.e.Device().WriteAt(bad, at); err != nil {
		t.Fatal(err)
	}
	k.e.DropCached(leaf)
	if err := k.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("unmount with blocks that cannot be written out: %v, want EIO", err)
	}
	// As a repair would leave it: the records read again.
	if _, err := dev.WriteAt(saved, at); err != nil {
		t.Fatal(err)
	}
	f.Engine().DropCached(leaf)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := f.DelayedBlocks(); n != 0 {
		t.Fatalf("%d blocks still buffered", n)
	}
	if err := f.Fsync(a.Ino); err != nil {
		t.Fatal(err)
	}
	if got := fileBytes(t, f, a.Ino); !bytes.Equal(got, want) {
		t.Fatal("file reads back wrong after the write-out")
	}
	mustClean(t, f)
}

// st_blocks counts buffered blocks that fill holes, before and after the
// write-out; freeing a file drops its buffer.
func TestDelallocBlocksAndUnlink(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	a, err := f.Create(RootIno, "a", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(a.Ino, make([]byte, 5*bs), 3*bs); err != nil {
		t.Fatal(err)
	}
	at, err := f.GetAttr(a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if at.Blocks != 5 || f.DelayedBlocks() != 5 {
		t.Fatalf("blocks %d, buffered %d before the write-out", at.Blocks, f.DelayedBlocks())
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if at, _ = f.GetAttr(a.Ino); at.Blocks != 5 || f.DelayedBlocks() != 0 {
		t.Fatalf("blocks %d, buffered %d after the write-out", at.Blocks, f.DelayedBlocks())
	}
	if _, err := f.Write(a.Ino, make([]byte, 2*bs), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink(RootIno, "a"); err != nil {
		t.Fatal(err)
	}
	if n := f.DelayedBlocks(); n != 0 {
		t.Fatalf("%d blocks still buffered for a freed file", n)
	}
	mustClean(t, f)
}

// A commit writes most buffered blocks out ahead, in transactions of
// about aheadSlice blocks (writers wait for one slice at a time), leaving
// the file partly buffered between them: reads, st_blocks and the image
// stay right at every step.
func TestDelallocFlushAhead(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{MaxDelayedBlocks: 4096})
	defer f.Close()
	r := rand.New(rand.NewPCG(7, 7))
	var inos []uint64
	var want [][]byte
	for i := 0; i < 3; i++ {
		a, err := f.Create(RootIno, fmt.Sprint("f", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
		data := make([]byte, 700*bs)
		// Every third block a hole: runs of two.
		for b := 0; b < 700; b++ {
			if b%3 == 2 {
				continue
			}
			blk := randBytes(r, bs)
			copy(data[b*bs:], blk)
			if _, err := f.Write(a.Ino, blk, int64(b*bs)); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, data)
	}
	buffered := f.DelayedBlocks()
	if buffered != 3*467 {
		t.Fatalf("%d blocks buffered", buffered)
	}
	var slices int
	err := f.e.Update(func(tx *engine.Tx) error {
		n, err := f.flushFileN(tx, inos[0], 100)
		if n != 100 {
			t.Errorf("a write-out limited to 100 blocks wrote %d", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.DelayedBlocks(); got != buffered-100 {
		t.Fatalf("%d buffered after writing 100 out", got)
	}
	for i, ino := range inos {
		if got := fileBytes(t, f, ino); !bytes.Equal(got, want[i]) {
			t.Fatalf("file %d reads back wrong while partly written out", i)
		}
		if a, _ := f.GetAttr(ino); a.Blocks != 467 {
			t.Fatalf("file %d: st_blocks %d, want 467", i, a.Blocks)
		}
	}
	for f.DelayedBlocks() > 0 {
		before := f.DelayedBlocks()
		if err := f.e.Update(func(tx *engine.Tx) error {
			_, err := f.flushFileN(tx, inos[slices%3], aheadSlice)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if f.DelayedBlocks() == before && f.dirty(inos[slices%3]) != nil {
			t.Fatal("a slice wrote nothing out")
		}
		slices++
	}
	if err := f.flushAhead(); err != nil {
		t.Fatal(err)
	}
	for i, ino := range inos {
		if got := fileBytes(t, f, ino); !bytes.Equal(got, want[i]) {
			t.Fatalf("file %d reads back wrong", i)
		}
	}
	mustClean(t, f)
	// And through a commit: flushAhead leaves the hook nothing.
	for i, ino := range inos {
		blk := randBytes(r, bs)
		copy(want[i][5*bs:], blk)
		if _, err := f.Write(ino, blk, 5*bs); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.flushAhead(); err != nil {
		t.Fatal(err)
	}
	if n := f.DelayedBlocks(); n != 0 {
		t.Fatalf("%d blocks left after flushAhead", n)
	}
	mustClean(t, f)
	for i, ino := range inos {
		if got := fileBytes(t, f, ino); !bytes.Equal(got, want[i]) {
			t.Fatalf("file %d reads back wrong", i)
		}
	}
}
