package main

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/fs"
)

// needFuse skips unless this process can mount FUSE filesystems.
func needFuse(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mount tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("no fusermount3")
	}
}

// mountProc is a running `scrubd mount`.
type mountProc struct {
	t      *testing.T
	dir    string
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{} // closed when the process has exited
	code   int           // its exit code (-1: killed by a signal)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMount runs `scrubd mount img dir args...` and waits for its
// "mounted" line. Cleanup kills it if it still runs and lazily unmounts
// whatever it left.
func startMount(t *testing.T, img, dir string, args ...string) *mountProc {
	t.Helper()
	needFuse(t)
	p := &mountProc{t: t, dir: dir, stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"mount", img, dir}, args...)...)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mounted := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "mounted ") {
				mounted <- sc.Text()
			}
		}
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		lazyUnmount(dir)
	})
	select {
	case line := <-mounted:
		if want := "mounted " + img + " on " + dir; line != want {
			t.Fatalf("mount printed %q, want %q", line, want)
		}
	case <-p.done:
		t.Fatalf("scrubd mount exited with %d before mounting:\n%s", p.code, p.stderr)
	case <-time.After(20 * time.Second):
		t.Fatalf("scrubd mount printed nothing in 20s:\n%s", p.stderr)
	}
	return p
}

// lazyUnmount detaches whatever is mounted on dir (a dead FUSE mount after
// kill -9 included).
func lazyUnmount(dir string) {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		exec.Command("fusermount3", "-u", "-z", dir).Run()
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *mountProc) wait() int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(30 * time.Second):
		p.t.Fatalf("scrubd mount still running 30s after it was told to stop:\n%s", p.stderr)
		return 0
	}
}

func (p *mountProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

func isMountpoint(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func fsckClean(t *testing.T, img string) {
	t.Helper()
	out, errs, code := run(t, "fsck", img)
	if code != 0 {
		t.Fatalf("fsck: exit %d\n%s%s", code, out, errs)
	}
}

// writeSynced writes data to path at off (creating it) and fsyncs it.
func writeSynced(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func verifyFiles(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, data) {
			i := 0
			for i < min(len(got), len(data)) && got[i] == data[i] {
				i++
			}
			t.Errorf("%s: %d bytes, want %d; first difference at %d", name, len(got), len(data), i)
		}
	}
}

func TestMountKillRemount(t *testing.T) {
	for _, mode := range []string{"treelog", "notreelog", "no-delalloc"} {
		t.Run(mode, func(t *testing.T) {
			var args []string
			if mode != "treelog" {
				args = append(args, "--"+mode)
			}
			// No periodic commits: what survives the kill is what fsync made
			// durable (a full commit for new files, the log for rewrites).
			args = append(args, "--commit-interval", "-1s")
			img := mkfs(t)
			dir := t.TempDir()
			p := startMount(t, img, dir, args...)

			r := rand.New(rand.NewPCG(42, uint64(len(mode))))
			want := map[string][]byte{}
			if err := os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755); err != nil {
				t.Fatal(err)
			}
			for i := range 24 {
				name := "f" + strconv.Itoa(i)
				switch i % 3 {
				case 1:
					name = filepath.Join("sub", name)
				case 2:
					name = filepath.Join("sub", "deeper", name)
				}
				data := randBytes(r, r.IntN(400_000))
				writeSynced(t, filepath.Join(dir, name), data, 0)
				want[name] = data
			}
			// Rewrites and appends of files already committed: the fast
			// fsync path logs these.
			for name, data := range want {
				if len(data) < 10 || r.IntN(2) == 0 {
					continue
				}
				off := r.IntN(len(data))
				patch := randBytes(r, 1+r.IntN(20_000))
				writeSynced(t, filepath.Join(dir, name), patch, int64(off))
				if end := off + len(patch); end > len(data) {
					data = append(data, make([]byte, end-len(data))...)
				}
				copy(data[off:], patch)
				want[name] = data
			}
			// A file unlinked while open, with the unlink committed: the
			// next mount frees it.
			doomed := filepath.Join(dir, "doomed")
			writeSynced(t, doomed, randBytes(r, 2<<20), 0)
			df, err := os.Open(doomed)
			if err != nil {
				t.Fatal(err)
			}
			defer df.Close()
			var dst syscall.Stat_t
			if err := syscall.Fstat(int(df.Fd()), &dst); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(doomed); err != nil {
				t.Fatal(err)
			}
			writeSynced(t, filepath.Join(dir, "after-unlink"), []byte("commits the unlink"), 0)
			want["after-unlink"] = []byte("commits the unlink")
			// Unsynced work may or may not survive; it must not hurt.
			if err := os.WriteFile(filepath.Join(dir, "unsynced"), randBytes(r, 50_000), 0o644); err != nil {
				t.Fatal(err)
			}
			verifyFiles(t, dir, want)

			p.cmd.Process.Kill()
			if code := p.wait(); code != -1 {
				t.Fatalf("kill -9: exit code %d", code)
			}
			df.Close() // ENOTCONN: the server is gone
			lazyUnmount(dir)
			if isMountpoint(t, dir) {
				t.Fatal("still mounted after umount -l")
			}

			p = startMount(t, img, dir, args...)
			verifyFiles(t, dir, want)
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
			if isMountpoint(t, dir) {
				t.Fatal("still mounted after SIGTERM")
			}
			fsckClean(t, img)

			// And once more, after the clean unmount.
			p = startMount(t, img, dir, args...)
			verifyFiles(t, dir, want)
			p.signal(syscall.SIGINT)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGINT: exit %d\n%s", code, p.stderr)
			}
			fsckClean(t, img)
			fsys, err := fs.OpenPath(img, fs.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer fsys.Close()
			if _, err := fsys.GetAttr(dst.Ino); !errors.Is(err, syscall.ENOENT) {
				t.Errorf("inode %d, unlinked while open at the crash, after two mounts: %v", dst.Ino, err)
			}
		})
	}
}

func TestMountSIGTERMCommits(t *testing.T) {
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir, "--commit-interval", "-1s")
	// Not fsync'd: the commit at unmount makes it durable.
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("committed at unmount"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
	if isMountpoint(t, dir) {
		t.Fatal("still mounted after SIGTERM")
	}
	fsckClean(t, img)
	p = startMount(t, img, dir)
	verifyFiles(t, dir, map[string][]byte{"f": []byte("committed at unmount")})
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
	}
}

func TestMountSIGTERMWithOpenFile(t *testing.T) {
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir)
	f, err := os.Create(filepath.Join(dir, "open"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.signal(syscall.SIGTERM)
	// The busy mount is detached at once, and the open file still served.
	deadline := time.Now().Add(10 * time.Second)
	for isMountpoint(t, dir) {
		if time.Now().After(deadline) {
			t.Fatal("still mounted 10s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := f.WriteString("written after SIGTERM"); err != nil {
		t.Fatalf("write to a file open across SIGTERM: %v", err)
	}
	select {
	case <-p.done:
		t.Fatal("scrubd mount exited while a file was open")
	case <-time.After(200 * time.Millisecond):
	}
	f.Close()
	if code := p.wait(); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.stderr)
	}
	fsckClean(t, img)
	p = startMount(t, img, dir)
	verifyFiles(t, dir, map[string][]byte{"open": []byte("written after SIGTERM")})
	p.signal(syscall.SIGTERM)
	p.wait()
}

func TestMountExternalUnmount(t *testing.T) {
	for _, tool := range []string{"umount", "fusermount3"} {
		t.Run(tool, func(t *testing.T) {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("no %s", tool)
			}
			img := mkfs(t)
			dir := t.TempDir()
			p := startMount(t, img, dir)
			if err := os.WriteFile(filepath.Join(dir, "f"), []byte(tool), 0o644); err != nil {
				t.Fatal(err)
			}
			args := []string{dir}
			if tool == "fusermount3" {
				args = []string{"-u", dir}
			}
			if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", tool, err, out)
			}
			if code := p.wait(); code != 0 {
				t.Fatalf("after %s: exit %d\n%s", tool, code, p.stderr)
			}
			fsckClean(t, img)
			p = startMount(t, img, dir)
			verifyFiles(t, dir, map[string][]byte{"f": []byte(tool)})
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
		})
	}
}

func TestMountErrors(t *testing.T) {
	if _, _, code := run(t, "mount", "only-one-arg"); code != 2 {
		t.Fatalf("mount with one argument: exit %d, want 2", code)
	}
	out, _, code := run(t, "mount", "--help")
	if code != 0 || !strings.Contains(out, "EXIT STATUS") {
		t.Fatalf("mount --help: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	out, errs, code := run(t, "mount", filepath.Join(dir, "missing.img"), dir)
	if code != 1 || strings.Contains(out, "mounted") || errs == "" {
		t.Fatalf("mount of a missing image: exit %d\n%s%s", code, out, errs)
	}
	needFuse(t)
	img := mkfs(t)
	out, errs, code = run(t, "mount", img, filepath.Join(dir, "no-such-dir"))
	if code != 1 || strings.Contains(out, "mounted") {
		t.Fatalf("mount on a missing directory: exit %d\n%s%s", code, out, errs)
	}
	fsckClean(t, img)
}
