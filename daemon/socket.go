package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxSocketPath is the longest path a unix socket address holds
// (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// RuntimeDir is the directory the socket directory lives in:
// $XDG_RUNTIME_DIR if set, else /run.
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	return "/run"
}

// SocketPath is the control socket of the mount on mountpoint:
// <runtime dir>/scrubd/<first 16 hex digits of sha256(absolute cleaned
// mountpoint)>.sock. It touches no file; symlinks are not resolved.
func SocketPath(mountpoint string) string {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		abs = filepath.Clean(mountpoint)
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(RuntimeDir(), "scrubd", hex.EncodeToString(sum[:8])+".sock")
}

// candidates are the spellings of mountpoint a client tries, in order:
// the absolute path as given, then with symlinks resolved.
func candidates(mountpoint string) []string {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return []string{mountpoint}
	}
	out := []string{abs}
	if r, err := filepath.EvalSymlinks(abs); err == nil && r != abs {
		out = append(out, r)
	}
	return out
}

// resolve is the spelling of mountpoint the server names its socket after.
func resolve(mountpoint string) (string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	return abs, nil
}

// ensureSocketDir creates dir (and the runtime dir above it) 0700, or
// checks that an existing one is a directory owned by this user and
// removes any group or other permissions from it.
func ensureSocketDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("control socket directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("control socket directory %s: not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("control socket directory %s: no owner information", dir)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("control socket directory %s: owned by uid %d, not by this user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("control socket directory: %w", err)
		}
	}
	return nil
}

// removeStale removes a socket left at path by a server that is gone. A
// live socket, or a path that is not a socket, is an error.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another process already serves this mountpoint", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether it is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// IsServed reports whether target is a mountpoint whose mount process
// answers on its control socket (a status round trip, bounded by a few
// seconds).
func IsServed(target string) bool {
	_, ok := Discover(target)
	return ok
}

// Discover returns the mountpoint (as the server names it) when target is
// a mountpoint served by a live control socket.
func Discover(target string) (string, bool) {
	fi, err := os.Stat(target)
	if err != nil || !fi.IsDir() || !isMountpoint(target) {
		return "", false
	}
	c, err := Dial(target)
	if err != nil {
		return "", false
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return "", false
	}
	for _, p := range candidates(target) {
		if p == st.Mountpoint {
			return st.Mountpoint, true
		}
	}
	return "", false
}

// isMountpoint reports whether dir is the root of a mount: it is on
// another device than its parent, or it is its parent (/).
func isMountpoint(dir string) bool {
	var st, pst syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return false
	}
	if err := syscall.Stat(filepath.Join(dir, ".."), &pst); err != nil {
		return false
	}
	return st.Dev != pst.Dev || st.Ino == pst.Ino
}

// fuseType is the filesystem type a scrubd FUSE mount has in the mount
// table.
const fuseType = "fuse.scrubd"

// MountedImage returns the mountpoint of a scrubd FUSE mount of image, if
// one in this mount namespace serves it. Opening such an image a second
// time (offline scrub, repair, injection) would race the mount's own
// writes, so commands refuse and point at the mountpoint instead.
func MountedImage(image string) (string, bool) {
	fi, err := os.Stat(image)
	if err != nil {
		return "", false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		mnt, typ, src, ok := parseMountinfo(sc.Text())
		if !ok || typ != fuseType {
			continue
		}
		if sfi, err := os.Stat(src); err == nil && os.SameFile(fi, sfi) {
			return mnt, true
		}
	}
	return "", false
}

// parseMountinfo reads the mountpoint, type and source of one line of
// /proc/self/mountinfo (proc(5)).
func parseMountinfo(line string) (mnt, typ, src string, ok bool) {
	pre, post, found := strings.Cut(line, " - ")
	if !found {
		return "", "", "", false
	}
	f := strings.Fields(pre)
	g := strings.Fields(post)
	if len(f) < 5 || len(g) < 2 {
		return "", "", "", false
	}
	return unescapeMountinfo(f[4]), g[0], unescapeMountinfo(g[1]), true
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, …) of
// mount table fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
