package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "scrubd-cli")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "scrubd")
	// The report histories of every run the tests make stay here.
	os.Setenv("SCRUBD_STATE_DIR", filepath.Join(dir, "state"))
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run executes the binary and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

type infoOut struct {
	UUID       string `json:"uuid"`
	Generation uint64 `json:"generation"`
	BlockSize  int    `json:"block_size"`
	Version    string `json:"version"`
	Trees      []struct {
		Name       string `json:"name"`
		Root       uint64 `json:"root"`
		Level      int    `json:"level"`
		Generation uint64 `json:"generation"`
		Items      uint64 `json:"items"`
	} `json:"trees"`
}

func mkfs(t *testing.T) string {
	img := filepath.Join(t.TempDir(), "fs.img")
	if out, errs, code := run(t, "mkfs", img, "--size", "32M"); code != 0 {
		t.Fatalf("mkfs: %d %s %s", code, out, errs)
	}
	return img
}

func info(t *testing.T, img string) infoOut {
	out, errs, code := run(t, "info", img, "--json")
	if code != 0 {
		t.Fatalf("info: %d %s", code, errs)
	}
	var in infoOut
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	return in
}

func TestMkfsInfoFsckClean(t *testing.T) {
	img := mkfs(t)
	in := info(t, img)
	// mkfs commits the root directory after the empty trees.
	if in.UUID == "" || in.Generation < 2 || in.BlockSize != 4096 || in.Version != "1.8" || len(in.Trees) < 13 {
		t.Fatalf("info: %+v", in)
	}
	for _, tr := range in.Trees {
		if tr.Root == 0 || tr.Generation == 0 {
			t.Fatalf("tree %+v", tr)
		}
	}
	out, _, code := run(t, "fsck", img)
	if code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("fsck of a fresh image: exit %d\n%s", code, out)
	}
	out, _, code = run(t, "fsck", img, "--json")
	var rep struct {
		Status     string `json:"status"`
		Found      int    `json:"found"`
		Generation uint64 `json:"generation"`
		Structures []struct {
			Name string `json:"name"`
		} `json:"structures"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || rep.Status != "clean" || rep.Found != 0 || rep.Generation != in.Generation {
		t.Fatalf("fsck --json: exit %d %v %+v", code, err, rep)
	}
}

func TestMkfsRefusesWithoutForce(t *testing.T) {
	img := mkfs(t)
	_, errs, code := run(t, "mkfs", img, "--size", "32M")
	if code == 0 || !strings.Contains(errs, "--force") {
		t.Fatalf("mkfs over an image: exit %d %s", code, errs)
	}
	if _, _, code := run(t, "mkfs", img, "--size", "32M", "--force"); code != 0 {
		t.Fatalf("mkfs --force: exit %d", code)
	}
	if _, errs, code := run(t, "mkfs", img+"2", "--size", "lots"); code != 2 || !strings.Contains(errs, "invalid size") {
		t.Fatalf("bad size: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, "mkfs", img+"3", "--size", "1M"); code == 0 || !strings.Contains(errs, "minimum") {
		t.Fatalf("tiny size: exit %d %s", code, errs)
	}
	if _, err := os.Stat(img + "3"); err == nil {
		t.Fatal("refused mkfs left a file behind")
	}
}

func TestFsckFlippedRootByteNamesTree(t *testing.T) {
	base := mkfs(t)
	clean, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range info(t, base).Trees {
		t.Run(tr.Name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "bad.img")
			b := append([]byte(nil), clean...)
			b[int(tr.Root)*4096+777] ^= 0x04
			if err := os.WriteFile(img, b, 0o644); err != nil {
				t.Fatal(err)
			}
			out, _, code := run(t, "fsck", img)
			if code != 4 || !strings.Contains(out, tr.Name+" block") || !strings.Contains(out, "node_bad_checksum") {
				t.Fatalf("fsck after a flip in %s root %d: exit %d\n%s", tr.Name, tr.Root, code, out)
			}
		})
	}
}

func TestFsckOperationalError(t *testing.T) {
	_, _, code := run(t, "fsck", filepath.Join(t.TempDir(), "missing.img"))
	if code != 8 {
		t.Fatalf("fsck of a missing image: exit %d, want 8", code)
	}
	_, _, code = run(t, "fsck")
	if code != 16 {
		t.Fatalf("fsck without an image: exit %d, want 16", code)
	}
}

func TestMkfsPreallocate(t *testing.T) {
	img := filepath.Join(t.TempDir(), "full.img")
	_, errs, code := run(t, "mkfs", img, "--size", "32M", "--preallocate")
	if code != 0 || !strings.Contains(errs, "100%") {
		t.Fatalf("mkfs --preallocate: exit %d %s", code, errs)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 < 32<<20 {
		t.Fatalf("preallocated image holds %d bytes of host blocks, want 32 MiB", st.Blocks*512)
	}
	if out, _, code := run(t, "fsck", img); code != 0 {
		t.Fatalf("fsck: exit %d %s", code, out)
	}
}
