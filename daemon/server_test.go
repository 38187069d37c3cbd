package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/scrubd/scrubd/engine"
	sfs "github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/engine/fuse"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// runtimeDir points XDG_RUNTIME_DIR at a fresh directory short enough for
// socket paths.
func runtimeDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd-rt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("XDG_RUNTIME_DIR", dir)
	return dir
}

// openFS makes an image with a few files and mounts it in-process (no
// FUSE); cleanup closes it and checks the image offline.
func openFS(t *testing.T) (*sfs.FS, string) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 32<<20, false, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	fsys, err := sfs.OpenPath(img, sfs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c"} {
		a, err := fsys.Create(sfs.RootIno, name, sfs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fsys.Write(a.Ino, []byte(strings.Repeat(name, 50_000)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.Sync(); err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := fsys.Close(); err != nil {
				t.Error(err)
			}
		}
		rep, err := repair.CheckOffline(context.Background(), img, repair.Options{})
		if err != nil || rep.Status != repair.StatusClean {
			t.Errorf("offline check at cleanup: %v %+v", err, rep)
		}
	})
	return fsys, img
}

// serve starts a server for fsys on a fresh directory.
func serve(t *testing.T, fsys *sfs.FS, img string, opts Options) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	opts.Image = img
	s, err := Serve(context.Background(), fsys, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func dial(t *testing.T, mnt string) *Client {
	t.Helper()
	c, err := Dial(mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSocketPath(t *testing.T) {
	rt := runtimeDir(t)
	sum := sha256.Sum256([]byte("/mnt/data"))
	want := filepath.Join(rt, "scrubd", hex.EncodeToString(sum[:])[:16]+".sock")
	for _, p := range []string{"/mnt/data", "/mnt/data/", "/mnt//x/../data", "/mnt/./data"} {
		if got := SocketPath(p); got != want {
			t.Errorf("SocketPath(%q) = %s, want %s", p, got, want)
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if SocketPath("rel") != SocketPath(filepath.Join(wd, "rel")) {
		t.Error("a relative mountpoint is not made absolute")
	}
	if SocketPath("/mnt/a") == SocketPath("/mnt/b") {
		t.Error("two mountpoints share a socket")
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := SocketPath("/mnt/data"); !strings.HasPrefix(got, "/run/scrubd/") {
		t.Errorf("without XDG_RUNTIME_DIR: %s", got)
	}
}

func TestServeProtocol(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, dir := serve(t, fsys, img, Options{TempDir: t.TempDir()})

	for path, want := range map[string]os.FileMode{s.SocketPath(): 0o600, filepath.Dir(s.SocketPath()): 0o700} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if s.SocketPath() != SocketPath(dir) {
		t.Fatalf("server socket %s, SocketPath %s", s.SocketPath(), SocketPath(dir))
	}

	ctx := context.Background()
	c := dial(t, dir)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Image != img || st.Mountpoint != dir || st.Generation < 2 || st.RmapSick || st.PID != os.Getpid() || st.Protocol != ProtocolVersion || st.LastScrub != nil {
		t.Fatalf("status: %+v", st)
	}
	if h := healthOf(t, st, "rmap"); h.State != "unchecked" || h.CheckedAt != nil {
		t.Fatalf("rmap before any scrub: %+v", h)
	}

	rep, err := c.Scrub(ctx, false, true)
	if err != nil || rep.Status != repair.StatusClean || rep.Mode != "online" || rep.Target != dir {
		t.Fatalf("scrub of a healthy fs: %v %+v", err, rep)
	}
	inj, err := c.Inject(ctx, "rmap", inject.Zero, 7)
	if err != nil || inj.Tree != "rmap" || inj.Kind != inject.Zero {
		t.Fatalf("inject: %v %+v", err, inj)
	}
	rep, err = c.Scrub(ctx, false, false)
	if err != nil || rep.Status != repair.StatusUncorrected || rep.ExitCode() != repair.ExitUncorrected {
		t.Fatalf("scrub after damage: %v %+v", err, rep)
	}
	st, err = c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := healthOf(t, st, "rmap"); h.State != "sick" || h.Generation != rep.Generation || h.CheckedAt == nil || len(h.Findings) == 0 {
		t.Fatalf("rmap after a scrub that found it damaged: %+v", h)
	}
	if h := healthOf(t, st, "inode"); h.State != "healthy" {
		t.Fatalf("inode after the scrub: %+v", h)
	}
	rep, err = c.Scrub(ctx, true, false)
	if err != nil || rep.Status != repair.StatusCorrected || rep.ExitCode() != repair.ExitCorrected || len(rep.Rebuilds) == 0 {
		t.Fatalf("scrub --repair: %v %+v", err, rep)
	}
	rep, err = c.Scrub(ctx, false, true)
	if err != nil || rep.Status != repair.StatusClean {
		t.Fatalf("scrub after repair: %v %+v", err, rep)
	}
	st, err = c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastScrub == nil || st.LastScrub.Status != repair.StatusClean || !st.LastScrub.Data || st.ScrubsServed != 4 || st.RmapSick || st.Running != "" {
		t.Fatalf("status after scrubs: %+v %+v", st, st.LastScrub)
	}
	for _, h := range st.Health {
		if h.State != "healthy" {
			t.Errorf("after repair and a clean scrub: %+v", h)
		}
	}

	// Bad inject arguments are refused before anything is touched.
	for _, args := range [][2]string{{"nope", "bitflip"}, {"rmap", "nope"}, {"", ""}} {
		_, err := c.Inject(ctx, args[0], args[1], 1)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != CodeBadRequest {
			t.Errorf("inject %v: %v", args, err)
		}
	}
	_, err = c.Inject(ctx, "subvol", inject.DropRecord, 1)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeFailed || !strings.Contains(err.Error(), "no block that drop-record can damage") {
		t.Errorf("inject drop-record into the empty subvolume tree: %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.SocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Status(ctx); err == nil {
		t.Fatal("status answered after Close")
	}
	if _, err := Dial(dir); !errors.Is(err, ErrNotServed) {
		t.Fatalf("Dial after Close: %v", err)
	}
}

// rawConn is a connection speaking the protocol by hand.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func rawDial(t *testing.T, path string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := r.c.Write([]byte(s)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) recv() Response {
	r.t.Helper()
	line, err := r.br.ReadBytes('\n')
	if err != nil {
		r.t.Fatalf("reading a response: %v", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		r.t.Fatalf("response %q: %v", line, err)
	}
	return resp
}

func TestServeBadRequests(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, _ := serve(t, fsys, img, Options{})
	r := rawDial(t, s.SocketPath())
	for _, c := range []struct{ req, want string }{
		{`{"op":"frobnicate"}`, `unknown op "frobnicate"`},
		{`{"op":"status"`, "bad request"},
		{`not json`, "bad request"},
		{`{"op":"status","verbose":true}`, `unknown field "verbose"`},
		{`{"op":"status"} {"op":"status"}`, "more than one JSON value"},
		{`{"op":"scrub","tree":"rmap"}`, "scrub takes repair, data, rate and background only"},
		{`{"op":"scrub","rate":"fast"}`, `rate "fast"`},
		{`{"op":"pause","data":true}`, "pause takes no arguments"},
		{`{"op":"inject","tree":"rmap","kind":"bitflip","repair":true}`, "inject takes tree (or file and offset), kind, seed, level and copy only"},
		{`[]`, "bad request"},
	} {
		r.send(c.req + "\n")
		resp := r.recv()
		if resp.Code != CodeBadRequest || !strings.Contains(resp.Error, c.want) {
			t.Errorf("%s: got %+v, want an error containing %q", c.req, resp, c.want)
		}
	}
	// Blank lines are skipped; requests on one connection are answered in
	// order, pipelined or not.
	r.send("\n  \n{\"op\":\"status\"}\n{\"op\":\"scrub\"}\n{\"op\":\"status\"}\n")
	if resp := r.recv(); resp.Status == nil {
		t.Fatalf("first pipelined answer: %+v", resp)
	}
	if resp := r.recv(); resp.Report == nil || resp.Report.Status != repair.StatusClean {
		t.Fatalf("second pipelined answer: %+v", resp)
	}
	if resp := r.recv(); resp.Status == nil || resp.Status.ScrubsServed != 1 {
		t.Fatalf("third pipelined answer: %+v", resp)
	}

	// A request over the bound is refused and the connection closed.
	big := rawDial(t, s.SocketPath())
	go big.c.Write([]byte(`{"op":"status","tree":"` + strings.Repeat("x", MaxRequest) + "\"}\n"))
	if resp := big.recv(); resp.Code != CodeBadRequest || !strings.Contains(resp.Error, "longer than") {
		t.Fatalf("oversized request: %+v", resp)
	}
	if _, err := big.br.ReadByte(); err == nil {
		t.Fatal("connection still open after an oversized request")
	}
	// Exactly at the bound is fine.
	ok := rawDial(t, s.SocketPath())
	pad := MaxRequest - len(`{"op":"status","tree":""}`)
	ok.send(`{"op":"status","tree":"` + strings.Repeat("x", pad) + "\"}\n")
	if resp := ok.recv(); resp.Status == nil {
		t.Fatalf("request of exactly MaxRequest bytes: %+v", resp)
	}
}

func TestServeOneScrubAtATime(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, dir := serve(t, fsys, img, Options{})
	if err := s.begin(OpScrub); err != nil { // a scrub "runs"
		t.Fatal(err)
	}
	c := dial(t, dir)
	ctx := context.Background()
	_, err := c.Scrub(ctx, true, false)
	if !errors.Is(err, ErrBusy) || err.Error() != "scrub already running" {
		t.Fatalf("second scrub: %v", err)
	}
	if _, err := c.Inject(ctx, "rmap", "bitflip", 1); !errors.Is(err, ErrBusy) {
		t.Fatalf("inject during a scrub: %v", err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Running != OpScrub {
		t.Fatalf("status during a scrub: %v %+v", err, st)
	}
	s.end()
	if rep, err := c.Scrub(ctx, false, false); err != nil || rep.Status != repair.StatusClean {
		t.Fatalf("scrub after the first ended: %v", err)
	}
}

func TestServeRejectsOtherUID(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, dir := serve(t, fsys, img, Options{})
	s.mu.Lock()
	s.uid = os.Geteuid() + 1 // as if the server ran as someone else
	s.mu.Unlock()
	r := rawDial(t, s.SocketPath())
	if resp := r.recv(); resp.Code != CodeDenied {
		t.Fatalf("peer with another uid: %+v", resp)
	}
	if _, err := r.br.ReadByte(); err == nil {
		t.Fatal("connection of another uid left open")
	}
	c := dial(t, dir)
	if _, err := c.Status(context.Background()); err == nil {
		t.Fatal("status answered to another uid")
	}
	s.mu.Lock()
	s.uid = os.Geteuid()
	s.mu.Unlock()
	if _, err := dial(t, dir).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestServeMaxConns(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	_, dir := serve(t, fsys, img, Options{MaxConns: 1})
	ctx := context.Background()
	first := dial(t, dir)
	if _, err := first.Status(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := dial(t, dir).Status(ctx)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "too many connections") {
		t.Fatalf("connection over the limit: %v", err)
	}
	first.Close()
	// The slot is freed once the server has seen the close.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := dial(t, dir).Status(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot never freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeLifecycle(t *testing.T) {
	rt := runtimeDir(t)
	fsys, img := openFS(t)

	// A loose scrubd directory is tightened to 0700.
	if err := os.Mkdir(filepath.Join(rt, "scrubd"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Serve(ctx, fsys, dir, Options{Image: img})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(rt, "scrubd")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("scrubd directory: %v %v", fi.Mode(), err)
	}
	// A second server for the same mountpoint is refused; the first
	// keeps its socket.
	if _, err := Serve(context.Background(), fsys, dir, Options{}); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("second Serve: %v", err)
	}
	if _, err := dial(t, dir).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Cancelling the context closes the server and removes the socket.
	cancel()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.SocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket after cancel: %v", err)
	}

	// A stale socket (its server died without removing it) is replaced.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketPath(dir), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	s, err = Serve(context.Background(), fsys, dir, Options{})
	if err != nil {
		t.Fatalf("Serve over a stale socket: %v", err)
	}
	if _, err := dial(t, dir).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Something else where the socket goes is left alone.
	if err := os.WriteFile(SocketPath(dir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Serve(context.Background(), fsys, dir, Options{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve over a regular file: %v", err)
	}
	os.Remove(SocketPath(dir))

	// A socket path too long for sun_path is a clear error.
	t.Setenv("XDG_RUNTIME_DIR", "/"+strings.Repeat("x", 120))
	if _, err := Serve(context.Background(), fsys, dir, Options{}); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("Serve with a long runtime dir: %v", err)
	}
}

// TestServeSymlinkedMountpoint: the server names its socket after the
// resolved mountpoint; clients find it through either spelling.
func TestServeSymlinkedMountpoint(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s, err := Serve(context.Background(), fsys, link, Options{Image: img})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Mountpoint() != real || s.SocketPath() != SocketPath(real) {
		t.Fatalf("server on %s: mountpoint %s socket %s", link, s.Mountpoint(), s.SocketPath())
	}
	for _, p := range []string{real, link} {
		st, err := dial(t, p).Status(context.Background())
		if err != nil || st.Mountpoint != real {
			t.Fatalf("status through %s: %v %+v", p, err, st)
		}
	}
}

func TestClientCancel(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	_, dir := serve(t, fsys, img, Options{})
	c := dial(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Scrub(ctx, false, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("scrub with a cancelled context: %v", err)
	}
	// A deadline that passes while waiting makes the client unusable, but
	// not the server.
	ctx, cancel = context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if _, err := c.Status(ctx); err == nil {
		t.Fatal("status with an expired context")
	}
	if _, err := dial(t, dir).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestParseMountinfo(t *testing.T) {
	line := `36 35 0:33 / /mnt/with\040space rw,nosuid,nodev,relatime shared:1 - fuse.scrubd /images/a\040b.img rw,user_id=0,group_id=0`
	mnt, typ, src, ok := parseMountinfo(line)
	if !ok || mnt != "/mnt/with space" || typ != "fuse.scrubd" || src != "/images/a b.img" {
		t.Fatalf("parseMountinfo: %q %q %q %v", mnt, typ, src, ok)
	}
	if _, _, _, ok := parseMountinfo("garbage"); ok {
		t.Fatal("parsed garbage")
	}
	if got := unescapeMountinfo(`a\134b\011c\`); got != "a\\b\tc\\" {
		t.Fatalf("unescape: %q", got)
	}
}

func needFuse(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("FUSE tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("no fusermount3")
	}
}

// TestDiscoverFUSE: IsServed and MountedImage against a real FUSE mount.
func TestDiscoverFUSE(t *testing.T) {
	needFuse(t)
	runtimeDir(t)
	fsys, img := openFS(t)
	dir := t.TempDir()
	srv, err := fuse.Mount(fsys, dir, fuse.Options{FsName: img})
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			if err := srv.Unmount(); err != nil {
				syscall.Unmount(dir, syscall.MNT_DETACH)
				exec.Command("fusermount3", "-u", "-z", dir).Run()
			}
		}
	})
	if IsServed(dir) {
		t.Fatal("IsServed before the control server runs")
	}
	if mnt, ok := MountedImage(img); !ok || mnt != dir {
		t.Fatalf("MountedImage(%s) = %q %v, want %s", img, mnt, ok, dir)
	}
	s, err := Serve(context.Background(), fsys, dir, Options{Image: img})
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, dir + "/", link} {
		if mnt, ok := Discover(p); !ok || mnt != dir {
			t.Errorf("Discover(%s) = %q %v", p, mnt, ok)
		}
	}
	for _, p := range []string{img, filepath.Dir(dir), filepath.Join(dir, "a"), "/nonexistent"} {
		if IsServed(p) {
			t.Errorf("IsServed(%s) = true", p)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "through-fuse"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rep, err := dial(t, dir).Scrub(context.Background(), false, true); err != nil || rep.Status != repair.StatusClean {
		t.Fatalf("scrub of the mount: %v %+v", err, rep)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if IsServed(dir) {
		t.Fatal("IsServed after Close")
	}
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	if _, ok := MountedImage(img); ok {
		t.Fatal("MountedImage after unmount")
	}
}

// TestServeHalfClose: a client that shuts its writing half after sending
// still gets every answer; then the server closes.
func TestServeHalfClose(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	s, _ := serve(t, fsys, img, Options{})
	r := rawDial(t, s.SocketPath())
	r.send("{\"op\":\"status\"}\n{\"op\":\"scrub\",\"data\":true}\n")
	if err := r.c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if resp := r.recv(); resp.Status == nil {
		t.Fatalf("first answer: %+v", resp)
	}
	if resp := r.recv(); resp.Report == nil || resp.Report.Status != repair.StatusClean {
		t.Fatalf("second answer: %+v", resp)
	}
	if _, err := r.br.ReadByte(); err == nil {
		t.Fatal("connection still open after the last answer")
	}
}

// TestPeerGone: a half-closed peer is still there; a closed one is gone.
func TestPeerGone(t *testing.T) {
	path := filepath.Join(runtimeDir(t), "p.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cl, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sv, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sv.Close()
	if peerGone(sv) {
		t.Fatal("peer gone while connected")
	}
	cl.CloseWrite()
	if peerGone(sv) {
		t.Fatal("peer gone after it only shut its writing half")
	}
	cl.Close()
	if !peerGone(sv) {
		t.Fatal("peer not gone after it closed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { watchHangup(context.Background(), sv, cancel); close(done) }()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("watchHangup did not see the hangup")
	}
	<-done
}

// healthOf returns a structure's health from a status; every structure of
// the ops table must be listed.
func healthOf(t *testing.T, st *Status, name string) StructureHealth {
	t.Helper()
	if len(st.Health) != len(engine.Structures()) {
		t.Fatalf("status lists %d structures, want %d: %+v", len(st.Health), len(engine.Structures()), st.Health)
	}
	for _, h := range st.Health {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("no health for %s", name)
	return StructureHealth{}
}

// TestServeBackgroundScrub: a background scrub answers at once; status
// follows it (state, progress within 0–100 and never backwards); pause
// holds it (done stands still), resume lets it finish, and the last run's
// report is in the status; cancel ends a run with its partial report;
// pause, resume and cancel with nothing running answer "idle".
func TestServeBackgroundScrub(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	// Enough data that the scrub outlives a request or two.
	a, err := fsys.Create(sfs.RootIno, "big", sfs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	chunk := []byte(strings.Repeat("background", 100_000))
	for off := 0; off < 24<<20; off += len(chunk) {
		if _, err := fsys.Write(a.Ino, chunk, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.Sync(); err != nil {
		t.Fatal(err)
	}
	_, mnt := serve(t, fsys, img, Options{})
	c := dial(t, mnt)
	ctx := context.Background()

	for _, op := range []func(context.Context) (*Status, error){c.Pause, c.Resume, c.Cancel} {
		var re *RemoteError
		if _, err := op(ctx); !errors.As(err, &re) || re.Code != CodeIdle {
			t.Fatalf("control with nothing running: %v", err)
		}
	}
	// Start and pause at once; a run that finished first is started
	// again (a fast machine), a few times at most.
	var st *Status
	for try := 0; ; try++ {
		if _, err := c.ScrubBackground(ctx, false, true); err != nil {
			t.Fatal(err)
		}
		st, err = c.Pause(ctx)
		var re *RemoteError
		if errors.As(err, &re) && re.Code == CodeIdle && try < 5 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if st.State != "paused" || st.Progress == nil || !st.Progress.Paused {
		t.Fatalf("after pause: %+v", st)
	}
	if _, err := c.ScrubBackground(ctx, false, false); !errors.Is(err, ErrBusy) {
		t.Fatalf("second scrub while one runs: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	st2, err := c.Status(ctx)
	if err != nil || st2.Progress == nil || st2.Progress.Done != st.Progress.Done {
		t.Fatalf("paused scrub moved: %+v then %+v (%v)", st.Progress, st2.Progress, err)
	}
	if _, err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	last := -1.0
	for {
		st, err = c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == "idle" {
			break
		}
		// A run claimed but not begun, or making its report, is
		// "running" without progress.
		if p := st.Progress; p == nil && st.State != "running" {
			t.Fatalf("state %q without progress", st.State)
		} else if p != nil && (p.Percent < last || p.Percent > 100) {
			t.Fatalf("progress from %.1f%% to %+v", last, p)
		} else if p != nil {
			last = p.Percent
		}
		time.Sleep(time.Millisecond)
	}
	if st.LastScrub == nil || st.LastScrub.Status != repair.StatusClean || st.LastScrub.Report == nil || st.LastScrub.Report.BytesVerified < 24<<20 {
		t.Fatalf("last scrub after the background run: %+v", st.LastScrub)
	}
	// Cancel: the run ends with its partial report.
	for try := 0; ; try++ {
		if _, err := c.ScrubBackground(ctx, false, true); err != nil {
			t.Fatal(err)
		}
		if _, err = c.Pause(ctx); err == nil {
			break
		}
		if try == 5 {
			t.Fatal(err)
		}
	}
	if _, err := c.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		if st, err = c.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if st.State == "idle" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if l := st.LastScrub; l == nil || !l.Interrupted || l.Status != "interrupted" || l.Report == nil || l.Report.Complete {
		t.Fatalf("last scrub after cancel: %+v", st.LastScrub)
	}
}

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Until(t time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !t.After(c.now) {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{t, ch})
	return ch
}

// advance moves the clock to t, firing the waiters it passes.
func (c *fakeClock) advance(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(t) {
			w.ch <- t
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

// waitingFor reports whether a waiter waits for t.
func (c *fakeClock) waitingFor(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.waiters {
		if w.at.Equal(t) {
			return true
		}
	}
	return false
}

// TestServeSchedules: with an injected clock, a weekly schedule names its
// next run in status, fires a background data scrub when the clock passes
// it (the last run says it came from the schedule), moves to the next
// week; a run due while another scrub runs is skipped and counted; a bad
// expression is refused by Serve.
func TestServeSchedules(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	if _, err := Serve(context.Background(), fsys, t.TempDir(), Options{Schedules: []Schedule{{Spec: "61 * * * *"}}}); err == nil || !strings.Contains(err.Error(), "61 * * * *") {
		t.Fatalf("bad schedule: %v", err)
	}
	start := time.Date(2026, 12, 5, 10, 0, 0, 0, time.Local) // a Saturday
	clock := &fakeClock{now: start}
	_, mnt := serve(t, fsys, img, Options{Clock: clock, Schedules: []Schedule{{Spec: "0 3 * * 0", Data: true}, {Spec: "@every 1h"}}})
	c := dial(t, mnt)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sunday := time.Date(2026, 12, 6, 3, 0, 0, 0, time.Local)
	if len(st.Schedules) != 2 || st.NextScrub == nil || !st.NextScrub.Equal(start.Add(time.Hour)) ||
		!st.Schedules[1].Next.Equal(sunday) || st.Schedules[1].Spec != "0 3 * * 0" || !st.Schedules[1].Data {
		t.Fatalf("schedules: %+v next %v", st.Schedules, st.NextScrub)
	}
	waitIdle := func() *Status {
		t.Helper()
		for {
			st, err := c.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.State == "idle" {
				return st
			}
			time.Sleep(time.Millisecond)
		}
	}
	// waitClock waits until the scheduler sleeps until t.
	waitClock := func(at time.Time) {
		t.Helper()
		for !clock.waitingFor(at) {
			time.Sleep(time.Millisecond)
		}
	}
	// The hourly one fires first.
	waitClock(start.Add(time.Hour))
	clock.advance(start.Add(time.Hour))
	for {
		st, _ = c.Status(ctx)
		if st.LastScrub != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	st = waitIdle()
	if st.LastScrub.Trigger != "schedule @every 1h" || st.LastScrub.Data || st.LastScrub.Status != repair.StatusClean {
		t.Fatalf("last scrub: %+v", st.LastScrub)
	}
	// A run due while another is running is skipped. Hold one paused
	// (started again if it finished before the pause arrived, or after:
	// a pause takes effect at the next unit of work, and the last one
	// may have gone).
	for try := 0; ; try++ {
		if _, err := c.ScrubBackground(ctx, false, true); err != nil {
			t.Fatal(err)
		}
		_, err := c.Pause(ctx)
		if err == nil {
			time.Sleep(20 * time.Millisecond)
			if st, err := c.Status(ctx); err == nil && st.State == "paused" {
				break
			}
			c.Cancel(ctx)
		}
		if try == 50 {
			t.Fatalf("no scrub held paused in %d tries: %v", try, err)
		}
		waitIdle()
	}
	waitClock(start.Add(2 * time.Hour))
	clock.advance(sunday)
	for {
		st, _ = c.Status(ctx)
		if st.Schedules[0].Skipped+st.Schedules[1].Skipped >= 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if st.Schedules[0].Skipped != 1 || st.Schedules[1].Skipped != 1 {
		t.Fatalf("skipped runs: %+v", st.Schedules)
	}
	if _, err := c.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	waitIdle()
	// Next Sunday's run goes ahead, with data.
	waitClock(sunday.Add(time.Hour))
	nextSunday := sunday.AddDate(0, 0, 7)
	clock.advance(nextSunday)
	for {
		st, _ = c.Status(ctx)
		if st.LastScrub != nil && strings.HasPrefix(st.LastScrub.Trigger, "schedule 0 3") {
			break
		}
		time.Sleep(time.Millisecond)
	}
	st = waitIdle()
	if !st.LastScrub.Data || st.LastScrub.Report == nil || st.LastScrub.Report.BytesVerified == 0 {
		t.Fatalf("scheduled data scrub: %+v", st.LastScrub)
	}
	for _, sc := range st.Schedules {
		if !sc.Next.After(nextSunday) {
			t.Fatalf("schedule %s did not move on: next %v", sc.Spec, sc.Next)
		}
	}
}

// TestServeNotify: a scrub that finds damage, and the structure it marks
// sick, are told to a command (the event's JSON on its stdin) and to a
// webhook on loopback, which fails the first delivery (retried); a clean
// scrub tells nothing; status counts the deliveries.
func TestServeNotify(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	var mu sync.Mutex
	var posted []Event
	fails := 1
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		var ev Event
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		posted = append(posted, ev)
	}))
	defer hs.Close()
	out := t.TempDir()
	_, mnt := serve(t, fsys, img, Options{Notify: NotifyOptions{
		Exec:    `cat > "` + out + `/$SCRUBD_EVENT.$(date +%s%N).json"`,
		Webhook: hs.URL, Backoff: 10 * time.Millisecond,
	}})
	c := dial(t, mnt)
	ctx := context.Background()
	if _, err := c.Scrub(ctx, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Inject(ctx, "rmap", "bitflip", 1); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Scrub(ctx, false, false)
	if err != nil || rep.Found == 0 {
		t.Fatalf("scrub after damage: %v %+v", err, rep)
	}
	var st *Status
	for deadline := time.Now().Add(10 * time.Second); ; {
		if st, err = c.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if st.Notify != nil && st.Notify.Delivered+st.Notify.Failed >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.Notify == nil || st.Notify.Delivered != 2 || st.Notify.Failed != 0 {
		t.Fatalf("notify stats: %+v", st.Notify)
	}
	mu.Lock()
	got := map[string]Event{}
	for _, ev := range posted {
		got[ev.Event] = ev
	}
	mu.Unlock()
	if sick, scrub := got["sick"], got["scrub"]; sick.Structure != "rmap" || len(sick.Findings) == 0 || sick.UUID == "" ||
		scrub.Status != repair.StatusUncorrected || scrub.Report == nil || scrub.Report.Found == 0 || scrub.Trigger != "request" {
		t.Fatalf("webhook got %+v", got)
	}
	files, _ := filepath.Glob(filepath.Join(out, "*.json"))
	kinds := map[string]bool{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		var ev Event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		kinds[ev.Event] = true
		if !strings.HasPrefix(filepath.Base(f), ev.Event+".") {
			t.Fatalf("%s holds a %s event: SCRUBD_EVENT not set", f, ev.Event)
		}
	}
	if !kinds["sick"] || !kinds["scrub"] {
		t.Fatalf("command got %v", files)
	}
	// Leave the image clean for the check at cleanup.
	if rep, err := c.Scrub(ctx, true, false); err != nil || rep.Status != repair.StatusCorrected {
		t.Fatalf("repair: %v %+v", err, rep)
	}
}

// TestServeMetrics: /metrics on loopback parses with the Prometheus text
// parser and carries the scrub runs by result, findings and repairs by
// structure, health per structure, progress, fsync and delayed-ref
// counters and the superblock's error counters; a bad address fails
// Serve.
func TestServeMetrics(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	if _, err := Serve(context.Background(), fsys, t.TempDir(), Options{MetricsAddr: "256.0.0.1:99999"}); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Fatalf("bad metrics address: %v", err)
	}
	s, mnt := serve(t, fsys, img, Options{MetricsAddr: "127.0.0.1:0"})
	c := dial(t, mnt)
	ctx := context.Background()
	if _, err := c.Inject(ctx, "rmap", "bitflip", 1); err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Scrub(ctx, true, true); err != nil || rep.Status != repair.StatusCorrected {
		t.Fatalf("repair: %v %+v", err, rep)
	}
	resp, err := http.Get("http://" + s.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f := fams[name]
		if f == nil {
			return 0, false
		}
	next:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"scrubd_scrub_runs_total", map[string]string{"result": "corrected"}, 1},
		{"scrubd_scrub_runs_total", map[string]string{"result": "clean"}, 0},
		{"scrubd_scrub_findings_total", map[string]string{"structure": "rmap", "name": "node_bad_checksum"}, 1},
		{"scrubd_scrub_repairs_total", map[string]string{"structure": "rmap", "name": "node_bad_checksum"}, 1},
		{"scrubd_scrub_duration_seconds", nil, 1},
		{"scrubd_scrub_data_bytes_verified_total", nil, 150_000},
		{"scrubd_structure_health", map[string]string{"structure": "rmap", "state": "healthy"}, 1},
		{"scrubd_scrub_running", nil, 0},
		{"scrubd_commits_total", nil, 1},
		{"scrubd_fsync_logged_total", nil, 0},
		{"scrubd_delayed_refs_applied_total", nil, 1},
		{"scrubd_error_counter", map[string]string{"name": "node_bad_checksum"}, 1},
		{"scrubd_free_blocks", nil, 1},
	} {
		v, ok := value(c.name, c.labels)
		if !ok || v < c.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", c.name, c.labels, v, ok, c.min)
		}
	}
	pin := fsys.Engine().Pin()
	uuid := pin.Super().FSID.String()
	pin.Release()
	if u, _ := value("scrubd_commits_total", map[string]string{"uuid": uuid}); u == 0 {
		t.Error("series without the filesystem's uuid label")
	}
}

// TestServeAutoRepair: with AutoRepair, damage met by normal I/O (a write
// whose references reach a damaged rmap block) starts a repairing scrub at
// once, which leaves every structure healthy; a plain scrub that finds
// damage is followed by one too.
func TestServeAutoRepair(t *testing.T) {
	runtimeDir(t)
	fsys, img := openFS(t)
	_, mnt := serve(t, fsys, img, Options{AutoRepair: true})
	c := dial(t, mnt)
	ctx := context.Background()
	waitRepair := func(n uint64) *Status {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			st, err := c.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.AutoRepairs != nil && *st.AutoRepairs >= n && st.State == "idle" && st.LastScrub != nil &&
				strings.HasPrefix(st.LastScrub.Trigger, "auto-repair") {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("no auto-repair: %+v", st)
			}
		}
	}
	if _, err := c.Inject(ctx, "rmap", "bitflip", 1); err != nil {
		t.Fatal(err)
	}
	// Normal I/O meets the damage: the commit applies references to the
	// rmap.
	for i := 0; i < 20 && !fsys.Engine().Sick(engine.StructRmap); i++ {
		a, err := fsys.Create(sfs.RootIno, fmt.Sprintf("n%d", i), sfs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fsys.Write(a.Ino, make([]byte, 100_000), 0); err != nil {
			t.Fatal(err)
		}
		if err := fsys.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	st := waitRepair(1)
	if st.LastScrub.Status != repair.StatusCorrected || !strings.Contains(st.LastScrub.Trigger, "rmap sick") {
		t.Fatalf("auto-repair: %+v", st.LastScrub)
	}
	for _, h := range st.Health {
		if h.State == "sick" {
			t.Fatalf("%s still sick after the auto-repair", h.Name)
		}
	}
	// A plain scrub that finds damage: repaired after it.
	if _, err := c.Inject(ctx, "free", "bitflip", 2); err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Scrub(ctx, false, false); err != nil || rep.Found == 0 {
		t.Fatalf("scrub: %v %+v", err, rep)
	}
	st = waitRepair(2)
	if st.LastScrub.Status != repair.StatusCorrected {
		t.Fatalf("second auto-repair: %+v", st.LastScrub)
	}
}
