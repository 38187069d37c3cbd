package repair

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/hooks"
)

// Online rebuild of the file extent tree from the reverse mapping — XFS
// rebuilds a file's block map from the rmap the same way (bmap_repair.c).
//
// On a format 1.2 image (format.IncompatRmapMaps) each file extent item
// (inode, file block) → disk extent, offset, count has exactly one rmap
// record keyed (disk start, inode, file block) holding the extent's length
// and the same offset and count: the record is the item, read from the
// other side. So the rebuild
//
//  1. subscribes to the rmap hook and pins a committed generation G (the
//     delayed refs of every committed generation are applied, so G's rmap
//     records and G's file extents are the same set);
//  2. scans G's rmap in key order into the shadow: each file's record
//     becomes its file extent item; the old extent tree's blocks are the
//     rmap's records of owner "extent". A damaged rmap, one the engine
//     runs without, or an image whose records carry no mappings (format
//     1.1) refuses the rebuild: the information is not there;
//  3. follows the rmap events, which carry the mapping: a file gaining a
//     reference puts its item, losing one deletes it (unless the item
//     there is already another extent's: records apply in disk order, so
//     a file block that changed extents may see the new record first), a
//     remap (the item cut short under the same key) rewrites it; events of the extent
//     tree's own blocks keep the list of the old tree's blocks current,
//     as in the rmap rebuild (the tree keeps changing: writers write to
//     every file whose records are readable, see fs.probeExtents);
//  4. loads, catches up, swaps and reaps like every rebuild.
//
// The tree is shared by every file, so the rebuild is of the whole tree,
// whichever leaves were damaged. Data checksums are not touched: they are
// kept, never invented. Inode sizes are not consulted: the records give
// every mapped block exactly, and a file's blocks past its size were
// dropped by the truncate that set it.

// RebuildExtent rebuilds the file extent tree of e online.
func RebuildExtent(ctx context.Context, e *engine.Engine, opts RebuildOptions) (*RebuildResult, error) {
	if e.RmapSick() {
		return nil, fmt.Errorf("cannot rebuild the file extent tree from an rmap the engine runs without: %w", format.ErrCorrupt)
	}
	pin := e.Pin()
	sb := pin.Super()
	pin.Release()
	if sb.Incompat&format.IncompatRmapMaps == 0 {
		return nil, fmt.Errorf("cannot rebuild the file extent tree of a format %d.%d image: its reverse mappings do not record which blocks each file maps: %w", sb.Major, sb.Minor, ErrNoMappings)
	}
	r := &extentRebuild{}
	return rebuild(ctx, e, opts, rebuildSpec[engine.RmapEvent]{
		Name: "extent", Tree: format.TreeExtent, Structure: engine.StructExtent,
		ItemSize: format.FileExtentSize,
		Codec:    rmapEvents, Gen: rmapGen, Apply: r.apply,
		Chain: func(e *engine.Engine) *hooks.Chain[engine.RmapEvent] { return &e.Hooks().Rmap },
		Expect: func(s *engine.Snapshot) uint64 {
			// Every file record, and the metadata ones: a bound.
			t, _ := s.ScanTree(format.TreeRmap)
			return t.Items
		},
		Scan: r.scan,
		Old:  func(o *oldTree) { r.old = o },
	})
}

// ErrNoMappings: the image's reverse mappings do not record which blocks
// of an extent each file maps (format 1.1), so the file extent tree
// cannot be rebuilt from them.
var ErrNoMappings = errors.New("reverse mappings without file mappings")

// extentRebuild is the extent tree's own state in a rebuild.
type extentRebuild struct {
	old *oldTree // set when the scan has listed them, before any apply
	buf [format.FileExtentSize]byte
}

// fileExtentOf is the file extent item an rmap record of a file implies.
func fileExtentOf(start format.BlockNr, it format.RmapItem) format.FileExtent {
	return format.FileExtent{Start: start, Len: it.Len, Offset: it.Offset, Count: it.Count}
}

// scan puts into shadow the file extent items generation s implies (one
// per file record of its rmap) and returns the old extent tree's blocks.
func (r *extentRebuild) scan(ctx context.Context, s *engine.Snapshot, shadow *eb.Tree, th *throttle, progress *atomic.Uint64) ([]format.BlockNr, error) {
	var old []format.BlockNr
	err := walkRmap(ctx, s, "the file extent tree", func(start format.BlockNr, o format.Owner, it format.RmapItem) error {
		if !o.IsData() {
			if o.Tree == format.TreeExtent {
				old = append(old, start)
			}
			return nil
		}
		if !it.Mapped() {
			return fmt.Errorf("rmap record of %s at %d carries no mapping: %w", o, start, ErrNoMappings)
		}
		th.tick()
		progress.Add(1)
		return shadow.Put(format.FileExtentKey(o.Inode, o.Offset), fileExtentOf(start, it).Encode())
	})
	if err != nil {
		return nil, err
	}
	return old, nil
}

// apply applies an rmap event to t (the shadow, the staged tree or the
// swapped-in one) and keeps the set of the old tree's blocks current. The
// shadow serializes the calls.
func (r *extentRebuild) apply(t *eb.Tree, ev engine.RmapEvent) error {
	if !ev.Owner.IsData() {
		if ev.Owner.Tree == format.TreeExtent {
			switch ev.Op {
			case engine.OpInsert:
				r.old.add(ev.Start)
			case engine.OpDelete:
				r.old.remove(ev.Start)
			}
		}
		return nil
	}
	k := format.FileExtentKey(ev.Owner.Inode, ev.Owner.Offset)
	var err error
	switch ev.Op {
	case engine.OpInsert, engine.OpUpdate:
		if ev.Count == 0 {
			return fmt.Errorf("rmap %s of %s at %d carries no mapping: %w", ev.Op, ev.Owner, ev.Start, ErrNoMappings)
		}
		fe := fileExtentOf(ev.Start, format.RmapItem{Len: ev.Len, Offset: ev.Offset, Count: ev.Count})
		err = t.Put(k, fe.Encode())
	case engine.OpDelete:
		// Delayed refs apply in disk order: when a file block changes
		// extents in one transaction, the new extent's record may come
		// first and already have replaced the item; the old one's
		// delete then leaves it alone.
		var v []byte
		var ok bool
		if v, ok, err = t.Get(k, r.buf[:0]); err == nil && ok {
			var fe format.FileExtent
			if fe, err = format.DecodeFileExtent(v); err == nil && fe.Start == ev.Start {
				_, err = t.Delete(k)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("rmap %s of %s: %w", ev.Op, k, err)
	}
	return nil
}
