package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// errOut is the JSON error object every failing command prints with --json.
type errOut struct {
	Version int    `json:"version"`
	Error   string `json:"error"`
	Code    int    `json:"code"`
	Kind    string `json:"kind"`
}

// badImages makes the inputs that hold no usable scrubd filesystem, by
// name: foreign files, truncated images, an image whose superblock copies
// are all destroyed, a directory, /dev/null and a missing path.
func badImages(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	good := mkfs(t)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	write := func(name string, b []byte) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	r := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 8<<20)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	write("random-bytes", random)
	// An ext2-style image: zeros with ext2's magic where ext2 keeps it.
	ext := make([]byte, 8<<20)
	ext[1024+56], ext[1024+57] = 0x53, 0xef
	write("ext2-magic", ext)
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		passwd = []byte("root:x:0:0:root:/root:/bin/bash\n")
	}
	write("text-file", passwd)
	write("zero-length", nil)
	for _, n := range []int{100, 4096, 65536, 3 << 20, len(data) / 2} {
		write(fmt.Sprintf("truncated-%d", n), data[:n])
	}
	wiped := append([]byte(nil), data...)
	for _, b := range []int{0, 16, 256} {
		clear(wiped[b*4096 : (b+1)*4096])
	}
	write("all-superblocks-zeroed", wiped)
	out["directory"] = dir
	out["dev-null"] = os.DevNull
	out["missing"] = filepath.Join(dir, "no-such-image")
	return out
}

// TestBadInputs runs every command on every bad input and asserts the exit
// code and, with --json, a parseable error object on stdout.
func TestBadInputs(t *testing.T) {
	imgs := badImages(t)
	mnt := t.TempDir()
	type cmd struct {
		args func(img string) []string
		code int  // exit code for a bad image
		json bool // the command takes --json
	}
	cmds := map[string]cmd{
		"info":   {func(img string) []string { return []string{"info", img} }, 1, true},
		"fsck":   {func(img string) []string { return []string{"fsck", img} }, 8, true},
		"fsck-r": {func(img string) []string { return []string{"fsck", img, "--repair"} }, 8, true},
		"scrub":  {func(img string) []string { return []string{"scrub", img} }, 8, true},
		"scrub-r": {func(img string) []string {
			return []string{"scrub", img, "--repair", "--data"}
		}, 8, true},
		"inject": {func(img string) []string { return []string{"inject", img, "--tree", "rmap"} }, 1, true},
		"mount":  {func(img string) []string { return []string{"mount", img, mnt} }, 1, false},
	}
	for name, img := range imgs {
		for cname, c := range cmds {
			t.Run(name+"/"+cname, func(t *testing.T) {
				args := c.args(img)
				_, errs, code := run(t, args...)
				if code != c.code {
					t.Fatalf("scrubd %s: exit %d, want %d\n%s", strings.Join(args, " "), code, c.code, errs)
				}
				if errs == "" {
					t.Errorf("scrubd %s: no error message", strings.Join(args, " "))
				}
				if !c.json {
					return
				}
				out, _, code := run(t, append(args, "--json")...)
				var e errOut
				if err := json.Unmarshal([]byte(out), &e); err != nil || e.Error == "" || e.Code != code || e.Version != 1 {
					t.Fatalf("scrubd %s --json: exit %d, stdout is not an error object (%v):\n%s", strings.Join(args, " "), code, err, out)
				}
			})
		}
	}
	// A file that is not a scrubd image says so.
	for _, name := range []string{"random-bytes", "ext2-magic", "text-file", "zero-length", "all-superblocks-zeroed", fmt.Sprintf("truncated-%d", 16<<20), "truncated-65536"} {
		out, _, _ := run(t, "fsck", imgs[name], "--json")
		var e errOut
		json.Unmarshal([]byte(out), &e)
		if e.Kind != "not_a_filesystem" || !strings.Contains(e.Error, "not a scrubd filesystem") {
			t.Errorf("fsck %s: %+v, want a not_a_filesystem error", name, e)
		}
	}
}

// TestUsageErrors: bad sizes, missing arguments and unknown flags exit 2
// (16 for fsck and scrub), with a JSON error object of kind usage.
func TestUsageErrors(t *testing.T) {
	img := mkfs(t)
	dir := t.TempDir()
	for _, c := range []struct {
		code int
		args []string
	}{
		{2, []string{"mkfs"}},
		{2, []string{"mkfs", filepath.Join(dir, "a.img")}},
		{2, []string{"mkfs", filepath.Join(dir, "b.img"), "--size", "1K"}},
		{2, []string{"mkfs", filepath.Join(dir, "c.img"), "--size", "0"}},
		{2, []string{"mkfs", filepath.Join(dir, "d.img"), "--size", "-5G"}},
		{2, []string{"mkfs", filepath.Join(dir, "e.img"), "--size", "lots"}},
		{2, []string{"mkfs", filepath.Join(dir, "f.img"), "--size", "64M", "--label", strings.Repeat("x", 65)}},
		{2, []string{"info"}},
		{2, []string{"info", img, img}},
		{2, []string{"info", img, "--bogus"}},
		{2, []string{"inject", img, "--tree", "rmap", "--bogus"}},
		{2, []string{"mount", img}},
		{2, []string{"mount", img, dir, "--readahead", "3"}},
		{2, []string{"mount", img, dir, "--readahead", "1G"}},
		{2, []string{"mount", img, dir, "--readahead", "lots"}},
		{2, []string{"demo", "extra"}},
		{2, []string{"version", "extra"}},
		{2, []string{"no-such-command"}},
		{2, []string{"--no-such-flag"}},
		{2, []string{"completion", "no-such-shell"}},
		{2, []string{"info", img, "--log-level", "loud"}},
		{16, []string{"fsck"}},
		{16, []string{"fsck", img, "--bogus"}},
		{16, []string{"scrub", img, "extra"}},
		{16, []string{"fsck", img, "--log-format", "xml"}},
	} {
		_, errs, code := run(t, c.args...)
		if code != c.code {
			t.Errorf("scrubd %s: exit %d, want %d\n%s", strings.Join(c.args, " "), code, c.code, errs)
			continue
		}
		out, _, _ := run(t, append(c.args, "--json")...)
		var e errOut
		if err := json.Unmarshal([]byte(out), &e); err != nil || e.Kind != "usage" || e.Code != c.code {
			t.Errorf("scrubd %s --json: %v %+v\n%s", strings.Join(c.args, " "), err, e, out)
		}
	}
	// Nothing above made an image.
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("usage errors left files: %v", ents)
	}
}

// TestVersion: scrubd version, --version, and the version in reports.
func TestVersion(t *testing.T) {
	out := expect(t, 0, "version")
	if !strings.HasPrefix(out, "scrubd ") {
		t.Fatalf("version: %q", out)
	}
	if v := expect(t, 0, "--version"); v != out {
		t.Errorf("--version %q, version %q", v, out)
	}
	var v struct {
		Version       int    `json:"version"`
		ScrubdVersion string `json:"scrubd_version"`
		ReportVersion int    `json:"report_version"`
	}
	if err := json.Unmarshal([]byte(expect(t, 0, "version", "--json")), &v); err != nil || v.ScrubdVersion == "" || v.Version != 1 || v.ReportVersion == 0 {
		t.Fatalf("version --json: %v %+v", err, v)
	}
	var rep struct {
		ScrubdVersion string `json:"scrubd_version"`
		UUID          string `json:"uuid"`
	}
	img := mkfs(t)
	if err := json.Unmarshal([]byte(expect(t, 0, "fsck", img, "--json")), &rep); err != nil || rep.ScrubdVersion != v.ScrubdVersion || rep.UUID == "" {
		t.Fatalf("report: %v %+v", err, rep)
	}
}

// TestSuperblockRepairExits1: a destroyed or altered superblock copy is
// found (exit 4), fsck --repair rewrites it and says so (exit 1), and the
// image is then clean (exit 0).
func TestSuperblockRepairExits1(t *testing.T) {
	for _, c := range []struct {
		name string
		at   int64
		mod  func(b []byte)
	}{
		{"zeroed backup", 16, func(b []byte) { clear(b) }},
		{"zeroed primary", 0, func(b []byte) { clear(b) }},
		{"flipped byte in a backup", 256, func(b []byte) { b[300] ^= 4 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := mkfs(t)
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 4096)
			f.ReadAt(b, c.at*4096)
			c.mod(b)
			f.WriteAt(b, c.at*4096)
			f.Close()
			rep := parseReport(t, expect(t, 4, "fsck", img, "--json"))
			if rep.found("superblock") != 1 {
				t.Fatalf("fsck: %+v", rep)
			}
			rep = parseReport(t, expect(t, 1, "fsck", img, "--repair", "--json"))
			if rep.found("superblock") != 1 || rep.Repaired != 1 {
				t.Fatalf("fsck --repair: %+v", rep)
			}
			expect(t, 0, "fsck", img)
		})
	}
}

// TestInjectLevel: --level picks a node of that level, offline and through
// a mount's control socket alike (the same InjectOptions).
func TestInjectLevel(t *testing.T) {
	img := mkfs(t)
	populate(t, img)
	var res struct {
		Version int    `json:"version"`
		Tree    string `json:"tree"`
		Level   int    `json:"level"`
	}
	if err := json.Unmarshal([]byte(expect(t, 0, "inject", img, "--tree", "rmap", "--kind", "zero", "--level", "0", "--json")), &res); err != nil || res.Level != 0 || res.Tree != "rmap" || res.Version != 1 {
		t.Fatalf("inject --level 0: %v %+v", err, res)
	}
	out, _, code := run(t, "inject", img, "--tree", "alloc", "--level", "5", "--json")
	var e errOut
	if err := json.Unmarshal([]byte(out), &e); err != nil || code != 1 || !strings.Contains(e.Error, "at level 5") {
		t.Fatalf("inject --level 5: exit %d %v %+v", code, err, e)
	}
}

// TestHelpSections: every command's help has EXAMPLES and an EXIT STATUS
// section (the root's says it for all).
func TestHelpSections(t *testing.T) {
	for _, c := range [][]string{{"--help"}, {"mkfs", "--help"}, {"info", "--help"}, {"fsck", "--help"}, {"scrub", "--help"},
		{"mount", "--help"}, {"inject", "--help"}, {"demo", "--help"}, {"version", "--help"}} {
		out := expect(t, 0, c...)
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, "EXIT STATUS") {
			t.Errorf("scrubd %s lacks Examples or EXIT STATUS:\n%s", strings.Join(c, " "), out)
		}
	}
	if out := expect(t, 0, "completion", "--help"); !strings.Contains(out, "Examples:") {
		t.Errorf("completion --help:\n%s", out)
	}
}

// TestFreshImageDataScrub: a freshly made image, never mounted, has its
// root directory: every command works on it, scrub --data included.
func TestFreshImageDataScrub(t *testing.T) {
	img := mkfs(t)
	var rep struct {
		Status    string `json:"status"`
		Requested struct {
			Data bool `json:"data"`
		} `json:"requested"`
	}
	if err := json.Unmarshal([]byte(expect(t, 0, "scrub", img, "--data", "--json")), &rep); err != nil || rep.Status != "clean" || !rep.Requested.Data {
		t.Fatalf("scrub --data of a fresh image: %v %+v", err, rep)
	}
	expect(t, 0, "scrub", img, "--repair", "--data")
	expect(t, 0, "fsck", img)
}
