package fs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// cloneModel copies the subtree at n for a snapshot with id: hard links
// stay links (within a subvolume, every link of a file is in it).
func cloneModel(m *svModel, n *mnode, id uint64, memo map[*mnode]*mnode) *mnode {
	if c, ok := memo[n]; ok {
		return c
	}
	c := &mnode{dir: n.dir, data: slices.Clone(n.data), target: n.target, nlink: n.nlink}
	memo[n] = c
	m.sv[c] = id
	if n.dir {
		c.children = map[string]*mnode{}
		for name, ch := range n.children {
			c.children[name] = cloneModel(m, ch, id, memo)
		}
	}
	return c
}

// snapStep is svStep with snapshots: taken of a random subvolume into a
// random directory (read-only or not), with the refusals predicted, and
// fill steps run by hand so that every other step meets snapshots
// mid-fill.
func snapStep(t *testing.T, r *rand.Rand, f *FS, m *svModel, n int) string {
	t.Helper()
	switch op := r.IntN(10); {
	case op < 2:
		dirs := m.paths(true)
		var roots [][]string
		for _, p := range dirs {
			if m.roots[m.get(p)] {
				roots = append(roots, p)
			}
		}
		if len(roots) == 0 {
			return "no subvolume to snapshot"
		}
		src, dst := roots[r.IntN(len(roots))], dirs[r.IntN(len(dirs))]
		srcNode := m.get(src)
		id := m.sv[srcNode]
		holds := false
		for _, q := range dirs {
			if len(q) > len(src) && slices.Equal(q[:len(src)], src) && m.roots[m.get(q)] {
				holds = true
			}
		}
		srcA, err := f.Resolve(join(src))
		if err != nil {
			t.Fatal(err)
		}
		dstA, err := f.Resolve(join(dst))
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprint("s", n)
		ro := r.IntN(3) == 0
		_, filling := f.snap.fillOf(id)
		info, err := f.CreateSnapshot(srcA.Ino, dstA.Ino, name, ro)
		switch {
		case m.isRO(dst):
			if !errors.Is(err, syscall.EROFS) {
				t.Fatalf("snapshot into a read-only subvolume: %v", err)
			}
			return "snapshot EROFS"
		case filling:
			if !errors.Is(err, ErrSnapFilling) {
				t.Fatalf("snapshot of %s mid-fill: %v", join(src), err)
			}
			return "snapshot EBUSY filling"
		case holds:
			if !errors.Is(err, ErrSnapNested) {
				t.Fatalf("snapshot of %s holding a subvolume: %v", join(src), err)
			}
			return "snapshot EBUSY nested"
		case err != nil:
			t.Fatalf("snapshot %s to %s/%s: %v", join(src), join(dst), name, err)
		}
		c := cloneModel(m, srcNode, info.ID, map[*mnode]*mnode{})
		parent := m.get(dst)
		parent.children[name] = c
		parent.nlink++
		m.roots[c] = true
		if ro {
			m.ro[info.ID] = true
		}
		return "snapshot"
	case op < 3:
		if err := f.e.Update(func(tx *engine.Tx) error {
			_, err := f.fillStep(tx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return "fill step"
	default:
		return svStep(t, r, f, m, n)
	}
}

// TestSnapshotModel: random changes across subvolumes and their
// snapshots (writable and read-only, of snapshots too) against the model,
// with fills advanced by hand in batches of two inodes, so that most
// steps meet a snapshot mid-fill. The full self-check runs after every
// step; every 50 steps the whole tree is compared; every 100 the image
// as the last sync left it (a kill, fills under way) is mounted, compared
// and checked; at the end every fill runs out and the image is remounted.
func TestSnapshotModel(t *testing.T) {
	manualFill(t, 2)
	for seed := uint64(1); seed <= 4; seed++ {
		if seed > 1 && os.Getenv("SCRUBD_MATRIX_ALL") == "" {
			continue
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 120))
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			m := &svModel{model: &model{root: newDir()}, sv: map[*mnode]uint64{}, roots: map[*mnode]bool{}, ro: map[uint64]bool{}}
			m.sv[m.root] = 0
			ops := 300
			switch {
			case raceEnabled:
				ops = 60
			case testing.Short():
				ops = 150
			}
			counts := map[string]int{}
			for i := 1; i <= ops; i++ {
				counts[snapStep(t, r, f, m, i)]++
				mustClean(t, f)
				if i%50 == 0 {
					compareSubvols(t, f, m)
				}
				if i%100 == 0 {
					k := mount(t, nopClose{disk.NewMemFrom(slices.Clone(dev.Bytes()))}, Options{})
					compareSubvols(t, k, m)
					mustClean(t, k)
					k.Close()
				}
			}
			t.Logf("steps: %v", counts)
			if !raceEnabled && counts["snapshot"] == 0 {
				t.Error("no snapshot step ran")
			}
			compareSubvols(t, f, m)
			if err := f.fillAll(t.Context(), f.e); err != nil {
				t.Fatal(err)
			}
			if f.snap.fills.Load() != 0 || f.e.PassRequired(engine.PassSnapshotFill) {
				t.Fatal("fills left after fillAll")
			}
			compareSubvols(t, f, m)
			mustClean(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			f = mount(t, nopClose{dev}, Options{})
			f.WaitReaper()
			compareSubvols(t, f, m)
			mustClean(t, f)
			f.Close()
		})
	}
}

var _ = format.SubvolOf
