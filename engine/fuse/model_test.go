package fuse

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// A model test: the same random operations on the mount and on a
// directory of the host filesystem must give the same errors, contents,
// names and link counts, before and after remounts.

var modelPaths = []string{"a", "b", "c", "d0", "d1", "d0/a", "d0/b", "d0/d2", "d0/d2/a", "d1/a", "d1/d3", "d1/d3/b"}

type modelOp struct {
	kind      string
	p, q      string
	off, size int64
	seed      uint64
}

func (o modelOp) String() string {
	return fmt.Sprintf("%s %s %s off=%d size=%d", o.kind, o.p, o.q, o.off, o.size)
}

func randOp(r *rand.Rand) modelOp {
	kinds := []string{"write", "write", "write", "truncate", "mkdir", "mkdir", "rmdir", "unlink", "rename", "rename", "link", "symlink", "read", "readdir", "stat"}
	o := modelOp{
		kind: kinds[r.IntN(len(kinds))],
		p:    modelPaths[r.IntN(len(modelPaths))],
		q:    modelPaths[r.IntN(len(modelPaths))],
		seed: r.Uint64(),
	}
	switch r.IntN(3) {
	case 0:
		o.off = r.Int64N(8192)
	case 1:
		o.off = r.Int64N(1 << 20)
	default:
		o.off = r.Int64N(64) * 4096
	}
	o.size = r.Int64N(70_000)
	return o
}

// apply does o under root and describes the outcome.
func (o modelOp) apply(root string) string {
	p, q := filepath.Join(root, o.p), filepath.Join(root, o.q)
	res := func(err error) string {
		var en syscall.Errno
		if errors.As(err, &en) {
			return "errno " + en.Error()
		}
		if err != nil {
			return "error " + err.Error()
		}
		return "ok"
	}
	switch o.kind {
	case "write":
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return res(err)
		}
		defer f.Close()
		_, err = f.WriteAt(randBytes(rand.New(rand.NewPCG(o.seed, 0)), int(o.size)), o.off)
		return res(err)
	case "truncate":
		return res(os.Truncate(p, o.off+o.size))
	case "mkdir":
		return res(syscall.Mkdir(p, 0o755))
	case "rmdir":
		return res(syscall.Rmdir(p))
	case "unlink":
		return res(syscall.Unlink(p))
	case "rename":
		return res(syscall.Rename(p, q))
	case "link":
		return res(syscall.Link(p, q))
	case "symlink":
		return res(syscall.Symlink(o.q, p))
	case "read":
		b, err := os.ReadFile(p)
		if err != nil {
			return res(err)
		}
		return fmt.Sprintf("%d bytes %x", len(b), crc(b))
	case "readdir":
		ents, err := os.ReadDir(p)
		if err != nil {
			return res(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name()+":"+e.Type().String())
		}
		slices.Sort(names)
		return fmt.Sprint(names)
	case "stat":
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return res(err)
		}
		size := st.Size
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			size = 0 // directory sizes are the filesystem's business
		}
		return fmt.Sprintf("mode %o nlink %d size %d", st.Mode, st.Nlink, size)
	}
	panic(o.kind)
}

func crc(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

func TestModel(t *testing.T) {
	m := mount(t, newImage(t))
	ref := t.TempDir()
	r := rand.New(rand.NewPCG(2024, 11))
	const n = 3000
	for i := range n {
		o := randOp(r)
		want, got := o.apply(ref), o.apply(m.dir)
		if want != got {
			t.Fatalf("op %d %v: mount %q, host %q", i, o, got, want)
		}
		if i%500 == 499 {
			compareTrees(t, ref, m.dir)
			compareLinks(t, ref, m.dir)
			if t.Failed() {
				t.Fatalf("trees differ after op %d", i)
			}
		}
		if i == n/2 {
			m.remount()
			compareTrees(t, ref, m.dir)
		}
	}
	m.remount()
	compareTrees(t, ref, m.dir)
	compareLinks(t, ref, m.dir)
}

// compareLinks checks that every name in a has the same link count in b.
func compareLinks(t *testing.T, a, b string) {
	t.Helper()
	for _, p := range modelPaths {
		var sa, sb syscall.Stat_t
		ea, eb := syscall.Lstat(filepath.Join(a, p), &sa), syscall.Lstat(filepath.Join(b, p), &sb)
		if (ea == nil) != (eb == nil) || sa.Nlink != sb.Nlink {
			t.Errorf("%s: nlink %d (%v) on the mount, %d (%v) on the host", p, sb.Nlink, eb, sa.Nlink, ea)
		}
	}
}

// TestModelConcurrent runs the model in several directories at once: the
// engine serves concurrent requests, each directory's outcome must still be
// the host's.
func TestModelConcurrent(t *testing.T) {
	m := mount(t, newImage(t))
	refRoot := t.TempDir()
	const workers, ops = 8, 600
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		name := "w" + strconv.Itoa(w)
		mine, ref := m.path(name), filepath.Join(refRoot, name)
		if err := os.Mkdir(mine, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(ref, 0o755); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 5))
			for i := range ops {
				o := randOp(r)
				if want, got := o.apply(ref), o.apply(mine); want != got {
					errs <- fmt.Errorf("%s op %d %v: mount %q, host %q", name, i, o, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	m.remount()
	compareTrees(t, refRoot, m.dir)
}
