package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine/fs"
)

// populateMany writes n small files into the root directory of img (enough
// for the inode and directory trees to grow interior nodes) and returns
// what each holds.
func populateMany(t *testing.T, img string, n int) map[string][]byte {
	t.Helper()
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, uint64(n)))
	want := map[string][]byte{}
	for i := range n {
		name := fmt.Sprintf("file-%04d", i)
		a, err := fsys.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		data := randBytes(r, 1+r.IntN(9000))
		if _, err := fsys.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		want[name] = data
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestMountOneFlippedByte: one flipped byte in the free-space tree, the
// deleted-inodes tree, the logged-operations tree or an interior node of
// the inode tree, and `scrubd mount` still serves the image read-write
// (the structure marked sick, no recovery pass or allocator load refusing
// it); writes go on (creates fail with EIO where the damage is on the
// inode tree's path every new inode takes); scrub finds the damage (4), scrub --repair repairs
// it online (1), every file reads back, the next scrub is clean (0), and
// fsck after unmount too.
func TestMountOneFlippedByte(t *testing.T) {
	needFuse(t)
	for i, c := range []struct {
		tree, level string
		// createsFail: new files cannot be made until the repair (the
		// damage is on the inode tree's path where every new inode goes).
		createsFail bool
	}{
		{"free", "0", false}, {"deleted", "0", false}, {"logged_ops", "0", false}, {"inode", "1", true},
	} {
		t.Run(c.tree+"_level"+c.level, func(t *testing.T) {
			privateRuntimeDir(t)
			img := mkfs(t)
			want := populateMany(t, img, 300)
			expect(t, 0, "inject", img, "--tree", c.tree, "--kind", "bitflip", "--level", c.level, "--seed", strconv.Itoa(i+1))
			dir := t.TempDir()
			p := startMount(t, img, dir, "--commit-interval", "50ms")
			r := rand.New(rand.NewPCG(uint64(i), 7))
			write := func(prefix string) {
				for j := 0; j < 10; j++ {
					name := prefix + strconv.Itoa(j)
					data := randBytes(r, 1+r.IntN(20_000))
					writeSynced(t, filepath.Join(dir, name), data, 0)
					want[name] = data
				}
			}
			if c.createsFail {
				if err := os.WriteFile(filepath.Join(dir, "before-repair"), []byte("x"), 0o644); !errors.Is(err, syscall.EIO) {
					t.Fatalf("create before the repair: %v, want EIO", err)
				}
			} else {
				write("before-")
			}
			expect(t, 4, "scrub", dir)
			expect(t, 1, "scrub", dir, "--repair")
			write("after-")
			verifyFiles(t, dir, want)
			expect(t, 0, "scrub", dir)
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
			fsckClean(t, img)
		})
	}
}
