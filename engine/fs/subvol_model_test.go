package fs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// svModel is the filesystem model with subvolumes: which subvolume each
// node is in (by the id the filesystem gave it; 0 is the top level).
type svModel struct {
	*model
	sv    map[*mnode]uint64 // node → subvolume id
	roots map[*mnode]bool   // subvolume roots
	ro    map[uint64]bool   // read-only subvolumes (snapshots)
}

// isRO reports whether the node at p is in a read-only subvolume.
func (m *svModel) isRO(p []string) bool { return m.ro[m.svOf(p)] }

// wantROErr checks that a change refused for a read-only subvolume got
// EROFS, and reports whether it was one.
func wantROErr(t *testing.T, ro bool, what string, err error) bool {
	t.Helper()
	if !ro {
		return false
	}
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("%s in a read-only subvolume: %v", what, err)
	}
	return true
}

// svOf returns the subvolume of the node at p.
func (m *svModel) svOf(p []string) uint64 { return m.sv[m.get(p)] }

// compareSubvols checks the model (compare) and that every inode is in
// the subvolume the model says, and that the subvolume list names each
// live subvolume's root at its path.
func compareSubvols(t *testing.T, f *FS, m *svModel) {
	t.Helper()
	compare(t, f, m.model)
	want := map[string]uint64{}
	for _, wantDir := range []bool{true, false} {
		for _, p := range m.paths(wantDir) {
			n := m.get(p)
			a, err := f.Resolve(join(p))
			if err != nil {
				t.Fatalf("resolve %s: %v", join(p), err)
			}
			if got := SubvolOf(a.Ino); got != m.sv[n] {
				t.Fatalf("%s: inode %#x in subvolume %d, model %d", join(p), a.Ino, got, m.sv[n])
			}
			if m.roots[n] {
				want[join(p)] = m.sv[n]
				if a.Ino != format.SubvolRootIno(m.sv[n]) {
					t.Fatalf("%s: root inode %#x", join(p), a.Ino)
				}
			}
		}
	}
	list, err := f.Subvols()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, s := range list {
		if !s.Deleting {
			got[s.Path] = s.ID
		}
	}
	if len(got) != len(want) {
		t.Fatalf("subvolumes %v, model %v", got, want)
	}
	for p, id := range want {
		if got[p] != id {
			t.Fatalf("subvolume at %s: %d, model %d (list %v)", p, got[p], id, got)
		}
	}
}

// svStep makes one random change, predicting its result (EXDEV across
// subvolumes, EPERM for rmdir of a root, ENOTEMPTY for deleting a
// subvolume that holds one).
func svStep(t *testing.T, r *rand.Rand, f *FS, m *svModel, n int) string {
	t.Helper()
	dirs := m.paths(true)
	files := m.paths(false)
	dirOf := func(p []string) uint64 {
		a, err := f.Resolve(join(p))
		if err != nil {
			t.Fatalf("resolve %s: %v", join(p), err)
		}
		return a.Ino
	}
	name := fmt.Sprint("n", n)
	switch op := r.IntN(20); {
	case op < 2: // a subvolume
		p := dirs[r.IntN(len(dirs))]
		sv, err := f.CreateSubvol(dirOf(p), name)
		if wantROErr(t, m.isRO(p), "create subvolume", err) {
			return "subvol EROFS"
		}
		if err != nil {
			t.Fatalf("create subvolume in %s: %v", join(p), err)
		}
		c := newDir()
		parent := m.get(p)
		parent.children[name] = c
		parent.nlink++
		m.sv[c], m.roots[c] = sv.ID, true
		return "subvol"
	case op < 4: // a directory
		p := dirs[r.IntN(len(dirs))]
		_, err := f.Mkdir(dirOf(p), name, NewInode{Mode: syscall.S_IFDIR | 0o755})
		if wantROErr(t, m.isRO(p), "mkdir", err) {
			return "mkdir EROFS"
		}
		if err != nil {
			t.Fatal(err)
		}
		c := newDir()
		parent := m.get(p)
		parent.children[name] = c
		parent.nlink++
		m.sv[c] = m.sv[parent]
		return "mkdir"
	case op < 8: // a file with data
		p := dirs[r.IntN(len(dirs))]
		a, err := f.Create(dirOf(p), name, NewInode{Mode: syscall.S_IFREG | 0o644})
		if wantROErr(t, m.isRO(p), "create", err) {
			return "create EROFS"
		}
		if err != nil {
			t.Fatal(err)
		}
		data := randBytes(r, r.IntN(5*bs))
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		c := &mnode{data: data, nlink: 1}
		m.get(p).children[name] = c
		m.sv[c] = m.sv[m.get(p)]
		return "create"
	case op < 10 && len(files) > 0: // overwrite part of a file
		p := files[r.IntN(len(files))]
		c := m.get(p)
		data := randBytes(r, 1+r.IntN(2*bs))
		off := r.IntN(len(c.data) + 1)
		_, err := f.Write(dirOf(p), data, int64(off))
		if wantROErr(t, m.isRO(p), "write", err) {
			return "write EROFS"
		}
		if err != nil {
			t.Fatal(err)
		}
		if end := off + len(data); end > len(c.data) {
			c.data = append(c.data, make([]byte, end-len(c.data))...)
		}
		copy(c.data[off:], data)
		return "write"
	case op < 13 && len(files) > 0: // rename a file to a new name
		p, d := files[r.IntN(len(files))], dirs[r.IntN(len(dirs))]
		err := f.Rename(dirOf(p[:len(p)-1]), p[len(p)-1], dirOf(d), name, 0)
		if wantROErr(t, m.isRO(p) || m.isRO(d), "rename", err) {
			return "rename EROFS"
		}
		if m.svOf(p[:len(p)-1]) != m.svOf(d) {
			if !errors.Is(err, syscall.EXDEV) {
				t.Fatalf("rename %s into %s across subvolumes: %v", join(p), join(d), err)
			}
			return "rename EXDEV"
		}
		if err != nil {
			t.Fatalf("rename %s into %s: %v", join(p), join(d), err)
		}
		c := m.get(p)
		delete(m.get(p[:len(p)-1]).children, p[len(p)-1])
		m.get(d).children[name] = c
		return "rename"
	case op < 14 && len(files) > 0: // a hard link
		p, d := files[r.IntN(len(files))], dirs[r.IntN(len(dirs))]
		_, err := f.Link(dirOf(p), dirOf(d), name)
		if wantROErr(t, m.isRO(p) || m.isRO(d), "link", err) {
			return "link EROFS"
		}
		if m.svOf(p) != m.svOf(d) {
			if !errors.Is(err, syscall.EXDEV) {
				t.Fatalf("link %s into %s across subvolumes: %v", join(p), join(d), err)
			}
			return "link EXDEV"
		}
		if err != nil {
			t.Fatal(err)
		}
		c := m.get(p)
		c.nlink++
		m.get(d).children[name] = c
		return "link"
	case op < 16 && len(files) > 1: // a copy that shares blocks, across subvolumes too
		p, q := files[r.IntN(len(files))], files[r.IntN(len(files))]
		src, dst := m.get(p), m.get(q)
		if src == dst || len(src.data) == 0 {
			return "no copy"
		}
		_, err := f.CopyRange(dirOf(p), 0, dirOf(q), 0, int64(len(src.data)))
		if wantROErr(t, m.isRO(q), "copy", err) {
			return "copy EROFS"
		}
		if err != nil {
			t.Fatalf("copy %s to %s: %v", join(p), join(q), err)
		}
		if len(dst.data) < len(src.data) {
			dst.data = append(dst.data, make([]byte, len(src.data)-len(dst.data))...)
		}
		copy(dst.data, src.data)
		return "copy"
	case op < 17 && len(files) > 0: // unlink
		p := files[r.IntN(len(files))]
		err := f.Unlink(dirOf(p[:len(p)-1]), p[len(p)-1])
		if wantROErr(t, m.isRO(p), "unlink", err) {
			return "unlink EROFS"
		}
		if err != nil {
			t.Fatal(err)
		}
		c := m.get(p)
		c.nlink--
		delete(m.get(p[:len(p)-1]).children, p[len(p)-1])
		return "unlink"
	case op < 19: // delete a subvolume
		var roots [][]string
		for _, p := range dirs {
			if m.roots[m.get(p)] {
				roots = append(roots, p)
			}
		}
		if len(roots) == 0 {
			return "no subvolume to delete"
		}
		p := roots[r.IntN(len(roots))]
		c := m.get(p)
		if err := f.Rmdir(dirOf(p[:len(p)-1]), p[len(p)-1]); !errors.Is(err, syscall.EPERM) && !(m.isRO(p[:len(p)-1]) && errors.Is(err, syscall.EROFS)) {
			t.Fatalf("rmdir of subvolume %s: %v", join(p), err)
		}
		holds := false
		for _, q := range dirs {
			if len(q) > len(p) && slices.Equal(q[:len(p)], p) && m.roots[m.get(q)] {
				holds = true
			}
		}
		_, err := f.DeleteSubvol(dirOf(p[:len(p)-1]), p[len(p)-1])
		if wantROErr(t, m.isRO(p[:len(p)-1]), "delete subvolume", err) {
			return "delete EROFS"
		}
		if len(f.snap.sourceFills(m.sv[c])) > 0 && !holds {
			if !errors.Is(err, ErrSnapSource) {
				t.Fatalf("delete of %s, a snapshot's source mid-fill: %v", join(p), err)
			}
			return "delete EBUSY"
		}
		if holds {
			if !errors.Is(err, syscall.ENOTEMPTY) {
				t.Fatalf("delete of %s holding a subvolume: %v", join(p), err)
			}
			return "delete ENOTEMPTY"
		}
		if err != nil {
			t.Fatalf("delete subvolume %s: %v", join(p), err)
		}
		parent := m.get(p[:len(p)-1])
		delete(parent.children, p[len(p)-1])
		parent.nlink--
		delete(m.roots, c)
		delete(m.ro, m.sv[c])
		return "delete"
	default: // the reaper catches up
		f.WaitReaper()
		return "wait"
	}
}

// TestSubvolModel: random changes across nested subvolumes against the
// model, with the full self-check after every step, a kill (the image
// as the last sync left it, with deletions under way) and a remount.
func TestSubvolModel(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		if seed > 1 && os.Getenv("SCRUBD_MATRIX_ALL") == "" {
			continue
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 90))
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			m := &svModel{model: &model{root: newDir()}, sv: map[*mnode]uint64{}, roots: map[*mnode]bool{}}
			m.sv[m.root] = 0
			ops := 200
			switch {
			case raceEnabled:
				ops = 50
			case testing.Short():
				ops = 120
			}
			counts := map[string]int{}
			for i := 1; i <= ops; i++ {
				counts[svStep(t, r, f, m, i)]++
				mustClean(t, f)
				if i%50 == 0 {
					compareSubvols(t, f, m)
				}
				if i%100 == 0 {
					// Killed: the image as the last sync left it; the
					// mount's pass finishes the deletions under way.
					k := mount(t, nopClose{disk.NewMemFrom(slices.Clone(dev.Bytes()))}, Options{})
					compareSubvols(t, k, m)
					if pending := k.reapPending(); pending {
						t.Fatal("a deletion left after the mount's pass")
					}
					mustClean(t, k)
					k.Close()
				}
			}
			t.Logf("steps: %v", counts)
			for _, op := range []string{"subvol", "delete", "rename EXDEV", "copy"} {
				if raceEnabled || seed != 1 {
					break // too few steps to be sure of each; seed 1's full pass is (seed 2 never renames across)
				}
				found := false
				for k := range counts {
					found = found || strings.HasPrefix(k, op)
				}
				if !found {
					t.Errorf("no %q step ran", op)
				}
			}
			compareSubvols(t, f, m)
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
