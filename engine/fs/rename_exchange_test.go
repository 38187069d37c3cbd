package fs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// TestRenameExchange: renameat2 RENAME_EXCHANGE of files and directories,
// in one directory and across two, with the parents' link counts and the
// moved directories' ".." following; and the errors Linux gives.
func TestRenameExchange(t *testing.T) {
	dev := newDev(t)
	f := mount(t, nopClose{dev}, Options{})
	mk := func(dir uint64, name string, isDir bool) uint64 {
		t.Helper()
		var a Attr
		var err error
		if isDir {
			a, err = f.Mkdir(dir, name, NewInode{Mode: 0o755})
		} else {
			a, err = f.Create(dir, name, NewInode{Mode: 0o644})
		}
		if err != nil {
			t.Fatal(err)
		}
		return a.Ino
	}
	look := func(dir uint64, name string) Attr {
		t.Helper()
		a, err := f.Lookup(dir, name)
		if err != nil {
			t.Fatalf("lookup %d/%s: %v", dir, name, err)
		}
		return a
	}
	nlink := func(ino uint64) uint32 {
		t.Helper()
		a, err := f.GetAttr(ino)
		if err != nil {
			t.Fatal(err)
		}
		return a.Nlink
	}
	d1, d2 := mk(RootIno, "d1", true), mk(RootIno, "d2", true)
	fa, fb := mk(d1, "fa", false), mk(d1, "fb", false)
	sub := mk(d2, "sub", true)
	mk(sub, "inner", false)

	// Two files in one directory.
	if err := f.Rename(d1, "fa", d1, "fb", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if look(d1, "fa").Ino != fb || look(d1, "fb").Ino != fa {
		t.Fatal("files not exchanged")
	}
	// A file and a directory across parents: the directory moves to d1.
	if err := f.Rename(d1, "fa", d2, "sub", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if look(d1, "fa").Ino != sub || look(d2, "sub").Ino != fb {
		t.Fatal("file and directory not exchanged")
	}
	if look(sub, "..").Ino != d1 {
		t.Fatalf("moved directory's .. is %d, want %d", look(sub, "..").Ino, d1)
	}
	if nlink(d1) != 3 || nlink(d2) != 2 {
		t.Fatalf("parents' link counts %d, %d; want 3, 2", nlink(d1), nlink(d2))
	}
	// Two directories across parents.
	other := mk(d2, "other", true)
	if err := f.Rename(d1, "fa", d2, "other", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if look(sub, "..").Ino != d2 || look(other, "..").Ino != d1 || nlink(d1) != 3 || nlink(d2) != 3 {
		t.Fatalf("directories exchanged wrong: sub/.. %d, other/.. %d, nlinks %d %d",
			look(sub, "..").Ino, look(other, "..").Ino, nlink(d1), nlink(d2))
	}
	if _, err := f.Link(fb, d1, "fb2"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		odir  uint64
		oname string
		ndir  uint64
		nname string
		flags uint32
		want  syscall.Errno
	}{
		{name: "missing target", odir: d1, oname: "fb", ndir: d2, nname: "nope", flags: RenameExchange, want: syscall.ENOENT},
		{name: "missing source", odir: d1, oname: "nope", ndir: d2, nname: "sub", flags: RenameExchange, want: syscall.ENOENT},
		{name: "both flags", odir: d1, oname: "fb", ndir: d2, nname: "sub", flags: RenameExchange | RenameNoReplace, want: syscall.EINVAL},
		{name: "unknown flag", odir: d1, oname: "fb", ndir: d2, nname: "sub", flags: 4, want: syscall.EINVAL},
		{name: "dir with its descendant", odir: RootIno, oname: "d2", ndir: sub, nname: "inner", flags: RenameExchange, want: syscall.EINVAL},
		{name: "descendant with its ancestor", odir: sub, oname: "inner", ndir: RootIno, nname: "d2", flags: RenameExchange, want: syscall.EINVAL},
		{name: "noreplace over existing", odir: d1, oname: "fb", ndir: d2, nname: "sub", flags: RenameNoReplace, want: syscall.EEXIST},
	}
	for _, c := range cases {
		err := f.Rename(c.odir, c.oname, c.ndir, c.nname, c.flags)
		if Errno(err) != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// The failed calls changed nothing.
	if look(d2, "other").Ino != sub || look(sub, "..").Ino != d2 || look(RootIno, "d2").Ino != d2 || look(d2, "sub").Ino != fb {
		t.Fatal("a failed exchange changed the namespace")
	}
	// Two names of one file exchanged: a no-op.
	if err := f.Rename(d2, "sub", d1, "fb2", RenameExchange); err != nil {
		t.Fatal(err)
	}
	if look(d2, "sub").Ino != fb || look(d1, "fb2").Ino != fb || nlink(fb) != 2 {
		t.Fatal("exchanging two names of one file changed something")
	}
	// NOREPLACE onto a free name moves.
	if err := f.Rename(d1, "fb2", d2, "moved", RenameNoReplace); err != nil {
		t.Fatal(err)
	}
	if look(d2, "moved").Ino != fb {
		t.Fatal("noreplace rename did not move")
	}
	mustClean(t, f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = mount(t, nopClose{dev}, Options{})
	defer f.Close()
	if look(d2, "other").Ino != sub || look(d1, "fa").Ino != other || look(sub, "..").Ino != d2 || look(other, "..").Ino != d1 {
		t.Fatal("exchanges lost at remount")
	}
	mustClean(t, f)
}

// stepSemantics is step with the renameat2 flags and long symlinks added
// to the random operations: exchanges of any two names (files and
// directories, across parents), NOREPLACE renames, and symlinks of up to
// 4095 bytes (4096 fails).
func stepSemantics(t *testing.T, r *rand.Rand, f *FS, m *model) {
	t.Helper()
	resolve := func(p []string) uint64 {
		a, err := f.Resolve(join(p))
		if err != nil {
			t.Fatalf("resolve %s: %v", join(p), err)
		}
		return a.Ino
	}
	dirs, files := m.paths(true), m.paths(false)
	pick := func(ps [][]string) []string { return ps[r.IntN(len(ps))] }
	switch r.IntN(10) {
	case 0, 1: // exchange
		all := append(dirs[1:], files...)
		if len(all) < 2 {
			return
		}
		a, b := pick(all), pick(all)
		an, bn := m.get(a), m.get(b)
		ap, bp := m.get(a[:len(a)-1]), m.get(b[:len(b)-1])
		err := f.Rename(resolve(a[:len(a)-1]), a[len(a)-1], resolve(b[:len(b)-1]), b[len(b)-1], RenameExchange)
		inside := func(x, y []string) bool { return len(y) > len(x) && slices.Equal(y[:len(x)], x) }
		switch {
		case an == bn:
			if err != nil {
				t.Fatalf("exchange of %s with itself: %v", join(a), err)
			}
			return
		case (an.dir && inside(a, b)) || (bn.dir && inside(b, a)):
			if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("exchange %s <-> %s (one inside the other): %v, want EINVAL", join(a), join(b), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("exchange %s <-> %s: %v", join(a), join(b), err)
		}
		ap.children[a[len(a)-1]], bp.children[b[len(b)-1]] = bn, an
		if ap != bp {
			if an.dir {
				ap.nlink--
				bp.nlink++
			}
			if bn.dir {
				bp.nlink--
				ap.nlink++
			}
		}
	case 2: // rename, no replace
		all := append(dirs[1:], files...)
		if len(all) == 0 {
			return
		}
		src := pick(all)
		dst := append(slices.Clone(pick(dirs)), names[r.IntN(len(names))])
		sn, sp, dp := m.get(src), m.get(src[:len(src)-1]), m.get(dst[:len(dst)-1])
		tn := dp.children[dst[len(dst)-1]]
		err := f.Rename(resolve(src[:len(src)-1]), src[len(src)-1], resolve(dst[:len(dst)-1]), dst[len(dst)-1], RenameNoReplace)
		switch {
		case sn.dir && len(dst) > len(src) && slices.Equal(dst[:len(src)], src):
			if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("noreplace rename %s into itself: %v", join(src), err)
			}
			return
		case tn == sn:
			if err != nil && !errors.Is(err, syscall.EEXIST) {
				t.Fatalf("noreplace rename %s onto itself: %v", join(src), err)
			}
			return
		case tn != nil:
			if !errors.Is(err, syscall.EEXIST) {
				t.Fatalf("noreplace rename %s -> %s over an existing name: %v", join(src), join(dst), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("noreplace rename %s -> %s: %v", join(src), join(dst), err)
		}
		delete(sp.children, src[len(src)-1])
		dp.children[dst[len(dst)-1]] = sn
		if sn.dir && sp != dp {
			sp.nlink--
			dp.nlink++
		}
	case 3: // long symlink
		d := pick(dirs)
		name := names[r.IntN(len(names))]
		dn := m.get(d)
		if _, exists := dn.children[name]; exists {
			return
		}
		n := 850 + r.IntN(4095-850+1)
		if r.IntN(8) == 0 {
			n = 4096
		}
		target := strings.Repeat(string(rune('a'+r.IntN(26))), n)
		_, err := f.Symlink(resolve(d), name, target, NewInode{})
		if n > 4095 {
			if !errors.Is(err, syscall.ENAMETOOLONG) {
				t.Fatalf("symlink of %d bytes: %v, want ENAMETOOLONG", n, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("symlink of %d bytes: %v", n, err)
		}
		dn.children[name] = &mnode{target: target, nlink: 1}
	default:
		step(t, r, f, m)
	}
}

func TestModelRandomOpsSemantics(t *testing.T) {
	seeds, ops := uint64(3), 1500
	if testing.Short() || raceEnabled {
		seeds, ops = 1, 400
	}
	for seed := uint64(1); seed <= seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 18))
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			m := &model{root: newDir()}
			for i := 0; i < ops; i++ {
				stepSemantics(t, r, f, m)
				if i%200 == 0 {
					compare(t, f, m)
				}
			}
			compare(t, f, m)
			mustClean(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			f = mount(t, nopClose{dev}, Options{})
			compare(t, f, m)
			mustClean(t, f)
			f.Close()
		})
	}
}

// TestExchangeFsyncCrashAtEveryFlush exchanges names (a file in d1, a
// directory in d2, a file in the root) at random, writes one of the
// files and fsyncs (an inode an exchange touched, or the written file);
// at every flush boundary the crashed image must mount clean, name the
// three inodes as some state the exchanges went through (never half of
// one: both names swapped or neither), at least as new as the last
// fsync acknowledged after an exchange, and hold the written file's data
// at least as new as its last acknowledged fsync.
func TestExchangeFsyncCrashAtEveryFlush(t *testing.T) {
	rec := disk.NewRecorder(smallDev(t).Bytes())
	f := mount(t, nopClose{rec}, Options{})
	d1, err := f.Mkdir(RootIno, "d1", NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := f.Mkdir(RootIno, "d2", NewInode{Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	type slot struct {
		dir  uint64
		name string
	}
	slots := []slot{{d1.Ino, "a"}, {d2.Ino, "b"}, {RootIno, "c"}}
	a, _ := f.Create(d1.Ino, "a", NewInode{Mode: 0o644})
	b, _ := f.Mkdir(d2.Ino, "b", NewInode{Mode: 0o755})
	if _, err := f.Create(b.Ino, "inner", NewInode{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Create(RootIno, "c", NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mapping := [][3]uint64{{a.Ino, b.Ino, c.Ino}} // every state of the names
	contents := [][]byte{nil}                     // every state of file a
	mapAcks := []crashAck{{rec.Flushes(), 0}}
	dataAcks := []crashAck{{rec.Flushes(), 0}}
	var lastTouched []uint64
	r := rand.New(rand.NewPCG(18, 8))
	steps := 60
	switch {
	case raceEnabled:
		steps = 15
	case testing.Short():
		steps = 25
	}
	logged := 0
	for s := 0; s < steps; s++ {
		cur := mapping[len(mapping)-1]
		switch op := r.IntN(10); {
		case op < 3: // exchange two slots
			i := r.IntN(3)
			j := (i + 1 + r.IntN(2)) % 3
			if err := f.Rename(slots[i].dir, slots[i].name, slots[j].dir, slots[j].name, RenameExchange); err != nil {
				t.Fatal(err)
			}
			next := cur
			next[i], next[j] = cur[j], cur[i]
			mapping = append(mapping, next)
			lastTouched = []uint64{slots[i].dir, slots[j].dir, cur[i], cur[j]}
		case op < 7: // write file a (wherever it is)
			data := randBytes(r, 1+r.IntN(6000))
			off := r.IntN(12000)
			if _, err := f.Write(a.Ino, data, int64(off)); err != nil {
				t.Fatal(err)
			}
			next := slices.Clone(contents[len(contents)-1])
			if end := off + len(data); end > len(next) {
				next = append(next, make([]byte, end-len(next))...)
			}
			copy(next[off:], data)
			contents = append(contents, next)
			if r.IntN(2) == 0 {
				// Its fsync: through the log unless a was exchanged
				// since the last commit.
				before := f.Stats().FsyncLogged
				if err := f.Fsync(a.Ino); err != nil {
					t.Fatal(err)
				}
				if f.Stats().FsyncLogged > before {
					logged++
				}
				dataAcks = append(dataAcks, crashAck{rec.Flushes(), len(contents) - 1})
				if slices.Contains(lastTouched, a.Ino) {
					mapAcks = append(mapAcks, crashAck{rec.Flushes(), len(mapping) - 1})
				}
			}
		case op < 9: // fsync
			var ino uint64
			if lastTouched != nil && r.IntN(2) == 0 {
				ino = lastTouched[r.IntN(len(lastTouched))]
			} else {
				ino = a.Ino
			}
			before := f.Stats().FsyncLogged
			if err := f.Fsync(ino); err != nil {
				t.Fatal(err)
			}
			if f.Stats().FsyncLogged > before {
				logged++
			}
			if ino == a.Ino {
				dataAcks = append(dataAcks, crashAck{rec.Flushes(), len(contents) - 1})
			}
			if slices.Contains(lastTouched, ino) {
				// An exchange's inodes are marked full: their fsync
				// commits everything, the names included.
				mapAcks = append(mapAcks, crashAck{rec.Flushes(), len(mapping) - 1})
				dataAcks = append(dataAcks, crashAck{rec.Flushes(), len(contents) - 1})
			}
		default:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			mapAcks = append(mapAcks, crashAck{rec.Flushes(), len(mapping) - 1})
			dataAcks = append(dataAcks, crashAck{rec.Flushes(), len(contents) - 1})
			lastTouched = nil
		}
	}
	if logged == 0 {
		t.Fatal("no fsync went through the log")
	}
	t.Logf("%d flushes, %d fsyncs logged, %d exchanges", rec.Flushes(), logged, len(mapping)-1)
	rng := rand.New(rand.NewPCG(18, 9))
	stride := 1
	switch {
	case raceEnabled:
		// The race pass checks the last boundary (the full pass every
		// one): a crash image costs seconds there.
		stride = len(crashPoints(rec.Flushes(), 18)) + 1
	case testing.Short():
		stride = 4 // the full pass checks every boundary
	}
	for i, k := range crashPoints(rec.Flushes(), 18) {
		if k < mapAcks[0].flush || (i%stride != 0 && k != rec.Flushes()) {
			continue // before the setup was durable, or sampled out
		}
		modes := []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom}
		if raceEnabled {
			modes = modes[1:]
		}
		for _, mode := range modes {
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			var got [3]uint64
			for i, sl := range slots {
				at, err := cf.Lookup(sl.dir, sl.name)
				if err != nil {
					t.Fatalf("%s: lookup %s: %v", name, sl.name, err)
				}
				got[i] = at.Ino
			}
			ok := false
			for _, mp := range mapping[lastAcked(mapAcks, k):] {
				ok = ok || mp == got
			}
			if !ok {
				t.Fatalf("%s: names map to %v, no state at or after the acknowledged one (%d of %d)", name, got, lastAcked(mapAcks, k), len(mapping))
			}
			at, err := cf.GetAttr(a.Ino)
			if err != nil {
				t.Fatalf("%s: file a: %v", name, err)
			}
			buf := make([]byte, at.Size)
			n, err := cf.Read(a.Ino, buf, 0)
			if err != nil {
				t.Fatalf("%s: read a: %v", name, err)
			}
			ok = false
			for _, h := range contents[lastAcked(dataAcks, k):] {
				ok = ok || bytes.Equal(buf[:n], h)
			}
			if !ok {
				t.Fatalf("%s: file a (%d bytes) matches no state at or after the acknowledged one", name, n)
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
	mustClean(t, f)
	f.Close()
}

// smallDev is an 8 MiB image: crash tests copy and check one per flush.
func smallDev(t testing.TB) *disk.Mem {
	t.Helper()
	dev := disk.NewMem(2048 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	return dev
}
