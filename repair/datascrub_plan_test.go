package repair

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// planDataRef is the reference for planData: the simple plan, the three
// trees walked one after the other with plain scans, the sizes and the
// files a damaged extent item stops in maps.
func planDataRef(s *engine.Snapshot, scope *dataScope, res *engine.ScrubCursor) *dataPlan {
	p := &dataPlan{names: &nameTree{dirs: map[uint64][2]int{}}}
	if t, ok := s.ScanTree(format.TreeDir); ok {
		cur, from := uint64(0), 0
		_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeDirIndex || k.Off < 2 {
				return true
			}
			de, err := format.DecodeDirEntry(v)
			if err != nil {
				return true
			}
			if k.Obj != cur {
				if cur != 0 {
					p.names.dirs[cur] = [2]int{from, len(p.names.ents)}
				}
				cur, from = k.Obj, len(p.names.ents)
			}
			p.names.ents = append(p.names.ents, nameEnt{ino: de.Ino, mode: uint32(de.Type) << 12, name: de.Name})
			return true
		})
		if cur != 0 {
			p.names.dirs[cur] = [2]int{from, len(p.names.ents)}
		}
	}
	reach := p.names.reachable()
	sizes := map[uint64]uint64{}
	if t, ok := s.ScanTree(format.TreeInode); ok {
		_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeInodeItem || !reach[k.Obj] {
				return true
			}
			if in, err := format.DecodeInodeItem(v); err == nil && in.Mode&syscall.S_IFMT == syscall.S_IFREG {
				sizes[k.Obj] = in.Size
			}
			return true
		})
	}
	t, ok := s.ScanTree(format.TreeExtent)
	if !ok {
		return p
	}
	total := s.TotalBlocks()
	stopped := map[uint64]bool{}
	add := func(ino, fb, cnt uint64, fe format.FileExtent, at, size uint64) {
		if res != nil && ino < res.NextIno {
			p.skipped += cnt
			return
		}
		d := fe.Disk(at, fb)
		if res != nil && res.DiskOrder && d < res.NextDisk {
			p.skipped += cnt
			return
		}
		last := uint64(format.BlockSize)
		if end := (fb + cnt) * format.BlockSize; end > size {
			last = size - (fb+cnt-1)*format.BlockSize
		}
		p.maps = append(p.maps, dataMap{disk: d, ino: ino, fb: fb, n: uint16(cnt), coff: uint16(d - fe.Start), clen: uint16(fe.Len), last: uint16(last)})
	}
	_ = t.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type != format.TypeFileExtent || stopped[k.Obj] {
			return true
		}
		size, ok := sizes[k.Obj]
		if !ok {
			return true
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil || uint64(fe.Start)+fe.Len > total {
			stopped[k.Obj] = true
			return true
		}
		sizeBlocks := (size + format.BlockSize - 1) / format.BlockSize
		if k.Off >= sizeBlocks {
			return true
		}
		cnt := min(fe.Count, sizeBlocks-k.Off)
		if scope == nil {
			add(k.Obj, k.Off, cnt, fe, k.Off, size)
			return true
		}
		for _, r := range scope.files[k.Obj] {
			a, b := max(r.first, k.Off), min(r.first+r.n, k.Off+cnt)
			if a < b {
				add(k.Obj, a, b-a, fe, k.Off, size)
			}
		}
		return true
	})
	slices.SortFunc(p.maps, func(a, b dataMap) int {
		return cmp.Or(cmp.Compare(a.disk, b.disk), cmp.Compare(a.ino, b.ino), cmp.Compare(a.fb, b.fb))
	})
	return p
}

// TestPlanDataModel checks the data scrub's plan, made by three walks at
// once (the extent walk joining the sizes the inode walk streams), against
// the reference above on a populated image: intact, and with each kind of
// damage injected into the directory, inode and extent trees (leaves, and
// interior nodes where the tree has them); each with no cursor, resumed
// cursors of both kinds, and a scope.
func TestPlanDataModel(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		tree  format.TreeID
		kind  string
		level int
	}
	cases := []tc{{kind: "intact"}, {tree: format.TreeExtent, kind: "out-of-range", level: 0}}
	for _, tree := range []format.TreeID{format.TreeDir, format.TreeInode, format.TreeExtent} {
		for _, kind := range inject.Kinds {
			for _, level := range []int{0, 1} {
				cases = append(cases, tc{tree, kind, level})
			}
		}
	}
	refused := 0 // cases the injector refused
	for _, c := range cases {
		name := c.kind
		if c.kind != "intact" {
			name = fmt.Sprintf("%s/%s/level%d", c.tree, c.kind, c.level)
		}
		t.Run(name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(img, pristine, 0o600); err != nil {
				t.Fatal(err)
			}
			switch c.kind {
			case "intact":
			case "out-of-range":
				// A file extent item reaching past the device, in the
				// middle of a file's items: a read of the file stops
				// there, and so does the plan (the file's later items
				// are not planned).
				outOfRange(t, img)
			default:
				lv := c.level
				if _, err := inject.Offline(img, inject.Options{Tree: c.tree, Kind: c.kind, Seed: 5, Level: &lv}); err != nil {
					if errors.Is(err, inject.ErrRefused) {
						refused++
						t.Skipf("not injectable: %v", err)
					}
					t.Fatal(err)
				}
			}
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, ReadOnly: true, Engine: engine.Options{ReadAhead: c.level == 1}})
			if err != nil {
				t.Skipf("the damaged image does not open: %v", err)
			}
			defer f.Close()
			s := f.Engine().Pin()
			defer s.Release()
			ref := planDataRef(s, nil, nil)
			if len(ref.maps) == 0 && c.kind == "intact" {
				t.Fatal("the intact image plans no mappings")
			}
			mid := engine.ScrubCursor{NextIno: 300}
			var diskMid engine.ScrubCursor
			if len(ref.maps) > 0 {
				diskMid = engine.ScrubCursor{DiskOrder: true, NextDisk: ref.maps[len(ref.maps)/2].disk}
			}
			var bad []engine.BadBlock
			for i := 0; i < len(ref.maps); i += 7 {
				bad = append(bad, engine.BadBlock{Ino: ref.maps[i].ino, Offset: ref.maps[i].fb * format.BlockSize})
			}
			scope := scopeBlocks(bad)
			for _, run := range []struct {
				what  string
				scope *dataScope
				res   *engine.ScrubCursor
			}{{"whole", nil, nil}, {"resumed by inode", nil, &mid}, {"resumed by disk block", nil, &diskMid}, {"scope", scope, nil}} {
				got, err := planData(context.Background(), s, run.scope, run.res)
				if err != nil {
					t.Fatalf("%s: %v", run.what, err)
				}
				want := planDataRef(s, run.scope, run.res)
				if !slices.Equal(got.maps, want.maps) || got.skipped != want.skipped {
					t.Fatalf("%s: %d mappings (%d skipped), want %d (%d skipped)", run.what, len(got.maps), got.skipped, len(want.maps), want.skipped)
				}
				if !slices.Equal(got.names.ents, want.names.ents) {
					t.Fatalf("%s: %d names, want %d", run.what, len(got.names.ents), len(want.names.ents))
				}
				for _, m := range want.maps {
					if g, w := got.names.path(m.ino), want.names.path(m.ino); g != w || w == "" {
						t.Fatalf("%s: inode %d: path %q, want %q", run.what, m.ino, g, w)
					}
				}
			}
		})
	}
	if refused > 4 {
		t.Fatalf("the injector refused %d of the %d cases", refused, len(cases))
	}
}

// outOfRange rewrites the second file extent item of the first file with
// three or more so that it reaches past the end of the device.
func outOfRange(t *testing.T, img string) {
	e, err := engine.OpenPath(img, engine.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	err = e.Update(func(tx *engine.Tx) error {
		tr, err := tx.Tree(format.TreeExtent)
		if err != nil {
			return err
		}
		var keys []format.Key
		var target format.Key
		found := false
		if err := tr.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
			if k.Type != format.TypeFileExtent {
				return true
			}
			if len(keys) > 0 && keys[0].Obj != k.Obj {
				keys = keys[:0]
			}
			if keys = append(keys, k); len(keys) == 3 {
				target, found = keys[1], true
				return false
			}
			return true
		}); err != nil {
			return err
		}
		if !found {
			return errors.New("no file with three extent items")
		}
		v, _, err := tr.Get(target, nil)
		if err != nil {
			return err
		}
		fe, err := format.DecodeFileExtent(v)
		if err != nil {
			return err
		}
		fe.Start = format.BlockNr(e.TotalBlocks() - 1)
		return tr.Put(target, fe.Encode())
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
}
