package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

type versionInfo struct {
	Version       string   `json:"version"`
	Features      []string `json:"features"`
	NewestVersion string   `json:"newest_version"`
	SilentErrors  []string `json:"silent_errors"`
	Passes        uint64   `json:"recovery_passes_required"`
}

func versionOf(t *testing.T, img string) versionInfo {
	t.Helper()
	out, errs, code := run(t, "info", img, "--json")
	if code != 0 {
		t.Fatalf("info: %d %s", code, errs)
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	return v
}

// TestUpgradeCLI: a format 1.1 image holding files is upgraded offline
// to the newest version (its rmap_maps pass run), refuses a downgrade past
// rmap_maps naming it, downgrades past root_backups, and keeps its files
// and a clean check throughout.
func TestUpgradeCLI(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{Version: "1.1"}); err != nil {
		t.Fatal(err)
	}
	files := populate(t, img)
	if v := versionOf(t, img); v.Version != "1.1" || !slices.Equal(v.Features, []string{"log_chain"}) {
		t.Fatalf("before: %+v", v)
	}
	if _, errs, code := run(t, "upgrade", img, "--to", "1.9"); code != 2 || !strings.Contains(errs, "--to") {
		t.Fatalf("--to 1.9: exit %d %s", code, errs)
	}
	out, errs, code := run(t, "upgrade", img, "--json")
	if code != 0 {
		t.Fatalf("upgrade: exit %d %s", code, errs)
	}
	var doc upgradeDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if doc.From != "1.1" || doc.To != "1.8" || !doc.Changed || !slices.Equal(doc.Added, []string{"rmap_maps", "root_backups", "xattr", "long_symlinks", "large_xattrs", "subvols", "snapshots"}) || !slices.Equal(doc.Passes, []string{"rmap_maps"}) {
		t.Fatalf("upgrade: %+v", doc)
	}
	fsckClean(t, img)
	if v := versionOf(t, img); v.Version != "1.8" || !slices.Equal(v.Features, []string{"log_chain", "rmap_maps", "root_backups", "xattr", "long_symlinks", "large_xattrs", "subvols", "snapshots"}) || v.Passes != 0 {
		t.Fatalf("after: %+v", v)
	}
	if out, _, code := run(t, "upgrade", img); code != 0 || !strings.Contains(out, "already") {
		t.Fatalf("again: exit %d %s", code, out)
	}
	// rmap_maps is in use: refused, named.
	if _, errs, code := run(t, "upgrade", img, "--to", "1.1"); code != 1 || !strings.Contains(errs, "rmap_maps") || !strings.Contains(errs, "in use") {
		t.Fatalf("downgrade to 1.1: exit %d %s", code, errs)
	}
	if v := versionOf(t, img); v.Version != "1.8" {
		t.Fatalf("a refused downgrade changed the version: %+v", v)
	}
	if out, errs, code := run(t, "upgrade", img, "--to", "1.2"); code != 0 || !strings.Contains(out, "dropped snapshots, subvols, large_xattrs, long_symlinks, xattr, root_backups") {
		t.Fatalf("downgrade to 1.2: exit %d %s %s", code, out, errs)
	}
	fsckClean(t, img)
	if v := versionOf(t, img); v.Version != "1.2" || !slices.Equal(v.Features, []string{"log_chain", "rmap_maps"}) {
		t.Fatalf("after the downgrade: %+v", v)
	}
	fsys, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for name, want := range files {
		a, err := fsys.Lookup(fs.RootIno, name)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if n, err := fsys.Read(a.Ino, got, 0); err != nil || n != len(want) || !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d, %v, equal %v", name, n, err, bytes.Equal(got, want))
		}
	}
}

// TestFsckPassCLI: every runnable pass runs by name; an unknown name and
// a marker are usage errors (16) saying why; errors_silent is set and
// cleared, and an unknown error id is a usage error.
func TestFsckPassCLI(t *testing.T) {
	img := mkfs(t)
	for _, p := range engine.PassNames() {
		if out, errs, code := run(t, "fsck", img, "--pass", p); code != 0 || !strings.Contains(errs, "ran recovery pass "+p) {
			t.Fatalf("--pass %s: exit %d\n%s%s", p, code, out, errs)
		}
	}
	if _, errs, code := run(t, "fsck", img, "--pass", "nope"); code != 16 || !strings.Contains(errs, "deleted_inodes") {
		t.Fatalf("--pass nope: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, "fsck", img, "--pass", "csum_untrusted"); code != 16 || !strings.Contains(errs, "marker") {
		t.Fatalf("--pass csum_untrusted: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, "fsck", img, "--silence", "node_bad_checksum,node_bad_magic"); code != 0 {
		t.Fatalf("--silence: exit %d %s", code, errs)
	}
	if v := versionOf(t, img); !slices.Equal(v.SilentErrors, []string{"node_bad_magic", "node_bad_checksum"}) && !slices.Equal(v.SilentErrors, []string{"node_bad_checksum", "node_bad_magic"}) {
		t.Fatalf("silent errors %v", v.SilentErrors)
	}
	if _, errs, code := run(t, "fsck", img, "--unsilence", "node_bad_magic"); code != 0 {
		t.Fatalf("--unsilence: exit %d %s", code, errs)
	}
	if v := versionOf(t, img); !slices.Equal(v.SilentErrors, []string{"node_bad_checksum"}) {
		t.Fatalf("silent errors %v", v.SilentErrors)
	}
	if _, errs, code := run(t, "fsck", img, "--silence", "bogus"); code != 16 || !strings.Contains(errs, "bogus") {
		t.Fatalf("--silence bogus: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, "mount", img, t.TempDir(), "--version-upgrade", "sometimes"); code != 2 || !strings.Contains(errs, "--version-upgrade") {
		t.Fatalf("--version-upgrade sometimes: exit %d %s", code, errs)
	}
	fsckClean(t, img)
}
