package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// injectDoc is the part of inject --json the tests look at.
type injectDoc struct {
	Tree  string `json:"tree"`
	Kind  string `json:"kind"`
	Block uint64 `json:"block"`
	File  *struct {
		Path      string `json:"path"`
		Inode     uint64 `json:"inode"`
		Offset    uint64 `json:"offset"`
		DiskBlock uint64 `json:"disk_block"`
	} `json:"file"`
}

func injectJSON(t *testing.T, args ...string) injectDoc {
	t.Helper()
	var d injectDoc
	out := expect(t, 0, append(append([]string{"inject"}, args...), "--json")...)
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("inject --json: %v\n%s", err, out)
	}
	return d
}

// findingsReport is the part of a report's findings these tests look at.
type findingsReport struct {
	Structures []struct {
		Name     string `json:"name"`
		Findings []struct {
			Name      string  `json:"name"`
			Block     uint64  `json:"block"`
			Path      string  `json:"path"`
			Offset    *uint64 `json:"offset"`
			DiskBlock *uint64 `json:"disk_block"`
		} `json:"findings"`
	} `json:"structures"`
}

// findings lists a report's findings as "structure/name@block".
func findings(t *testing.T, out string) []string {
	t.Helper()
	var r findingsReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	var fs []string
	for _, s := range r.Structures {
		for _, f := range s.Findings {
			fs = append(fs, fmt.Sprintf("%s/%s@%d", s.Name, f.Name, f.Block))
		}
	}
	return fs
}

// TestInjectSuperblock: every superblock kind damages the copy --copy
// names, which fsck finds (exit 4) with the kind's finding, fsck --repair
// rewrites (exit 1), and the image is then clean (exit 0).
func TestInjectSuperblock(t *testing.T) {
	for _, c := range []struct {
		kind, copyAt, finding string
	}{
		{"bitflip", "0", "super_copy_bad"},
		{"zero", "16", "super_copy_bad"},
		{"wrong-owner", "256", "super_copy_bad"},
		{"stale-gen", "0", "super_copy_stale"},
	} {
		t.Run(c.kind, func(t *testing.T) {
			img := mkfs(t)
			d := injectJSON(t, img, "--tree", "superblock", "--kind", c.kind, "--copy", c.copyAt)
			if d.Tree != "superblock" || fmt.Sprint(d.Block) != c.copyAt || d.Kind != c.kind || d.File != nil {
				t.Fatalf("inject: %+v", d)
			}
			want := fmt.Sprintf("superblock/%s@%s", c.finding, c.copyAt)
			if got := findings(t, expect(t, 4, "fsck", img, "--json")); strings.Join(got, " ") != want {
				t.Fatalf("fsck found %v, want %s", got, want)
			}
			rep := parseReport(t, expect(t, 1, "fsck", img, "--repair", "--json"))
			if rep.found("superblock") != 1 || rep.Repaired != 1 {
				t.Fatalf("fsck --repair: %+v", rep)
			}
			expect(t, 0, "fsck", img)
		})
	}
	// The seed picks a copy when --copy does not; text output names it.
	img := mkfs(t)
	out := expect(t, 0, "inject", img, "--tree", "superblock", "--seed", "4")
	if !strings.Contains(out, "superblock copy at block") {
		t.Fatalf("inject: %s", out)
	}
	expect(t, 4, "fsck", img)
}

// TestInjectFile: damage to the data block holding a byte of a file is
// found by scrub --data (exit 4) as data_checksum, naming the file, the
// block's offset and its disk block; the metadata check finds nothing.
func TestInjectFile(t *testing.T) {
	for _, kind := range []string{"bitflip", "zero"} {
		t.Run(kind, func(t *testing.T) {
			img := mkfs(t)
			files := populate(t, img)
			name := ""
			for n, data := range files {
				if len(data) > 3*4096 && (name == "" || n < name) {
					name = n
				}
			}
			if name == "" {
				t.Fatal("populate wrote no file of 3 blocks")
			}
			d := injectJSON(t, img, "--file", "/"+name, "--offset", "9000", "--kind", kind)
			if d.File == nil || d.File.Path != "/"+name || d.File.Offset != 8192 || d.File.DiskBlock != d.Block || d.Tree != "data" {
				t.Fatalf("inject: %+v %+v", d, d.File)
			}
			expect(t, 0, "fsck", img)
			out := expect(t, 4, "scrub", img, "--data", "--json")
			var r findingsReport
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range r.Structures {
				for _, f := range s.Findings {
					if f.Offset == nil || f.DiskBlock == nil {
						t.Fatalf("finding %+v has no offset or disk block", f)
					}
					got = append(got, fmt.Sprintf("%s %s %d %d", f.Name, f.Path, *f.Offset, *f.DiskBlock))
				}
			}
			if want := fmt.Sprintf("data_checksum /%s 8192 %d", name, d.Block); strings.Join(got, "; ") != want {
				t.Fatalf("scrub --data found %q, want %q", got, want)
			}
			if text := expect(t, 4, "scrub", img, "--data"); !strings.Contains(text, "/"+name) || !strings.Contains(text, "8192") {
				t.Fatalf("scrub --data does not name the file and offset:\n%s", text)
			}
		})
	}
}

// TestInjectTargetsUsage: flag combinations that make no sense are usage
// errors (2); requests the target cannot take fail (1) and write nothing.
func TestInjectTargetsUsage(t *testing.T) {
	img := mkfs(t)
	files := populate(t, img)
	for _, c := range []struct {
		code int
		args []string
	}{
		{2, []string{"--tree", "rmap", "--copy", "16"}},
		{2, []string{"--copy", "16"}},
		{2, []string{"--tree", "superblock", "--level", "0"}},
		{2, []string{"--tree", "superblock", "--kind", "melt"}},
		{2, []string{"--tree", "rmap", "--file", "/f0"}},
		{2, []string{"--tree", "rmap", "--offset", "5"}},
		{2, []string{"--file", "/f0", "--level", "0"}},
		{2, []string{"--file", "/f0", "--copy", "0"}},
		{1, []string{"--tree", "superblock", "--kind", "drop-record"}},
		{1, []string{"--tree", "superblock", "--copy", "5"}},
		{1, []string{"--file", "/f0", "--kind", "stale-gen"}},
		{1, []string{"--file", "/f0", "--kind", "drop-record"}},
		{1, []string{"--file", "/f0", "--offset", fmt.Sprint(len(files["f0"]))}},
		{1, []string{"--file", "/no-such-file"}},
		{1, []string{"--file", "/"}},
	} {
		out, errs, code := run(t, append([]string{"inject", img}, c.args...)...)
		if code != c.code {
			t.Errorf("inject %s: exit %d, want %d\n%s%s", strings.Join(c.args, " "), code, c.code, out, errs)
		}
	}
	expect(t, 0, "scrub", img, "--data")
}

// TestInjectTargetsMounted: through the mountpoint, a file's data block
// is damaged (scrub --data through the mount finds data_checksum naming
// the file) and a superblock copy too (a scrub finds it, or the next
// commit already rewrote it); a request that cannot apply is refused
// (1) and the mount goes on.
func TestInjectTargetsMounted(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	populate(t, img)
	dir := t.TempDir()
	p := startMount(t, img, dir, "--commit-interval", "1h")
	out := expect(t, 0, "inject", dir, "--file", "/f1", "--offset", "100", "--kind", "zero")
	if !strings.Contains(out, "/f1") {
		t.Errorf("inject --file through the mount:\n%s", out)
	}
	if out := expect(t, 4, "scrub", dir, "--data"); !strings.Contains(out, "data_checksum") || !strings.Contains(out, "/f1") {
		t.Errorf("scrub --data after file damage:\n%s", out)
	}
	expect(t, 0, "inject", dir, "--tree", "superblock", "--copy", "16", "--kind", "bitflip")
	if out := expect(t, 4, "scrub", dir); !strings.Contains(out, "super_copy_bad") {
		t.Errorf("scrub after superblock damage:\n%s", out)
	}
	if _, errs, code := run(t, "inject", dir, "--file", "/no-such-file"); code != 1 || !strings.Contains(errs, "no-such-file") {
		t.Errorf("inject of a missing file through the mount: exit %d\n%s", code, errs)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
}
