package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSyncKill: what a program does to make a new file and directory
// durable survives kill -9 of the mount. fsync(2) of the file and
// fsyncdir of its directory reach the mount (FUSE_FSYNC, FUSE_FSYNCDIR)
// and commit at once. sync(2) and syncfs(2) never reach a FUSE server
// (Linux sends FUSE_SYNCFS to virtiofs only: see the engine/fuse test
// TestSyncfsNotSent), so after them what is durable is what the periodic
// commit (--commit-interval) made so: a kill one interval after sync
// keeps everything (a kill within the interval may not). A RENAME_EXCHANGE
// and a 4095-byte symlink made before the fsyncs come back too, and the
// image is checked clean after every kill.
func TestSyncKill(t *testing.T) {
	cases := []struct {
		name     string
		interval time.Duration
		durable  func(t *testing.T, dir string)
	}{
		{"fsync", -time.Second, func(t *testing.T, dir string) {
			for _, p := range []string{"d/f", "d", "."} {
				f, err := os.Open(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					t.Fatalf("fsync %s: %v", p, err)
				}
				f.Close()
			}
		}},
		{"syncfs", 200 * time.Millisecond, func(t *testing.T, dir string) {
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := unix.Syncfs(int(f.Fd())); err != nil {
				t.Fatalf("syncfs: %v", err)
			}
			time.Sleep(3 * 200 * time.Millisecond) // the periodic commit
		}},
		{"sync", 200 * time.Millisecond, func(t *testing.T, dir string) {
			unix.Sync()
			time.Sleep(3 * 200 * time.Millisecond)
		}},
	}
	for _, c := range cases {
		if c.name == "sync" && testing.Short() {
			continue // sync(2) writes back every filesystem of the machine
		}
		t.Run(c.name, func(t *testing.T) {
			img := mkfs(t)
			dir := t.TempDir()
			args := []string{"--commit-interval", c.interval.String()}
			p := startMount(t, img, dir, args...)
			if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(dir, "e"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "d/f"), []byte("made before sync"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "e/g"), []byte("exchanged"), 0o644); err != nil {
				t.Fatal(err)
			}
			// d/x and e/g swap: d/x is the file, e/g a directory.
			if err := os.Mkdir(filepath.Join(dir, "d/x"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(dir, "d/x"), unix.AT_FDCWD, filepath.Join(dir, "e/g"), unix.RENAME_EXCHANGE); err != nil {
				t.Fatal(err)
			}
			long := strings.Repeat("long/", 819) // 4095 bytes
			if err := os.Symlink(long, filepath.Join(dir, "d/link")); err != nil {
				t.Fatal(err)
			}
			c.durable(t, dir)
			p.cmd.Process.Kill()
			if code := p.wait(); code != -1 {
				t.Fatalf("kill -9: exit code %d", code)
			}
			lazyUnmount(dir)
			fsckClean(t, img)

			p = startMount(t, img, dir, args...)
			verifyFiles(t, dir, map[string][]byte{"d/f": []byte("made before sync"), "d/x": []byte("exchanged")})
			if st, err := os.Stat(filepath.Join(dir, "e/g")); err != nil || !st.IsDir() {
				t.Errorf("e/g after the kill: %v, want the exchanged directory", err)
			}
			if got, err := os.Readlink(filepath.Join(dir, "d/link")); err != nil || got != long {
				t.Errorf("d/link after the kill: %d bytes, %v", len(got), err)
			}
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
			fsckClean(t, img)
		})
	}
}
