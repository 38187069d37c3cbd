package fs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
)

// settledFree syncs twice (blocks freed by a commit are released once it is
// durable) and returns the free blocks.
func settledFree(t *testing.T, f *FS) uint64 {
	t.Helper()
	for range 2 {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return f.StatFS().BlocksFree
}

func fileBytes(t *testing.T, f *FS, ino uint64) []byte {
	t.Helper()
	a, err := f.GetAttr(ino)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, a.Size)
	n, err := f.Read(ino, buf, 0)
	if err != nil {
		t.Fatalf("read inode %d: %v", ino, err)
	}
	return buf[:n]
}

// TestCloneSharesBlocks: a clone of an 8 MiB file takes no data blocks;
// overwriting the copy takes new blocks and leaves the original intact;
// the shared blocks are freed only with their last reference.
func TestCloneSharesBlocks(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	src, _ := f.Create(RootIno, "src", NewInode{Mode: 0o644})
	dst, _ := f.Create(RootIno, "dst", NewInode{Mode: 0o644})
	r := rand.New(rand.NewPCG(4, 4))
	size := 8 << 20
	if raceEnabled {
		size = 1 << 20
	}
	data := randBytes(r, size+1234) // a partial last block too
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(src.Ino, data[off:min(len(data), off+1<<20)], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	empty := settledFree(t, f)
	if err := f.Clone(src.Ino, dst.Ino); err != nil {
		t.Fatal(err)
	}
	cloned := settledFree(t, f)
	// Metadata only: the new items, a few tree blocks.
	if used := empty - cloned; used > 64 {
		t.Fatalf("the clone took %d blocks (the file has %d)", used, len(data)/bs)
	}
	if !bytes.Equal(fileBytes(t, f, dst.Ino), data) {
		t.Fatal("the clone reads differently")
	}
	mustClean(t, f)
	// Overwrite a block in the middle and the tail of the copy.
	patch := bytes.Repeat([]byte{0xAB}, 10000)
	if _, err := f.Write(dst.Ino, patch, int64(size/3+77)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(dst.Ino, patch[:10], int64(len(data)-5)); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(data)
	copy(want[size/3+77:], patch)
	want = append(want[:len(data)-5], patch[:10]...)
	if !bytes.Equal(fileBytes(t, f, dst.Ino), want) {
		t.Fatal("the overwritten copy reads wrong")
	}
	if !bytes.Equal(fileBytes(t, f, src.Ino), data) {
		t.Fatal("overwriting the copy changed the original")
	}
	mustClean(t, f)
	// The original goes: the copy keeps every shared block.
	if err := f.Unlink(RootIno, "src"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileBytes(t, f, dst.Ino), want) {
		t.Fatal("unlinking the original changed the copy")
	}
	mustClean(t, f)
	if err := f.Unlink(RootIno, "dst"); err != nil {
		t.Fatal(err)
	}
	all := settledFree(t, f)
	if all < empty+uint64(len(data)/bs) {
		t.Fatalf("%d blocks free after both files went, %d with one file of %d blocks", all, empty, len(data)/bs)
	}
	mustClean(t, f)
}

func TestCloneErrors(t *testing.T) {
	f := mount(t, nopClose{newDev(t)}, Options{})
	defer f.Close()
	a, _ := f.Create(RootIno, "a", NewInode{Mode: 0o644})
	b, _ := f.Create(RootIno, "b", NewInode{Mode: 0o644})
	d, _ := f.Mkdir(RootIno, "d", NewInode{Mode: 0o755})
	if _, err := f.Write(a.Ino, make([]byte, 5*bs+100), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b.Ino, make([]byte, 9*bs), 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what                   string
		src, dst               uint64
		srcOff, dstOff, length int64
		want                   error
	}{
		{"unaligned source offset", a.Ino, b.Ino, 100, 0, bs, syscall.EINVAL},
		{"unaligned destination offset", a.Ino, b.Ino, 0, 100, bs, syscall.EINVAL},
		{"unaligned length inside the file", a.Ino, b.Ino, 0, 0, bs + 1, syscall.EINVAL},
		{"past the source's end", a.Ino, b.Ino, 0, 0, 8 * bs, syscall.EINVAL},
		{"unaligned end inside the destination", a.Ino, b.Ino, 0, 0, 5*bs + 100, syscall.EINVAL},
		{"overlap in one file", a.Ino, a.Ino, 0, bs, 2 * bs, syscall.EINVAL},
		{"directory source", d.Ino, b.Ino, 0, 0, bs, syscall.EINVAL},
		{"directory destination", a.Ino, d.Ino, 0, 0, bs, syscall.EINVAL},
		{"negative offset", a.Ino, b.Ino, -bs, 0, bs, syscall.EINVAL},
		{"no such source", 999999, b.Ino, 0, 0, bs, syscall.ENOENT},
		{"unaligned end at the source's end, past the destination's", a.Ino, b.Ino, 0, 5 * bs, 5*bs + 100, nil},
		{"in one file, apart", a.Ino, a.Ino, 0, 2 * bs, 2 * bs, nil},
	} {
		before := fileBytes(t, f, b.Ino)
		_, err := f.CloneRange(c.src, c.srcOff, c.dst, c.dstOff, c.length)
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
		if c.want != nil && !bytes.Equal(before, fileBytes(t, f, b.Ino)) {
			t.Errorf("%s: the refused clone changed the destination", c.what)
		}
	}
	if _, err := f.CopyRange(a.Ino, 0, a.Ino, 10, 100); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("overlapping copy in one file: %v", err)
	}
	if n, err := f.CopyRange(a.Ino, 1<<30, b.Ino, 0, 100); n != 0 || err != nil {
		t.Errorf("copy from past the end: %d, %v", n, err)
	}
	mustClean(t, f)
}

// cloneStep clones or copies a range between two random regular files of
// the model (the same inode too, through hard links), on both.
func cloneStep(t *testing.T, r *rand.Rand, f *FS, m *model) {
	t.Helper()
	var files [][]string
	for _, p := range m.paths(false) {
		if m.get(p).target == "" {
			files = append(files, p)
		}
	}
	if len(files) == 0 {
		return
	}
	sp, dp := files[r.IntN(len(files))], files[r.IntN(len(files))]
	sn, dn := m.get(sp), m.get(dp)
	sa, err := f.Resolve(join(sp))
	if err != nil {
		t.Fatal(err)
	}
	da, err := f.Resolve(join(dp))
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(sn.data))
	var so, do, n int64
	var want error
	var got int64
	what := ""
	switch r.IntN(3) {
	case 0: // whole-block range, or to the end of file
		so = int64(r.IntN(int(size/bs)+1)) * bs
		do = int64(r.IntN(20)) * bs
		if r.IntN(2) == 0 {
			n = size - so
		} else {
			n = int64(r.IntN(int((size-so)/bs)+1)) * bs
		}
		overlap := sn == dn && so < do+n && do < so+n
		switch {
		case overlap:
			want = syscall.EINVAL
		case n%bs != 0 && do+n < int64(len(dn.data)):
			want = syscall.EINVAL
		}
		what = fmt.Sprintf("clone %s@%d -> %s@%d +%d", join(sp), so, join(dp), do, n)
		got, err = f.CloneRange(sa.Ino, so, da.Ino, do, n)
	case 1: // any bytes
		so, do, n = int64(r.IntN(int(size)+100)), int64(r.IntN(70<<10)), int64(r.IntN(30000))
		if r.IntN(3) == 0 { // keep the positions within a block equal
			do = do/bs*bs + so%bs
		}
		ask := n
		n = min(n, max(0, size-so))
		if sn == dn && so < do+n && do < so+n {
			want = syscall.EINVAL
		}
		what = fmt.Sprintf("copy %s@%d -> %s@%d +%d", join(sp), so, join(dp), do, n)
		got, err = f.CopyRange(sa.Ino, so, da.Ino, do, ask)
	default: // the whole file
		n = size
		if sn == dn && n > 0 || n%bs != 0 && n < int64(len(dn.data)) {
			want = syscall.EINVAL
		}
		what = fmt.Sprintf("clone %s -> %s", join(sp), join(dp))
		err = f.Clone(sa.Ino, da.Ino)
		if err == nil {
			got = n
		}
	}
	if debugFS {
		t.Log(what)
	}
	if want != nil {
		if !errors.Is(err, want) {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
		return
	}
	if err != nil || got != n {
		t.Fatalf("%s: %d, %v", what, got, err)
	}
	if n == 0 {
		return
	}
	chunk := slices.Clone(sn.data[so : so+n])
	if end := int(do + n); end > len(dn.data) {
		dn.data = append(dn.data, make([]byte, end-len(dn.data))...)
	}
	copy(dn.data[do:], chunk)
}

// TestCloneModel runs the random filesystem model with clones and copies
// among its operations, checking the image (reference counts included)
// as it goes, across a remount and a kill (an image taken without a
// clean close).
func TestCloneModel(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		if raceEnabled && seed < 3 || seed == 2 && os.Getenv("SCRUBD_MATRIX_ALL") == "" {
			// The race pass runs the seed with many transactions per
			// clone; the full pass two seeds, all with SCRUBD_MATRIX_ALL=1.
			continue
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 77))
			if seed == 3 {
				// Many transactions per clone.
				defer func(b int) { cloneBatch = b }(cloneBatch)
				cloneBatch = 2
			}
			dev := newDev(t)
			f := mount(t, nopClose{dev}, Options{})
			m := &model{root: newDir()}
			ops := 450
			switch {
			case raceEnabled:
				ops = 80
			case testing.Short():
				ops = 300
			}
			for i := 1; i <= ops; i++ {
				if r.IntN(3) == 0 {
					cloneStep(t, r, f, m)
					// The full self-check after every clone (reference
					// counts, reverse mappings, free space); under -short
					// after every tenth.
					if !testing.Short() || i%10 == 0 {
						mustClean(t, f)
					}
				} else {
					step(t, r, f, m)
				}
				if i%250 == 0 {
					compare(t, f, m)
				}
				if i == ops/2 {
					// Killed: the image as the last sync left it.
					if err := f.Sync(); err != nil {
						t.Fatal(err)
					}
					k := mount(t, nopClose{disk.NewMemFrom(slices.Clone(dev.Bytes()))}, Options{})
					compare(t, k, m)
					mustClean(t, k)
					k.Close()
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

// TestCloneCrashAtEveryFlush clones and copies among three files, writes
// them and fsyncs; at every flush boundary the crashed image must mount
// clean (reference counts and all), each file must read as a state it went
// through no older than its last acknowledged fsync, and overwriting the
// files there must leave the others as they were.
func TestCloneCrashAtEveryFlush(t *testing.T) {
	rec := disk.NewRecorder(smallDev(t).Bytes())
	f := mount(t, nopClose{rec}, Options{})
	var inos [3]uint64
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprint("f", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[i] = a.Ino
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	var states [3][][]byte
	var acks [3][]crashAck
	for i := range inos {
		states[i] = [][]byte{nil}
		acks[i] = []crashAck{{rec.Flushes(), 0}}
	}
	r := rand.New(rand.NewPCG(21, 3))
	steps := 50
	switch {
	case raceEnabled:
		steps = 20
	case testing.Short():
		steps = 24
	}
	clones := 0
	for s := 0; s < steps; s++ {
		switch op := r.IntN(10); {
		case op < 3: // write
			i := r.IntN(3)
			data := randBytes(r, 1+r.IntN(3*bs))
			off := r.IntN(8 * bs)
			if _, err := f.Write(inos[i], data, int64(off)); err != nil {
				t.Fatal(err)
			}
			next := slices.Clone(states[i][len(states[i])-1])
			if end := off + len(data); end > len(next) {
				next = append(next, make([]byte, end-len(next))...)
			}
			copy(next[off:], data)
			states[i] = append(states[i], next)
		case op < 7: // clone or copy
			i, j := r.IntN(3), r.IntN(3)
			if i == j {
				j = (j + 1) % 3
			}
			src := states[i][len(states[i])-1]
			if len(src) == 0 {
				continue
			}
			so := int64(r.IntN(len(src)/bs+1)) * bs
			do := int64(r.IntN(6)) * bs
			n := int64(len(src)) - so
			if r.IntN(2) == 0 {
				so, do = int64(r.IntN(len(src))), int64(r.IntN(6*bs))
				n = int64(len(src)) - so
			}
			got, err := f.CopyRange(inos[i], so, inos[j], do, n)
			if err != nil || got != n {
				t.Fatalf("copy %d@%d -> %d@%d +%d: %d, %v", i, so, j, do, n, got, err)
			}
			next := slices.Clone(states[j][len(states[j])-1])
			if end := int(do + n); end > len(next) {
				next = append(next, make([]byte, end-len(next))...)
			}
			copy(next[do:], src[so:so+n])
			states[j] = append(states[j], next)
			clones++
		case op < 9: // fsync
			i := r.IntN(3)
			if err := f.Fsync(inos[i]); err != nil {
				t.Fatal(err)
			}
			acks[i] = append(acks[i], crashAck{rec.Flushes(), len(states[i]) - 1})
		default:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			for i := range inos {
				acks[i] = append(acks[i], crashAck{rec.Flushes(), len(states[i]) - 1})
			}
		}
	}
	if clones == 0 {
		t.Fatal("no clone ran")
	}
	rng := rand.New(rand.NewPCG(21, 4))
	stride := 1
	switch {
	case raceEnabled:
		stride = len(crashPoints(rec.Flushes(), 21)) + 1
	case testing.Short():
		stride = 4
	}
	t.Logf("%d flushes, %d copies", rec.Flushes(), clones)
	for pi, k := range crashPoints(rec.Flushes(), 21) {
		if k < acks[0][0].flush || (pi%stride != 0 && k != rec.Flushes()) {
			continue
		}
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashRandom} {
			name := fmt.Sprintf("flush %d %v", k, mode)
			cf, err := Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", name, err)
			}
			var got [3][]byte
			for i, ino := range inos {
				got[i] = fileBytes(t, cf, ino)
				ok := false
				for _, h := range states[i][lastAcked(acks[i], k):] {
					ok = ok || bytes.Equal(got[i], h)
				}
				if !ok {
					t.Fatalf("%s: file %d (%d bytes) matches no state at or after the acknowledged one", name, i, len(got[i]))
				}
			}
			mustClean(t, cf)
			// Copy on write of whatever is shared: each file's writes
			// leave the others alone.
			for i, ino := range inos {
				if _, err := cf.Write(ino, bytes.Repeat([]byte{byte(i + 1)}, 2*bs), 0); err != nil {
					t.Fatalf("%s: write %d: %v", name, i, err)
				}
				for j := range inos {
					if j > i && !bytes.Equal(fileBytes(t, cf, inos[j]), got[j]) {
						t.Fatalf("%s: writing file %d changed file %d", name, i, j)
					}
				}
			}
			mustClean(t, cf)
			cf.Close()
		}
	}
	mustClean(t, f)
	f.Close()
}
