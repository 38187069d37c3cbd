package fs

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
)

// TestHooksShadowFS keeps shadows of the inode, directory and extent trees
// from hook events alone, starting from an empty filesystem, and checks
// they equal the trees after a random workload.
func TestHooksShadowFS(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	type ek struct{ ino, fb uint64 }
	type dk struct {
		dir  uint64
		name string
	}
	extents := map[ek]format.FileExtent{}
	dirents := map[dk]uint64{}
	inodes := map[uint64]format.InodeItem{}
	// The root directory exists before we subscribe.
	f.e.View(func(tx *engine.Tx) error {
		in, _, err := getInode(tx, RootIno)
		inodes[RootIno] = *in
		return err
	})
	h := f.e.Hooks()
	h1 := h.Extent.Register(func(ev engine.ExtentEvent) {
		if ev.Op == engine.OpDelete {
			delete(extents, ek{ev.Ino, ev.FileBlock})
		} else {
			extents[ek{ev.Ino, ev.FileBlock}] = ev.Extent
		}
	})
	h2 := h.Dirent.Register(func(ev engine.DirentEvent) {
		if ev.Op == engine.OpDelete {
			delete(dirents, dk{ev.Dir, ev.Entry.Name})
		} else {
			dirents[dk{ev.Dir, ev.Entry.Name}] = ev.Entry.Ino
		}
	})
	h3 := h.Inode.Register(func(ev engine.InodeEvent) {
		if ev.Op == engine.OpDelete {
			delete(inodes, ev.Ino)
		} else {
			inodes[ev.Ino] = ev.Inode
		}
	})
	defer h.Extent.Unregister(h1)
	defer h.Dirent.Unregister(h2)
	defer h.Inode.Unregister(h3)
	r := rand.New(rand.NewPCG(31, 31))
	m := &model{root: newDir()}
	for i := 0; i < 800; i++ {
		step(t, r, f, m)
	}
	gotE, gotD, gotI := map[ek]format.FileExtent{}, map[dk]uint64{}, map[uint64]format.InodeItem{}
	f.e.View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeExtent)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			fe, _ := format.DecodeFileExtent(v)
			gotE[ek{k.Obj, k.Off}] = fe
			return true
		})
		tr, _ = tx.ReadTree(format.TreeDir)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type == format.TypeDirEntry {
				de, _ := format.DecodeDirEntry(v)
				gotD[dk{k.Obj, de.Name}] = de.Ino
			}
			return true
		})
		tr, _ = tx.ReadTree(format.TreeInode)
		tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type == format.TypeInodeItem {
				in, _ := format.DecodeInodeItem(v)
				gotI[k.Obj] = in
			}
			return true
		})
		return nil
	})
	if fmt.Sprint(gotE) != fmt.Sprint(extents) {
		t.Fatalf("extent shadow (%d) differs from the tree (%d)", len(extents), len(gotE))
	}
	if fmt.Sprint(gotD) != fmt.Sprint(dirents) {
		t.Fatalf("dirent shadow (%d) differs from the tree (%d)", len(dirents), len(gotD))
	}
	if fmt.Sprint(gotI) != fmt.Sprint(inodes) {
		t.Fatalf("inode shadow (%d) differs from the tree (%d)", len(inodes), len(gotI))
	}
}

func blockVisitor(fn func(format.BlockNr)) eb.CheckVisitor {
	return eb.CheckVisitor{Block: func(p eb.Ptr, _ int) { fn(p.Block) }}
}
