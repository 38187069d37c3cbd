package fs

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

func TestXattrItemCodec(t *testing.T) {
	for _, x := range []format.XattrItem{
		{Name: "user.a", Value: nil},
		{Name: "user.a", Value: []byte{0, 1, 2}},
		{Name: "system.posix_acl_access", Value: bytes.Repeat([]byte{7}, format.MaxXattrValue("system.posix_acl_access"))},
		{Name: "trusted." + strings.Repeat("n", format.MaxXattrName-8), Value: []byte("v")},
	} {
		got, err := format.DecodeXattrItem(x.Encode())
		if err != nil {
			t.Fatalf("%q: %v", x.Name, err)
		}
		if got.Name != x.Name || !bytes.Equal(got.Value, x.Value) || got.Total != len(x.Value) {
			t.Fatalf("round trip of %q: got %q (%d bytes)", x.Name, got.Name, len(got.Value))
		}
	}
	good := format.XattrItem{Name: "user.k", Value: []byte("value")}.Encode()
	bad := map[string][]byte{
		"short":      good[:3],
		"empty name": append([]byte{0, 0, 5, 0}, "value"...),
		"name too long": func() []byte {
			b := slices.Clone(good)
			b[0], b[1] = 0, 1 // 256
			return b
		}(),
		"value past the end": good[:len(good)-1],
		"trailing bytes":     append(slices.Clone(good), 0),
		"NUL in name":        bytes.Replace(slices.Clone(good), []byte("user.k"), []byte("user\x00k"), 1),
		"over one item":      format.XattrItem{Name: "user.k", Value: make([]byte, format.MaxXattrValue("user.k")+1)}.Encode(),
	}
	large, _ := format.SplitXattr("user.k", make([]byte, 3000))
	lb := large.Encode()
	if got, err := format.DecodeXattrItem(lb); err != nil || got.Total != 3000 || len(got.Value) != format.XattrHeadPart("user.k") {
		t.Fatalf("large head: %+v %v", got.Total, err)
	}
	bad["large head, short"] = lb[:len(lb)-1]
	bad["large head, value fits one item"] = func() []byte {
		b := slices.Clone(lb)
		b[4], b[5], b[6], b[7] = 100, 0, 0, 0
		return b
	}()
	bad["large head, value over 64 KiB"] = func() []byte {
		b := slices.Clone(lb)
		b[4], b[5], b[6], b[7] = 1, 0, 1, 0
		return b
	}()
	for what, b := range bad {
		if _, err := format.DecodeXattrItem(b); err == nil {
			t.Errorf("%s: decoded", what)
		} else if _, ok := format.AsCorrupt(err); !ok {
			t.Errorf("%s: %v is not a corruption error", what, err)
		}
	}
}

// FuzzXattrItem: the decoder never panics, bounds every length, and what
// it accepts encodes back to the same bytes.
func FuzzXattrItem(f *testing.F) {
	f.Add(format.XattrItem{Name: "user.k", Value: []byte("value")}.Encode())
	f.Add(format.XattrItem{Name: "system.posix_acl_access", Value: make([]byte, 28)}.Encode())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	head, _ := format.SplitXattr("user.large", make([]byte, 5000))
	f.Add(head.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := format.DecodeXattrItem(b)
		if err != nil {
			return
		}
		if len(x.Name) == 0 || len(x.Name) > format.MaxXattrName || len(x.Value) > format.MaxXattrValue(x.Name) && !x.Large() ||
			x.Total > format.XattrSizeMax || x.Large() && len(x.Value) != format.XattrHeadPart(x.Name) {
			t.Fatalf("accepted name of %d bytes, value of %d of %d", len(x.Name), len(x.Value), x.Total)
		}
		if !bytes.Equal(x.Encode(), b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func TestXattrErrnos(t *testing.T) {
	f := mount(t, newDev(t), Options{})
	defer f.Close()
	a, err := f.Create(RootIno, "f", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	ino := a.Ino
	if _, ok := f.Engine().Pin().Tree(format.TreeXattr); ok {
		t.Fatal("a new image has an xattr tree before any attribute")
	}
	// Before the tree exists.
	if _, err := f.GetXattr(ino, "user.x"); Errno(err) != syscall.ENODATA {
		t.Fatalf("get on an image without the tree: %v", err)
	}
	if names, err := f.ListXattr(ino); err != nil || len(names) != 0 {
		t.Fatalf("list on an image without the tree: %v %v", names, err)
	}
	if err := f.RemoveXattr(ino, "user.x"); Errno(err) != syscall.ENODATA {
		t.Fatalf("remove on an image without the tree: %v", err)
	}
	if err := f.SetXattr(ino, "user.x", []byte("1"), XattrReplace); Errno(err) != syscall.ENODATA {
		t.Fatalf("replace of a missing attribute: %v", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.SetXattr(ino, "user.x", []byte("1"), XattrCreate))
	if err := f.SetXattr(ino, "user.x", []byte("2"), XattrCreate); Errno(err) != syscall.EEXIST {
		t.Fatalf("create of an existing attribute: %v", err)
	}
	must(f.SetXattr(ino, "user.x", []byte("2"), XattrReplace))
	must(f.SetXattr(ino, "user.empty", nil, 0))
	if v, err := f.GetXattr(ino, "user.empty"); err != nil || len(v) != 0 {
		t.Fatalf("empty value: %q %v", v, err)
	}
	cases := []struct {
		name  string
		value []byte
		flags uint32
		want  syscall.Errno
	}{
		{"", nil, 0, syscall.ERANGE},
		{"user." + strings.Repeat("n", 251), nil, 0, syscall.ERANGE},
		{"user.", nil, 0, syscall.EOPNOTSUPP},
		{"os2.x", nil, 0, syscall.EOPNOTSUPP},
		{"system.other", nil, 0, syscall.EOPNOTSUPP},
		{"user.y", nil, XattrCreate | XattrReplace, syscall.EINVAL},
		{"user.y", nil, 4, syscall.EINVAL},
		{"user.big", make([]byte, format.XattrSizeMax+1), 0, syscall.E2BIG},
	}
	for _, c := range cases {
		if err := f.SetXattr(ino, c.name, c.value, c.flags); Errno(err) != c.want {
			t.Errorf("set %q (%d bytes, flags %d): %v, want %v", c.name, len(c.value), c.flags, err, c.want)
		}
	}
	must(f.SetXattr(ino, "user.big", make([]byte, format.MaxXattrValue("user.big")), 0))
	// POSIX ACLs: the owner, mask and other entries are the mode; a
	// minimal ACL only sets the mode; a bad one is EINVAL.
	acl := func(entries ...[3]uint32) []byte {
		b := []byte{2, 0, 0, 0}
		for _, e := range entries {
			b = append(b, byte(e[0]), byte(e[0]>>8), byte(e[1]), 0, byte(e[2]), byte(e[2]>>8), byte(e[2]>>16), byte(e[2]>>24))
		}
		return b
	}
	if err := f.SetXattr(ino, "system.posix_acl_access", []byte{3, 0, 0, 0}, 0); Errno(err) != syscall.EINVAL {
		t.Fatalf("ACL of version 3: %v", err)
	}
	must(f.SetXattr(ino, "system.posix_acl_access", acl([3]uint32{1, 7, 0}, [3]uint32{4, 5, 0}, [3]uint32{0x20, 0, 0}), 0))
	if a, err := f.GetAttr(ino); err != nil || a.Mode&0o777 != 0o750 {
		t.Fatalf("mode after a minimal ACL: %o %v", a.Mode, err)
	}
	if _, err := f.GetXattr(ino, "system.posix_acl_access"); Errno(err) != syscall.ENODATA {
		t.Fatalf("a minimal ACL was stored: %v", err)
	}
	full := acl([3]uint32{1, 6, 0}, [3]uint32{2, 6, 1234}, [3]uint32{4, 4, 0}, [3]uint32{0x10, 6, 0}, [3]uint32{0x20, 4, 0})
	must(f.SetXattr(ino, "system.posix_acl_access", full, 0))
	if a, err := f.GetAttr(ino); err != nil || a.Mode&0o777 != 0o664 {
		t.Fatalf("mode after an ACL with a mask: %o %v", a.Mode, err)
	}
	if v, err := f.GetXattr(ino, "system.posix_acl_access"); err != nil || !bytes.Equal(v, full) {
		t.Fatalf("ACL read back: %v %v", v, err)
	}
	if _, err := f.GetXattr(ino, "os2.x"); Errno(err) != syscall.EOPNOTSUPP {
		t.Fatalf("get in an unknown namespace: %v", err)
	}
	if _, err := f.GetXattr(ino, "user.nothing"); Errno(err) != syscall.ENODATA {
		t.Fatalf("get of a missing name: %v", err)
	}
	if _, err := f.GetXattr(9999, "user.x"); Errno(err) != syscall.ENOENT {
		t.Fatalf("get on a missing inode: %v", err)
	}
	names, err := f.ListXattr(ino)
	must(err)
	slices.Sort(names)
	if want := []string{"system.posix_acl_access", "user.big", "user.empty", "user.x"}; !slices.Equal(names, want) {
		t.Fatalf("list: %q, want %q", names, want)
	}
	must(f.RemoveXattr(ino, "user.x"))
	if err := f.RemoveXattr(ino, "user.x"); Errno(err) != syscall.ENODATA {
		t.Fatalf("second remove: %v", err)
	}
	must(f.Sync())
	if sb := f.Engine().Pin().Super(); sb.RoCompat&format.RoCompatXattr == 0 {
		t.Fatalf("ro_compat %#x after the first attribute: no xattr bit", sb.RoCompat)
	}
	mustClean(t, f)
	// The last unlink drops the inode's attributes; another file's stay.
	b, err := f.Create(RootIno, "g", NewInode{Mode: 0o644})
	must(err)
	must(f.SetXattr(b.Ino, "user.keep", []byte("k"), 0))
	must(f.Unlink(RootIno, "f"))
	mustClean(t, f)
	if n := xattrItems(t, f); n != 1 {
		t.Fatalf("%d xattr items after the unlink, want 1", n)
	}
	// Unlinked while open: the attributes go with the last close.
	h, err := f.Create(RootIno, "h", NewInode{Mode: 0o644})
	must(err)
	must(f.Open(h.Ino))
	must(f.SetXattr(h.Ino, "user.open", []byte("o"), 0))
	must(f.Unlink(RootIno, "h"))
	if v, err := f.GetXattr(h.Ino, "user.open"); err != nil || string(v) != "o" {
		t.Fatalf("attribute of an open unlinked file: %q %v", v, err)
	}
	must(f.Release(h.Ino))
	mustClean(t, f)
	if n := xattrItems(t, f); n != 1 {
		t.Fatalf("%d xattr items after the last close, want 1", n)
	}
}

// xattrItems counts the items of the xattr tree in the running transaction.
func xattrItems(t *testing.T, f *FS) int {
	t.Helper()
	s := f.Engine().Pin()
	defer s.Release()
	tr, ok := s.Tree(format.TreeXattr)
	if !ok {
		return 0
	}
	n := 0
	if err := tr.Ascend(format.Key{}, func(format.Key, []byte) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// xattrModel is what a file's attributes should be.
type xattrModel map[string]string

func (m xattrModel) step(t *testing.T, r *rand.Rand, f *FS, ino uint64) {
	t.Helper()
	name := fmt.Sprintf("user.k%d", r.IntN(12))
	if r.IntN(8) == 0 {
		name = "security.s" + strings.Repeat("x", r.IntN(200))
	}
	_, had := m[name]
	switch op := r.IntN(10); {
	case op < 5:
		n := r.IntN(format.MaxXattrValue(name) + 1)
		if r.IntN(4) == 0 { // a large value, split over items (format 1.6)
			n = r.IntN(format.XattrSizeMax + 1)
		}
		v := string(randBytes(r, n))
		flags := uint32(r.IntN(3))
		err := f.SetXattr(ino, name, []byte(v), flags)
		switch {
		case flags == XattrCreate && had:
			if Errno(err) != syscall.EEXIST {
				t.Fatalf("create of existing %q: %v", name, err)
			}
		case flags == XattrReplace && !had:
			if Errno(err) != syscall.ENODATA {
				t.Fatalf("replace of missing %q: %v", name, err)
			}
		case err != nil:
			t.Fatalf("set %q: %v", name, err)
		default:
			m[name] = v
		}
	case op < 7:
		err := f.RemoveXattr(ino, name)
		if had && err != nil || !had && Errno(err) != syscall.ENODATA {
			t.Fatalf("remove %q (present %v): %v", name, had, err)
		}
		delete(m, name)
	default:
		v, err := f.GetXattr(ino, name)
		if had && (err != nil || string(v) != m[name]) || !had && Errno(err) != syscall.ENODATA {
			t.Fatalf("get %q (present %v): %d bytes, %v", name, had, len(v), err)
		}
	}
}

// compareXattrs fails unless ino's attributes are m's.
func compareXattrs(t *testing.T, f *FS, ino uint64, m xattrModel) {
	t.Helper()
	got, err := readXattrs(f, ino)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, m) {
		t.Fatalf("inode %d: attributes %v, want %v", ino, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(m)))
	}
}

func readXattrs(f *FS, ino uint64) (xattrModel, error) {
	names, err := f.ListXattr(ino)
	if err != nil {
		return nil, err
	}
	out := xattrModel{}
	for _, n := range names {
		v, err := f.GetXattr(ino, n)
		if err != nil {
			return nil, fmt.Errorf("get %q: %w", n, err)
		}
		out[n] = string(v)
	}
	return out, nil
}

// TestXattrModel runs random sets, removes and gets on a few files
// against a map, with remounts, until the tree has interior nodes.
func TestXattrModel(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	r := rand.New(rand.NewPCG(7, 8))
	const nfiles = 6
	inos := make([]uint64, nfiles)
	models := make([]xattrModel, nfiles)
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprintf("f%d", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[i], models[i] = a.Ino, xattrModel{}
	}
	steps := 3000
	if testing.Short() {
		steps = 600
	}
	for s := 0; s < steps; s++ {
		i := r.IntN(nfiles)
		models[i].step(t, r, f, inos[i])
		if s%500 == 499 {
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			f = mount(t, nopClose{dev}, Options{})
			for j := range inos {
				compareXattrs(t, f, inos[j], models[j])
			}
		}
	}
	for j := range inos {
		compareXattrs(t, f, inos[j], models[j])
	}
	s := f.Engine().Pin()
	tr, _ := s.Tree(format.TreeXattr)
	s.Release()
	if tr == nil || tr.Level == 0 && !testing.Short() {
		t.Fatalf("the xattr tree never grew past one leaf")
	}
	mustClean(t, f)
	f.Close()
}

// TestXattrFsyncCrash sets and removes attributes of a few files, fsyncs
// them now and then, and crashes at every flush boundary: each file's
// attributes must be a state at or after the last one an fsync (or
// commit) acknowledged before the crash, and the image clean.
func TestXattrFsyncCrash(t *testing.T) {
	// A small image: every crash point copies it twice.
	base := disk.NewMem(2048 * format.BlockSize)
	if err := engine.Mkfs(base, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := disk.NewRecorder(base.Bytes())
	f := mount(t, nopClose{rec}, Options{})
	const nfiles = 3
	r := rand.New(rand.NewPCG(11, 12))
	inos := make([]uint64, nfiles)
	history := make([][]xattrModel, nfiles)
	type ack struct{ flush, idx int }
	acks := make([][]ack, nfiles)
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprintf("f%d", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[i], history[i] = a.Ino, []xattrModel{{}}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	created := rec.Flushes()
	for i := range inos {
		acks[i] = append(acks[i], ack{created, 0})
	}
	steps := 80
	if testing.Short() || raceEnabled {
		steps = 20
	}
	for s := 0; s < steps; s++ {
		i := r.IntN(nfiles)
		switch op := r.IntN(10); {
		case op < 6:
			m := maps.Clone(history[i][len(history[i])-1])
			m.step(t, r, f, inos[i])
			history[i] = append(history[i], m)
		case op < 9:
			if err := f.Fsync(inos[i]); err != nil {
				t.Fatal(err)
			}
			acks[i] = append(acks[i], ack{rec.Flushes(), len(history[i]) - 1})
		default:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			for j := range inos {
				acks[j] = append(acks[j], ack{rec.Flushes(), len(history[j]) - 1})
			}
		}
	}
	rng := rand.New(rand.NewPCG(13, 14))
	points := crashPoints(rec.Flushes(), 11)
	modes := []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom}
	if testing.Short() {
		// A sample: every boundary is the full pass's.
		var some []int
		for i := len(points) - 1; i >= 0; i -= max(1, len(points)/3) {
			some = append(some, points[i])
		}
		points, modes = some, modes[:1]
	}
	for _, k := range points {
		for _, mode := range modes {
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			for i := range inos {
				lo := 0
				for _, a := range acks[i] {
					if a.flush <= k {
						lo = max(lo, a.idx)
					}
				}
				got, err := readXattrs(cf, inos[i])
				if k < created && Errno(err) == syscall.ENOENT {
					continue
				}
				if err != nil {
					t.Fatalf("%s: file %d: %v", name, i, err)
				}
				if !slices.ContainsFunc(history[i][lo:], func(m xattrModel) bool { return maps.Equal(m, got) }) {
					t.Fatalf("%s: file %d: attributes %v match no state at or after the acknowledged one (%d of %d)", name, i, slices.Sorted(maps.Keys(got)), lo, len(history[i]))
				}
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
}

// TestXattrLarge: values past one item (format 1.6) are split into chunk
// items and read back whole; replacing, shrinking and removing one leaves
// no chunk behind (the check would report it); an image of format 1.5
// refuses them with ENOSPC, as before.
func TestXattrLarge(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	a, err := f.Create(RootIno, "f", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(6, 6))
	for _, n := range []int{format.MaxXattrValue("user.v") + 1, format.XattrHeadPart("user.v") + format.MaxValueSize, 5000, format.XattrSizeMax, 1500, 10, 30000} {
		v := randBytes(r, n)
		if err := f.SetXattr(a.Ino, "user.v", v, 0); err != nil {
			t.Fatalf("set %d bytes: %v", n, err)
		}
		if err := f.SetXattr(a.Ino, "user.w"+fmt.Sprint(n%3), v[:n/2], 0); err != nil {
			t.Fatalf("set %d bytes: %v", n/2, err)
		}
		got, err := f.GetXattr(a.Ino, "user.v")
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("get after a set of %d bytes: %d bytes, %v", n, len(got), err)
		}
		mustClean(t, f)
	}
	names, err := f.ListXattr(a.Ino)
	if err != nil || len(names) != 4 {
		t.Fatalf("list: %q %v", names, err)
	}
	if err := f.RemoveXattr(a.Ino, "user.v"); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f)
	if err := f.Unlink(RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f)
	f.Close()

	// Format 1.5: a value past one item is ENOSPC.
	dev := disk.NewMem(testBlocks * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{Version: "1.5"}); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{Engine: engine.Options{VersionUpgrade: engine.UpgradeNone}})
	defer f.Close()
	b, _ := f.Create(RootIno, "g", NewInode{Mode: 0o644})
	if err := f.SetXattr(b.Ino, "user.v", make([]byte, format.MaxXattrValue("user.v")+1), 0); Errno(err) != syscall.ENOSPC {
		t.Fatalf("a large value on format 1.5: %v, want ENOSPC", err)
	}
	if err := f.SetXattr(b.Ino, "user.v", make([]byte, format.MaxXattrValue("user.v")), 0); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f)
}
