package inject

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// TestKinds: every kind damages one block of a tree on an image, the
// engine's check names that block with the kind's finding, and bad
// options are refused with ErrRefused (the image untouched).
func TestKinds(t *testing.T) {
	want := map[string]engine.ErrorID{Bitflip: engine.ErrNodeBadChecksum, Zero: engine.ErrNodeBadMagic,
		WrongOwner: engine.ErrNodeWrongOwner, DropRecord: engine.ErrTreeItemCount}
	for _, kind := range Kinds {
		if kind == StaleGen {
			continue // needs an older generation of the block: the repair matrix covers it
		}
		t.Run(kind, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
				t.Fatal(err)
			}
			res, err := Offline(img, Options{Tree: format.TreeAlloc, Kind: kind, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			e, err := engine.OpenPath(img, engine.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			s := e.Pin()
			defer s.Release()
			var ids []engine.ErrorID
			var blocks []format.BlockNr
			if _, err := s.Check(context.Background(), func(f engine.Finding) { ids, blocks = append(ids, f.ID), append(blocks, f.Block) }); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(ids, want[kind]) || (kind != DropRecord && !slices.Contains(blocks, format.BlockNr(res.Block))) {
				t.Fatalf("%s at block %d: findings %v at %v", kind, res.Block, ids, blocks)
			}
		})
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{{Tree: format.TreeAlloc, Kind: "melt"}, {Tree: 99, Kind: Bitflip}} {
		if _, err := Offline(img, o); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v: %v", o, err)
		}
	}
}
