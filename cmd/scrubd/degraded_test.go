package main

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDegradedMountSurvivesKill: with the alloc, free-space, rmap or csum
// tree damaged on disk, a real FUSE mount (the damage unknown to it) accepts
// writes and fsyncs — no EIO, never read-only — while the engine runs
// without the damaged tree; kill -9 loses nothing fsync'd; the next mount
// still knows the tree is untrusted (the superblock says so) and goes on
// writing; scrub finds it (4), scrub --repair rebuilds it online (1), a
// second scrub is clean (0), and after unmount fsck is clean.
func TestDegradedMountSurvivesKill(t *testing.T) {
	needFuse(t)
	for i, tree := range []string{"alloc", "free", "rmap", "csum"} {
		t.Run(tree, func(t *testing.T) {
			privateRuntimeDir(t)
			img := mkfs(t)
			want := populate(t, img)
			expect(t, 0, "inject", img, "--tree", tree, "--kind", "bitflip", "--level", "0", "--seed", strconv.Itoa(i+1))
			dir := t.TempDir()
			p := startMount(t, img, dir, "--commit-interval", "50ms")
			r := rand.New(rand.NewPCG(uint64(i), 11))
			write := func(round int) {
				t.Helper()
				for j := 0; j < 40; j++ {
					name := "w" + strconv.Itoa(round) + "-" + strconv.Itoa(j%8)
					data := randBytes(r, 1+r.IntN(40_000))
					writeSynced(t, filepath.Join(dir, name), data, 0)
					if old, ok := want[name]; ok && len(old) > len(data) {
						data = append(data, old[len(data):]...)
					}
					want[name] = data
				}
				// Overwrite and remove some of the populated files:
				// frees go through the damaged tree's degraded path.
				name := "f" + strconv.Itoa(round)
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
				delete(want, name)
				f, err := os.OpenFile(filepath.Join(dir, "f"+strconv.Itoa(round+4)), os.O_WRONLY|os.O_TRUNC, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				f.Close()
				want["f"+strconv.Itoa(round+4)] = nil
			}
			write(0)
			verifyFiles(t, dir, want)
			p.cmd.Process.Kill()
			if code := p.wait(); code != -1 {
				t.Fatalf("kill -9: exit code %d", code)
			}
			lazyUnmount(dir)

			p = startMount(t, img, dir, "--commit-interval", "50ms")
			verifyFiles(t, dir, want)
			write(1)
			expect(t, 4, "scrub", dir)
			expect(t, 1, "scrub", dir, "--repair")
			expect(t, 0, "scrub", dir)
			write(2)
			verifyFiles(t, dir, want)
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
			fsckClean(t, img)
		})
	}
}

// TestMountDamagedRootTree: an image whose root tree has a flipped byte
// mounts through FUSE (the roots come from the superblock's backup, and
// the mount writes a new root tree before serving); every file reads back,
// writes go on; the first scrub reports the damage as found and repaired
// by the mount (exit 1), the next is clean, and fsck after unmount too.
func TestMountDamagedRootTree(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	want := populate(t, img)
	expect(t, 0, "inject", img, "--tree", "root", "--kind", "bitflip")
	dir := t.TempDir()
	p := startMount(t, img, dir, "--commit-interval", "50ms")
	verifyFiles(t, dir, want)
	r := rand.New(rand.NewPCG(5, 5))
	for j := 0; j < 10; j++ {
		name := "after-" + strconv.Itoa(j)
		data := randBytes(r, 1+r.IntN(40_000))
		writeSynced(t, filepath.Join(dir, name), data, 0)
		want[name] = data
	}
	out := expect(t, 1, "scrub", dir)
	if !strings.Contains(out, "root backup") {
		t.Errorf("scrub after mounting a damaged root tree:\n%s", out)
	}
	expect(t, 0, "scrub", dir)
	verifyFiles(t, dir, want)
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), "root backup") {
		t.Errorf("the mount did not say it used the root backup:\n%s", p.stderr.String())
	}
	fsckClean(t, img)
}
