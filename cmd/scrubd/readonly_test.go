package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMountReadOnly: --read-only serves every file, refuses writes with
// EROFS, lets scrub check (and say it cannot repair), and never writes the
// image — even one whose deleted-inodes tree is damaged, which a
// read-write mount refuses (its recovery pass cannot read it).
func TestMountReadOnly(t *testing.T) {
	privateRuntimeDir(t)
	img := mkfs(t)
	want := populate(t, img)
	expect(t, 0, "inject", img, "--tree", "deleted", "--kind", "bitflip")
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := startMount(t, img, dir, "--read-only")
	verifyFiles(t, dir, want)
	err = os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("write on a read-only mount: %v, want EROFS", err)
	}
	out := expect(t, 4, "scrub", dir, "--repair")
	if !strings.Contains(out, "read-only") {
		t.Errorf("scrub --repair on a read-only mount:\n%s", out)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
	after, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a read-only mount changed the image")
	}
}

// TestMountReadOnlyUsage: unknown rescue options and repairs on a
// read-only mount are usage errors (2, as every mount usage error), named.
func TestMountReadOnlyUsage(t *testing.T) {
	img := mkfs(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rescue", "nosuch"}, `--rescue "nosuch"`},
		{[]string{"--read-only", "--auto-repair"}, "read-only mount cannot repair"},
		{[]string{"--rescue", "ignorebadroots", "--schedule", "@daily", "--repair"}, "read-only mount cannot repair"},
	} {
		_, stderr, code := run(t, append([]string{"mount", img, dir}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("mount %v: exit %d\n%s", c.args, code, stderr)
		}
	}
}
