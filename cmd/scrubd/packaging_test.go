package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackaging: the systemd units' commands name real commands and
// flags of this binary, the example configuration parses (a mount with it
// fails only on its made-up image), and generate writes a man page per
// command and the completions.
func TestPackaging(t *testing.T) {
	units, _ := filepath.Glob(filepath.Join("..", "..", "packaging", "systemd", "*.service"))
	if len(units) < 2 {
		t.Fatalf("units: %v", units)
	}
	for _, u := range units {
		f, err := os.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		found := false
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "ExecStart=")
			if !ok {
				continue
			}
			found = true
			args := strings.Fields(line)
			if filepath.Base(args[0]) != "scrubd" {
				t.Fatalf("%s: ExecStart runs %s", u, args[0])
			}
			repl := strings.NewReplacer("%i", "data", "%I", "data", "%f", "/mnt/data")
			var a []string
			for _, x := range args[1:] {
				a = append(a, repl.Replace(x))
			}
			if _, errs, code := run(t, append(a, "--help")...); code != 0 {
				t.Fatalf("%s: scrubd %v --help: exit %d %s", u, a, code, errs)
			}
		}
		f.Close()
		if !found {
			t.Fatalf("%s: no ExecStart", u)
		}
	}
	example := filepath.Join("..", "..", "packaging", "systemd", "example.yaml")
	_, errs, code := run(t, "mount", "--config", example)
	if code != 1 || !strings.Contains(errs, "data.img") {
		t.Fatalf("mount --config example.yaml: exit %d (want 1: the image does not exist) %s", code, errs)
	}
	// Configuration errors name the key and line; the command line wins.
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	for _, c := range []struct {
		yaml string
		args []string
		code int
		msg  string
	}{
		{"image: x.img\nmountpont: /mnt\n", nil, 2, `line 2: key "mountpont": no such setting`},
		{"image: x.img\nmountpoint: /mnt\nhistory-keep: lots\n", nil, 2, `line 3: key "history-keep"`},
		{"image: x.img\nmountpoint: /mnt\nmetrics: [a, b]\n", nil, 2, `key "metrics": takes one value`},
		{"image: x.img\nmountpoint: /mnt\nschedule: ['61 * * * *']\n", nil, 2, "--schedule"},
		{"- a\n- b\n", nil, 2, "want a mapping"},
		{"image: x.img\nmountpoint: /mnt\nhistory-keep: 0\n", []string{"--history-keep", "5"}, 1, "x.img"},
		{"mountpoint: /mnt\n", nil, 2, "needs IMAGE and MOUNTPOINT"},
	} {
		if err := os.WriteFile(cfg, []byte(c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errs, code := run(t, append([]string{"mount", "--config", cfg}, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("config %q %v: exit %d %q, want %d and %q", c.yaml, c.args, code, errs, c.code, c.msg)
		}
	}
	dir := t.TempDir()
	expect(t, 0, "generate", dir)
	for _, p := range []string{"man1/scrubd.1", "man1/scrubd-mount.1", "man1/scrubd-status.1", "man1/scrubd-report.1",
		"completions/scrubd.bash", "completions/_scrubd", "completions/scrubd.fish"} {
		if fi, err := os.Stat(filepath.Join(dir, p)); err != nil || fi.Size() == 0 {
			t.Fatalf("generate: %s: %v", p, err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "man1", "scrubd-mount.1"))
	if !strings.Contains(string(b), "schedule") || !strings.Contains(string(b), ".TH") {
		t.Fatal("scrubd-mount.1 is not a man page of mount")
	}
}
