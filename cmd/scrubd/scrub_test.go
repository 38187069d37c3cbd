package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// privateRuntimeDir points XDG_RUNTIME_DIR (inherited by the mount and
// client processes) at a fresh directory, short enough for a socket path,
// so tests neither touch nor depend on /run.
func privateRuntimeDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd-rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("XDG_RUNTIME_DIR", dir)
	return dir
}

// scrubReport is the part of the JSON report the tests look at.
type scrubReport struct {
	Mode          string `json:"mode"`
	Status        string `json:"status"`
	Found         int    `json:"found"`
	BytesVerified uint64 `json:"bytes_verified"`
	Repaired      int    `json:"repaired"`
	Structures    []struct {
		Name     string `json:"name"`
		Found    int    `json:"found"`
		Repaired int    `json:"repaired"`
		Findings []struct {
			Name     string `json:"name"`
			Block    uint64 `json:"block"`
			Repaired bool   `json:"repaired"`
		} `json:"findings"`
	} `json:"structures"`
}

func parseReport(t *testing.T, out string) scrubReport {
	t.Helper()
	var r scrubReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	return r
}

// found returns the findings a report has in structure name.
func (r scrubReport) found(name string) int {
	for _, s := range r.Structures {
		if s.Name == name {
			return s.Found
		}
	}
	return 0
}

// expect runs scrubd with args and fails unless it exits with want.
func expect(t *testing.T, want int, args ...string) string {
	t.Helper()
	out, errs, code := run(t, args...)
	if code != want {
		t.Fatalf("scrubd %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errs)
	}
	return out
}

// populate writes a few files straight through the engine, so the image
// has data extents and is past generation 1 (stale-gen needs an older one).
func populate(t *testing.T, img string) map[string][]byte {
	t.Helper()
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	want := map[string][]byte{}
	for i := range 12 {
		name := "f" + strconv.Itoa(i)
		a, err := fsys.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		data := randBytes(r, 1+r.IntN(300_000))
		if _, err := fsys.Write(a.Ino, data, 0); err != nil {
			t.Fatal(err)
		}
		want[name] = data
		if i%4 == 3 {
			if err := fsys.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestScrubOnline drives the whole online flow through the CLI and a real
// FUSE mount: a clean scrub, damage through the control socket, a scrub
// that finds it, a repair, a clean scrub, the files intact, a clean
// unmount and a clean offline fsck.
func TestScrubOnline(t *testing.T) {
	needFuse(t)
	rt := privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	// Commits only on fsync and unmount: see the writer below.
	p := startMount(t, img, dir, "--commit-interval", "-1s")

	// The socket: owner-only, in an owner-only directory.
	sock := daemon.SocketPath(dir)
	if !strings.HasPrefix(sock, filepath.Join(rt, "scrubd")+"/") {
		t.Fatalf("socket %s is not under %s", sock, rt)
	}
	for path, want := range map[string]os.FileMode{sock: 0o600, filepath.Dir(sock): 0o700} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if fi, _ := os.Lstat(sock); fi == nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("%s is not a socket", sock)
	}
	if !daemon.IsServed(dir) {
		t.Fatal("IsServed(mountpoint) = false while mounted")
	}
	if daemon.IsServed(img) || daemon.IsServed(t.TempDir()) {
		t.Fatal("IsServed true for an image or an unmounted directory")
	}

	r := rand.New(rand.NewPCG(5, 5))
	want := map[string][]byte{}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		name := "f" + strconv.Itoa(i)
		if i%2 == 1 {
			name = filepath.Join("sub", name)
		}
		data := randBytes(r, 1+r.IntN(200_000))
		writeSynced(t, filepath.Join(dir, name), data, 0)
		want[name] = data
	}

	out := expect(t, 0, "scrub", dir)
	if !strings.Contains(out, "online check of") || !strings.Contains(out, ": clean") {
		t.Fatalf("scrub of a healthy mount:\n%s", out)
	}
	expect(t, 0, "scrub", dir, "--data")

	out = expect(t, 0, "inject", dir, "--tree", "rmap", "--kind", "bitflip", "--json")
	var inj inject.Result
	if err := json.Unmarshal([]byte(out), &inj); err != nil || inj.Tree != "rmap" || inj.Kind != "bitflip" || inj.Block == 0 {
		t.Fatalf("inject --json: %v\n%s", err, out)
	}

	rep := parseReport(t, expect(t, 4, "scrub", dir, "--json"))
	if rep.Mode != "online" || rep.Status != "uncorrected" || rep.Found == 0 || rep.found("rmap") == 0 {
		t.Fatalf("scrub after damage: %+v", rep)
	}
	hit := false
	for _, s := range rep.Structures {
		for _, f := range s.Findings {
			hit = hit || (s.Name == "rmap" && f.Block == inj.Block)
		}
	}
	if !hit {
		t.Errorf("no rmap finding names the damaged block %d: %+v", inj.Block, rep)
	}

	out = expect(t, 1, "scrub", dir, "--repair")
	if !strings.Contains(out, ": corrected") || !strings.Contains(out, "rebuilt the rmap tree online") {
		t.Fatalf("scrub --repair:\n%s", out)
	}
	expect(t, 0, "scrub", dir)
	verifyFiles(t, dir, want)

	// Every kind of damage, while a writer keeps writing and fsyncing
	// through the mount: found, repaired online, clean again. The writer
	// pauses from the injection until the scrub has seen the damage: a
	// commit in between may copy-on-write the damaged block away (its
	// replacement built from the intact in-memory copy), and then there
	// is rightly nothing to find.
	var pause sync.Mutex
	var writes atomic.Int64
	stop := make(chan struct{})
	written := make(chan map[string][]byte, 1)
	go func() {
		w := rand.New(rand.NewPCG(6, 6))
		got := map[string][]byte{}
		defer func() { written <- got }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pause.Lock()
			name := "w" + strconv.Itoa(i%40)
			data := randBytes(w, 1+w.IntN(64<<10))
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
			if err == nil {
				_, err = f.Write(data)
				if err == nil {
					err = f.Sync()
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			pause.Unlock()
			if err != nil {
				got["error"] = []byte(name + ": " + err.Error())
				return
			}
			got[name] = data
			writes.Add(1)
		}
	}()
	for i, kind := range inject.Kinds {
		expect(t, 0, "scrub", dir) // no false positives under load
		pause.Lock()
		out := expect(t, 0, "inject", dir, "--tree", "rmap", "--kind", kind, "--seed", strconv.Itoa(10+i))
		if !strings.HasPrefix(out, "injected "+kind+" into rmap block ") {
			t.Fatalf("inject printed %q", out)
		}
		if rep := parseReport(t, expect(t, 4, "scrub", dir, "--json")); rep.Found == 0 {
			t.Fatalf("scrub after %s: %+v", kind, rep)
		}
		pause.Unlock()
		rep := parseReport(t, expect(t, 1, "scrub", dir, "--repair", "--json"))
		if rep.Status != "corrected" || rep.Repaired == 0 {
			t.Fatalf("repair of %s: %+v", kind, rep)
		}
		expect(t, 0, "scrub", dir)
	}
	close(stop)
	w := <-written
	t.Logf("the writer wrote and fsync'd %d times during the scrubs and repairs", writes.Load())
	for name, data := range w {
		if name == "error" {
			t.Fatalf("writer during scrubs and repairs: %s", data)
		}
		want[name] = data
	}
	expect(t, 0, "scrub", dir, "--data")
	verifyFiles(t, dir, want)

	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after unmount: %v", sock, err)
	}
	if daemon.IsServed(dir) {
		t.Error("IsServed after unmount")
	}
	fsckClean(t, img)

	p = startMount(t, img, dir)
	verifyFiles(t, dir, want)
	p.signal(syscall.SIGINT)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGINT: exit %d\n%s", code, p.stderr)
	}
}

// TestScrubRefusesMountedImage: offline commands on an image a mount
// serves would race the mount's writes; they refuse and name the
// mountpoint. A directory that nobody serves is an operational error.
func TestScrubRefusesMountedImage(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir)
	for _, c := range []struct {
		code int
		args []string
	}{
		{8, []string{"scrub", img}},
		{8, []string{"scrub", img, "--repair"}},
		{8, []string{"fsck", img, "--repair"}},
		{1, []string{"inject", img, "--tree", "rmap"}},
	} {
		_, errs, code := run(t, c.args...)
		if code != c.code || !strings.Contains(errs, "mounted on "+dir) {
			t.Errorf("scrubd %s: exit %d (want %d)\n%s", strings.Join(c.args, " "), code, c.code, errs)
		}
	}
	_, errs, code := run(t, "scrub", t.TempDir())
	if code != 8 || !strings.Contains(errs, "no scrubd mount serves it") {
		t.Errorf("scrub of a plain directory: exit %d\n%s", code, errs)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
	fsckClean(t, img)
}

// TestScrubSocketGoneAfterExternalUnmount: umount from outside ends the
// mount process, and its control socket with it.
func TestScrubSocketGoneAfterExternalUnmount(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir)
	sock := daemon.SocketPath(dir)
	if _, err := os.Lstat(sock); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("after umount: exit %d\n%s", code, p.stderr)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket after umount: %v", err)
	}
	_, errs, code := run(t, "scrub", dir)
	if code != 8 {
		t.Fatalf("scrub of an unmounted mountpoint: exit %d\n%s", code, errs)
	}
	fsckClean(t, img)
}

// TestScrubOfflineEveryKind: every kind of damage injected offline into
// the rmap tree is found by fsck, repaired by fsck --repair, and gone
// afterwards; the files are intact.
func TestScrubOfflineEveryKind(t *testing.T) {
	for i, kind := range inject.Kinds {
		t.Run(kind, func(t *testing.T) {
			img := mkfs(t)
			want := populate(t, img)
			out := expect(t, 0, "inject", img, "--tree", "rmap", "--kind", kind, "--seed", strconv.Itoa(i+1))
			if !strings.HasPrefix(out, "injected "+kind+" into rmap block ") {
				t.Fatalf("inject printed %q", out)
			}
			rep := parseReport(t, expect(t, 4, "fsck", img, "--json"))
			if rep.Status != "uncorrected" || rep.Found == 0 {
				t.Fatalf("fsck after %s: %+v", kind, rep)
			}
			// scrub of an image without --repair reads only.
			before, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			rep = parseReport(t, expect(t, 4, "scrub", img, "--json"))
			if rep.Mode != "offline" || rep.Status != "uncorrected" {
				t.Fatalf("scrub of the damaged image: %+v", rep)
			}
			if after, _ := os.ReadFile(img); string(after) != string(before) {
				t.Fatal("scrub without --repair changed the image")
			}

			rep = parseReport(t, expect(t, 1, "fsck", img, "--repair", "--json"))
			if rep.Status != "corrected" || rep.Repaired == 0 {
				t.Fatalf("fsck --repair after %s: %+v", kind, rep)
			}
			expect(t, 0, "fsck", img)
			expect(t, 0, "scrub", img, "--data")

			fsys, err := fs.OpenPath(img, fs.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer fsys.Close()
			for name, data := range want {
				a, err := fsys.Lookup(fs.RootIno, name)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := make([]byte, len(data)+1)
				n, err := fsys.Read(a.Ino, got, 0)
				if err != nil || string(got[:n]) != string(data) {
					t.Fatalf("%s after repair: %d bytes, %v", name, n, err)
				}
			}
		})
	}
}

// TestScrubOfflineRepairFlag: scrub IMAGE --repair does what fsck --repair
// does.
func TestScrubOfflineRepairFlag(t *testing.T) {
	img := mkfs(t)
	populate(t, img)
	expect(t, 0, "scrub", img)
	expect(t, 0, "inject", img, "--tree", "rmap", "--kind", "drop-record")
	// --tmpdir places the rebuild's temporary files: a directory that
	// does not exist leaves the damage, and says why.
	missing := filepath.Join(t.TempDir(), "missing")
	out := expect(t, 4, "scrub", img, "--repair", "--tmpdir", missing)
	if !strings.Contains(out, "temporary directory") {
		t.Errorf("scrub --repair --tmpdir %s:\n%s", missing, out)
	}
	out = expect(t, 1, "scrub", img, "--repair", "--tmpdir", t.TempDir())
	if !strings.Contains(out, "offline check and repair of") || !strings.Contains(out, ": corrected") {
		t.Fatalf("scrub --repair:\n%s", out)
	}
	expect(t, 0, "fsck", img)
}

// TestFsckRepairsRootTree: a damaged root tree (format 1.3) is found
// (4), then repaired by fsck --repair (1: the open wrote a new root tree
// from the superblock's root backup, and the report counts it), then
// clean (0).
func TestFsckRepairsRootTree(t *testing.T) {
	img := mkfs(t)
	populate(t, img)
	expect(t, 0, "inject", img, "--tree", "root", "--kind", "bitflip")
	expect(t, 4, "fsck", img)
	out := expect(t, 1, "fsck", img, "--repair")
	if !strings.Contains(out, "root backup") || !strings.Contains(out, "1 found, 1 repaired") {
		t.Errorf("fsck --repair of a damaged root tree:\n%s", out)
	}
	expect(t, 0, "fsck", img)
}

// TestScrubUnrepairableDamage: damage the repairs cannot fix — the rmap
// and the free-space tree damaged at once, each rebuilt from the other's
// information, so both repairs refuse — is reported as uncorrected (4),
// the notes say why, and fsck --repair leaves the findings as they were.
func TestScrubUnrepairableDamage(t *testing.T) {
	img := mkfs(t)
	populate(t, img)
	expect(t, 0, "inject", img, "--tree", "rmap", "--kind", "bitflip", "--level", "0", "--seed", "3")
	expect(t, 0, "inject", img, "--tree", "free", "--kind", "bitflip", "--level", "0", "--seed", "4")
	before := parseReport(t, expect(t, 4, "fsck", img, "--json"))
	expect(t, 4, "scrub", img)
	out := expect(t, 4, "fsck", img, "--repair")
	if !strings.Contains(out, "rmap not repaired") || !strings.Contains(out, "free not repaired") {
		t.Errorf("fsck --repair does not say why:\n%s", out)
	}
	after := parseReport(t, expect(t, 4, "fsck", img, "--json"))
	if after.Found != before.Found || after.found("rmap") != before.found("rmap") || after.found("free") != before.found("free") {
		t.Errorf("fsck --repair changed the findings: before %+v\nafter %+v", before, after)
	}
}

// TestScrubInjectUsage: usage errors, operational errors and help text.
func TestScrubInjectUsage(t *testing.T) {
	img := mkfs(t)
	missing := filepath.Join(t.TempDir(), "missing.img")
	for _, c := range []struct {
		code int
		args []string
	}{
		{16, []string{"scrub"}},
		{16, []string{"scrub", img, img}},
		{16, []string{"scrub", img, "--no-such-flag"}},
		{8, []string{"scrub", missing}},
		{8, []string{"scrub", missing, "--repair"}},
		{8, []string{"fsck", missing, "--repair"}},
		{2, []string{"inject"}},
		{2, []string{"inject", img}},
		{2, []string{"inject", img, "--tree", "no-such-tree"}},
		{2, []string{"inject", img, "--tree", "rmap", "--kind", "no-such-kind"}},
		{2, []string{"inject", img, "--tree", "rmap", "--seed", "x"}},
		{1, []string{"inject", missing, "--tree", "rmap"}},
		{1, []string{"inject", img, "--tree", "subvol", "--kind", "drop-record"}},
		{1, []string{"inject", img, "--tree", "rmap", "--level", "9"}},
		{2, []string{"inject", img, "--tree", "rmap", "--level", "-1"}},
	} {
		out, errs, code := run(t, c.args...)
		if code != c.code {
			t.Errorf("scrubd %s: exit %d, want %d\n%s%s", strings.Join(c.args, " "), code, c.code, out, errs)
		}
	}
	// Nothing above damaged the image.
	expect(t, 0, "fsck", img)
	for _, cmd := range []string{"scrub", "inject", "fsck"} {
		out := expect(t, 0, cmd, "--help")
		if !strings.Contains(out, "EXIT STATUS") {
			t.Errorf("%s --help has no EXIT STATUS section:\n%s", cmd, out)
		}
	}
}
