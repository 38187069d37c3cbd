package repair

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// TestSalvageHostile zeroes the inode tree's root node, so every leaf is
// an orphan, and makes some orphans hostile: two leaves rewritten as
// interior nodes pointing at each other (a loop), one sealed with
// another filesystem's UUID, one with a generation newer than the
// image's, one claiming another tree, and a copy of a lost leaf forged
// in a free block the rmap lists nowhere. The salvage must end, keep
// exactly the items of the intact leaves and nothing of the others;
// the repair then reconstructs exactly the inodes of the hostile leaves,
// and the image checks clean.
func TestSalvageHostile(t *testing.T) {
	skipShort(t)
	img := populatedImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := f.Engine().Pin()
	tr, _ := s.Tree(format.TreeInode)
	root, err := tr.Store.Read(format.TreeInode, tr.Root, tr.Level)
	if err != nil || tr.Level != 1 || root.NrItems() < 8 {
		t.Fatalf("the inode tree: level %d, root %v %d children", tr.Level, err, root.NrItems())
	}
	gen, fsid, total := s.Gen(), root.FSID(), s.Super().TotalBlocks
	var leaves []format.BlockNr
	nodes := map[format.BlockNr]format.Node{}
	keys := map[format.BlockNr][]format.Key{}
	for i := range root.NrItems() {
		b, g := root.Child(i)
		n, err := tr.Store.Read(format.TreeInode, eb.Ptr{Block: b, Gen: g}, 0)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, b)
		nodes[b] = slices.Clone(n)
		for j := range n.NrItems() {
			keys[b] = append(keys[b], n.Key(j))
		}
	}
	used := map[format.BlockNr]bool{}
	for _, b := range format.SuperBlocks(total) {
		used[b] = true
	}
	if err := walkRmap(context.Background(), s, "test", func(start format.BlockNr, _ format.Owner, it format.RmapItem) error {
		for b := start; b < start+format.BlockNr(max(it.Len, 1)); b++ {
			used[b] = true
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	free := format.BlockNr(total / 2)
	for used[free] {
		free++
	}
	s.Release()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// The damage.
	dev, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b format.BlockNr, n []byte) {
		t.Helper()
		if _, err := dev.WriteAt(n, int64(b)*format.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	a, bb, c, d, x := leaves[0], leaves[1], leaves[2], leaves[3], leaves[4]
	loopA := format.InitNode(make([]byte, format.BlockSize), fsid, a, nodes[a].Gen(), format.TreeInode, 1)
	loopA.InsertPtr(0, keys[a][0], a, nodes[a].Gen())
	loopA.InsertPtr(1, keys[bb][0], bb, nodes[bb].Gen())
	loopA.Seal()
	put(a, loopA)
	loopB := format.InitNode(make([]byte, format.BlockSize), fsid, bb, nodes[bb].Gen(), format.TreeInode, 1)
	loopB.InsertPtr(0, keys[bb][0], a, nodes[a].Gen())
	loopB.Seal()
	put(bb, loopB)
	otherFS := slices.Clone(nodes[c])
	otherFS[8] ^= 0xff // the filesystem UUID
	otherFS.Seal()
	put(c, otherFS)
	newer := slices.Clone(nodes[d])
	newer.SetGen(gen + 5)
	newer.Seal()
	put(d, newer)
	otherTree := slices.Clone(nodes[x])
	otherTree.SetOwner(format.TreeDir)
	otherTree.Seal()
	put(x, otherTree)
	forged := slices.Clone(nodes[a]) // the lost keys of a, where nothing lists it
	forged.SetBlock(free)
	forged.Seal()
	put(free, forged)
	put(tr.Root.Block, make([]byte, format.BlockSize))
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}

	// The salvage alone.
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	s = f.Engine().Pin()
	walk := newWalkTrace()
	it, _ := s.ScanTree(format.TreeInode)
	if err := it.Check(walk.visitor(eb.CheckVisitor{Item: func(format.Key, []byte) { t.Error("the walk read an item below the zeroed root") }})); err != nil {
		t.Fatal(err)
	}
	var owned []format.BlockNr
	if err := walkRmap(context.Background(), s, "test", func(start format.BlockNr, o format.Owner, _ format.RmapItem) error {
		if !o.IsData() && o.Tree == format.TreeInode {
			owned = append(owned, start)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		keys []format.Key
		sv   Salvaged
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.sv, r.err = salvage(context.Background(), s, format.TreeInode, owned, walk, func(k format.Key, _ []byte) (bool, error) {
			r.keys = append(r.keys, k)
			return true, nil
		})
		done <- r
	}()
	var got result
	select {
	case got = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the salvage did not end in a minute")
	}
	s.Release()
	if got.err != nil {
		t.Fatal(got.err)
	}
	var want []format.Key
	for _, b := range leaves[5:] {
		want = append(want, keys[b]...)
	}
	slices.SortFunc(want, format.Key.Compare)
	slices.SortFunc(got.keys, format.Key.Compare)
	if !slices.Equal(got.keys, want) {
		t.Fatalf("salvaged %d keys, want the %d of the %d intact leaves", len(got.keys), len(want), len(leaves)-5)
	}
	if got.sv.Items != uint64(len(want)) || got.sv.Leaves != uint64(len(leaves)-5) {
		t.Errorf("salvage counts %+v, want %d items from %d leaves", got.sv, len(want), len(leaves)-5)
	}

	// The repair: exactly the inodes of the hostile leaves reconstructed.
	lost := map[uint64]bool{}
	for _, b := range leaves[:5] {
		for _, k := range keys[b] {
			if k.Type == format.TypeInodeItem {
				lost[k.Obj] = true
			}
		}
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline", TempDir: t.TempDir()})
	if err != nil || rep.Status != StatusCorrected {
		t.Fatalf("repair: %v %+v", err, rep)
	}
	recon := map[uint64]bool{}
	for _, rb := range rep.Rebuilds {
		for _, rc := range rb.Reconstructed {
			recon[rc.Ino] = true
		}
	}
	if len(recon) != len(lost) {
		t.Errorf("%d inodes reconstructed, the hostile leaves held %d", len(recon), len(lost))
	}
	for ino := range recon {
		if !lost[ino] {
			t.Errorf("inode %d reconstructed; its leaf was intact", ino)
		}
	}
	f = remountClean(t, f, img)
	defer f.Close()
	verifyPopulated(t, f, reconstructedWant(t, rep))
}

// TestWalkTraceCovered: a key is the walk's when a readable leaf's range
// holds it, whatever order or overlap the ranges came in.
func TestWalkTraceCovered(t *testing.T) {
	k := func(o uint64) format.Key { return format.InodeKey(o) }
	w := newWalkTrace()
	for _, r := range [][2]uint64{{50, 60}, {10, 20}, {15, 30}, {70, 70}} {
		w.ranges = append(w.ranges, keyRange{k(r[0]), k(r[1])})
	}
	in := w.covered()
	for o := uint64(0); o < 100; o++ {
		want := (o >= 10 && o <= 30) || (o >= 50 && o <= 60) || o == 70
		if in(k(o)) != want {
			t.Errorf("key %d: covered %v, want %v", o, in(k(o)), want)
		}
	}
	if newWalkTrace().covered()(k(1)) {
		t.Error("an empty walk covers a key")
	}
}
