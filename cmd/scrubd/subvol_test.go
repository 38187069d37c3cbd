package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/fs"
)

// subvolOut runs a subvol command with --json that must succeed and
// decodes its document into v (a pointer, zeroed first: a field the
// document leaves out must not keep an earlier value).
func subvolOut(t *testing.T, v any, args ...string) {
	t.Helper()
	reflect.ValueOf(v).Elem().SetZero()
	out := expect(t, 0, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("scrubd %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// subvolFails runs a subvol command that must fail with code, naming msg
// on stderr, and with --json print an error object of that code.
func subvolFails(t *testing.T, code int, msg string, args ...string) {
	t.Helper()
	_, errs, got := run(t, args...)
	if got != code || !strings.Contains(errs, msg) {
		t.Fatalf("scrubd %s: exit %d %q, want %d and %q", strings.Join(args, " "), got, errs, code, msg)
	}
	out, _, _ := run(t, append(args, "--json")...)
	var e errOut
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Code != code || e.Version != 1 || !strings.Contains(e.Error, msg) {
		t.Fatalf("scrubd %s --json: %v %+v\n%s", strings.Join(args, " "), err, e, out)
	}
	if kind := map[bool]string{true: "usage", false: "failed"}[code == 2]; e.Kind != kind {
		t.Fatalf("scrubd %s --json: kind %q, want %q", strings.Join(args, " "), e.Kind, kind)
	}
}

func listSubvols(t *testing.T, args ...string) subvolListDoc {
	t.Helper()
	var doc subvolListDoc
	subvolOut(t, &doc, append([]string{"subvol", "list"}, args...)...)
	if doc.Version != jsonVersion || doc.Subvols == nil {
		t.Fatalf("list --json: %+v", doc)
	}
	return doc
}

// TestSubvolMounted, through the CLI and a real FUSE mount: subvolumes
// (one nested) made through the control socket hold files written with
// ordinary I/O; list, show and find (own UUID, then received once set)
// describe them; rename and link across their edges are EXDEV (mv copies
// instead), rmdir of one EPERM; delete refuses a plain directory and a
// subvolume holding another, and otherwise returns with the files gone
// from the mount, the reaper taking it off the list after (at once with
// --wait). Then offline on the unmounted image: list, create, delete, and
// fsck is clean.
func TestSubvolMounted(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir)

	var a, b subvolDoc
	subvolOut(t, &a, "subvol", "create", filepath.Join(dir, "a"))
	if a.Version != jsonVersion || a.Mountpoint != dir || a.Subvol.Path != "/a" || a.Subvol.ID == 0 || a.Subvol.UUID == "" || a.Subvol.Deleting {
		t.Fatalf("create a: %+v", a)
	}
	r := rand.New(rand.NewPCG(7, 7))
	files := map[string][]byte{"top": randBytes(r, 5000), "a/f1": randBytes(r, 70000), "a/sub/f2": randBytes(r, 100)}
	if err := os.Mkdir(filepath.Join(dir, "a", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Nested, and named through "..".
	subvolOut(t, &b, "subvol", "create", filepath.Join(dir, "a", "sub", "..", "b"))
	if b.Subvol.Path != "/a/b" || b.Subvol.ID == a.Subvol.ID || b.Subvol.UUID == a.Subvol.UUID {
		t.Fatalf("create a/b: %+v", b)
	}
	files["a/b/g"] = randBytes(r, 9000)
	for name, data := range files {
		writeSynced(t, filepath.Join(dir, name), data, 0)
	}
	verifyFiles(t, dir, files)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "a", "b", "g"), &st); err != nil || fs.SubvolOf(st.Ino) != b.Subvol.ID {
		t.Fatalf("a/b/g: inode %d (%v), want one of subvolume %d", st.Ino, err, b.Subvol.ID)
	}
	subvolFails(t, 1, "file exists", "subvol", "create", filepath.Join(dir, "a"))

	// list, from the mountpoint or any path inside the mount.
	for _, at := range []string{dir, filepath.Join(dir, "a", "sub")} {
		doc := listSubvols(t, at)
		if doc.Mountpoint != dir || len(doc.Subvols) != 2 || doc.Subvols[0] != a.Subvol || doc.Subvols[1] != b.Subvol {
			t.Fatalf("list %s: %+v, want %+v and %+v", at, doc, a.Subvol, b.Subvol)
		}
	}
	if out := expect(t, 0, "subvol", "list", dir); !strings.Contains(out, "RECEIVED UUID") || !strings.Contains(out, a.Subvol.UUID) || !strings.Contains(out, "/a/b") {
		t.Fatalf("list:\n%s", out)
	}
	var show subvolDoc
	subvolOut(t, &show, "subvol", "show", filepath.Join(dir, "a", "b"))
	if show.Subvol != b.Subvol {
		t.Fatalf("show a/b: %+v, want %+v", show.Subvol, b.Subvol)
	}
	if out := expect(t, 0, "subvol", "show", filepath.Join(dir, "a")); !strings.Contains(out, a.Subvol.UUID) || !strings.HasPrefix(out, filepath.Join(dir, "a")+"\n") {
		t.Fatalf("show a:\n%s", out)
	}
	subvolFails(t, 1, "not a subvolume", "subvol", "show", filepath.Join(dir, "a", "sub"))
	subvolFails(t, 1, "not a subvolume", "subvol", "show", dir)
	subvolFails(t, 1, "no such file", "subvol", "show", filepath.Join(dir, "nosuch"))

	// find: by the uuid tree, own UUID then received.
	find := func(u string) subvolFindDoc {
		t.Helper()
		var doc subvolFindDoc
		subvolOut(t, &doc, "subvol", "find", filepath.Join(dir, "a"), "--uuid", u)
		return doc
	}
	if doc := find(a.Subvol.UUID); len(doc.Own) != 1 || doc.Own[0] != a.Subvol.ID || len(doc.Received) != 0 || len(doc.Subvols) != 1 || doc.Subvols[0] != a.Subvol {
		t.Fatalf("find a's uuid: %+v", doc)
	}
	var set subvolDoc
	subvolOut(t, &set, "subvol", "set-received-uuid", filepath.Join(dir, "a", "b"), strings.ReplaceAll(a.Subvol.UUID, "-", ""))
	if set.Subvol.ReceivedUUID != a.Subvol.UUID || set.Subvol.ID != b.Subvol.ID {
		t.Fatalf("set-received-uuid: %+v", set)
	}
	b.Subvol.ReceivedUUID = a.Subvol.UUID
	if doc := find(a.Subvol.UUID); len(doc.Own) != 1 || doc.Own[0] != a.Subvol.ID || len(doc.Received) != 1 || doc.Received[0] != b.Subvol.ID ||
		len(doc.Subvols) != 2 || doc.Subvols[1] != b.Subvol {
		t.Fatalf("find after set-received-uuid: %+v", doc)
	}
	if out := expect(t, 0, "subvol", "find", dir, "--uuid", a.Subvol.UUID); !strings.Contains(out, "received") || !strings.Contains(out, "/a/b") {
		t.Fatalf("find:\n%s", out)
	}
	none := "0123456789abcdef0123456789abcdef"
	if doc := find(none); len(doc.Own)+len(doc.Received)+len(doc.Subvols) != 0 || doc.Own == nil || doc.Received == nil {
		t.Fatalf("find of an unused uuid: %+v", doc)
	}
	subvolFails(t, 2, "want 32 hex digits", "subvol", "find", dir, "--uuid", "0123-nothex")
	subvolFails(t, 2, "want 32 hex digits", "subvol", "set-received-uuid", filepath.Join(dir, "a"), "xyz")

	// The edges: EXDEV for rename and link, mv copies, EPERM for rmdir.
	for _, c := range [][2]string{{"top", "a/top"}, {"a/f1", "a/b/f1"}, {"a/b/g", "g"}} {
		err := os.Rename(filepath.Join(dir, c[0]), filepath.Join(dir, c[1]))
		if !errors.Is(err, syscall.EXDEV) {
			t.Fatalf("rename %s %s: %v, want EXDEV", c[0], c[1], err)
		}
		err = os.Link(filepath.Join(dir, c[0]), filepath.Join(dir, c[1]))
		if !errors.Is(err, syscall.EXDEV) {
			t.Fatalf("link %s %s: %v, want EXDEV", c[0], c[1], err)
		}
	}
	if err := os.Rename(filepath.Join(dir, "a", "f1"), filepath.Join(dir, "a", "sub", "f1")); err != nil {
		t.Fatalf("rename inside a subvolume: %v", err)
	}
	files["a/sub/f1"] = files["a/f1"]
	delete(files, "a/f1")
	if out, err := exec.Command("mv", filepath.Join(dir, "a", "sub", "f1"), filepath.Join(dir, "a", "b", "f1")).CombinedOutput(); err != nil {
		t.Fatalf("mv across subvolumes: %v %s", err, out)
	}
	files["a/b/f1"] = files["a/sub/f1"]
	delete(files, "a/sub/f1")
	if _, err := os.Stat(filepath.Join(dir, "a", "sub", "f1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mv left its source: %v", err)
	}
	verifyFiles(t, dir, files)
	if err := syscall.Rmdir(filepath.Join(dir, "a", "b")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("rmdir of a subvolume: %v, want EPERM", err)
	}

	// delete: refusals, then at once, the reaper after.
	subvolFails(t, 1, "not a subvolume", "subvol", "delete", filepath.Join(dir, "a", "sub"))
	subvolFails(t, 1, "holds other subvolumes", "subvol", "delete", filepath.Join(dir, "a"))
	subvolFails(t, 2, "top level", "subvol", "delete", dir)
	out := expect(t, 0, "subvol", "delete", filepath.Join(dir, "a", "b"))
	if !strings.Contains(out, "deleted subvolume") || !strings.Contains(out, "background") {
		t.Fatalf("delete a/b: %q", out)
	}
	for _, name := range []string{"a/b", "a/b/g", "a/b/f1"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after delete: %v, want ENOENT", name, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "a")); err != nil || len(ents) != 1 || ents[0].Name() != "sub" {
		t.Fatalf("a after delete: %v %v", ents, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		doc := listSubvols(t, dir)
		if len(doc.Subvols) == 1 && doc.Subvols[0] == a.Subvol {
			break
		}
		// Until the reaper is done: b, marked deleting, without a path.
		if len(doc.Subvols) != 2 || doc.Subvols[1].ID != b.Subvol.ID || !doc.Subvols[1].Deleting || doc.Subvols[1].Path != "" {
			t.Fatalf("list while a/b is reaped: %+v", doc.Subvols)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a/b still listed 30s after its delete: %+v", doc.Subvols)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if doc := find(a.Subvol.UUID); len(doc.Received) != 0 {
		t.Fatalf("the deleted subvolume's received uuid is still found: %+v", doc)
	}
	var del subvolDoc
	subvolOut(t, &del, "subvol", "delete", filepath.Join(dir, "a"), "--wait")
	if del.Freed == nil || !*del.Freed || del.Subvol.ID != a.Subvol.ID || del.Subvol.Path != "/a" {
		t.Fatalf("delete --wait: %+v", del)
	}
	if doc := listSubvols(t, dir); len(doc.Subvols) != 0 {
		t.Fatalf("list after delete --wait: %+v", doc.Subvols)
	}
	if _, err := os.Lstat(filepath.Join(dir, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a after delete: %v", err)
	}
	subvolFails(t, 1, "no such file", "subvol", "delete", filepath.Join(dir, "a"))

	// One left for the offline part, with a file; the mounted image is
	// refused offline; a path outside any scrubd mount is refused.
	var c subvolDoc
	subvolOut(t, &c, "subvol", "create", filepath.Join(dir, "c"))
	writeSynced(t, filepath.Join(dir, "c", "h"), files["top"], 0)
	subvolFails(t, 1, "is mounted on", "subvol", "list", "--image", img)
	subvolFails(t, 1, "not inside a scrubd mount", "subvol", "list", t.TempDir())
	subvolFails(t, 1, "not inside a scrubd mount", "subvol", "create", filepath.Join(t.TempDir(), "x"))

	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("unmount: exit %d\n%s", code, p.stderr)
	}
	fsckClean(t, img)
	if doc := listSubvols(t, "--image", img); doc.Image != img || len(doc.Subvols) != 1 || doc.Subvols[0] != c.Subvol {
		t.Fatalf("offline list: %+v, want %+v", doc, c.Subvol)
	}
	var d subvolDoc
	subvolOut(t, &d, "subvol", "create", "--image", img, "/c/d")
	if d.Subvol.Path != "/c/d" || d.Image != img {
		t.Fatalf("offline create: %+v", d)
	}
	subvolFails(t, 1, "holds other subvolumes", "subvol", "delete", "--image", img, "/c")
	expect(t, 0, "subvol", "delete", "--image", img, "/c/d")
	subvolOut(t, &del, "subvol", "delete", "--image", img, "c")
	if del.Freed == nil || !*del.Freed || del.Subvol.ID != c.Subvol.ID {
		t.Fatalf("offline delete: %+v", del)
	}
	if doc := listSubvols(t, "--image", img); len(doc.Subvols) != 0 {
		t.Fatalf("offline list after delete: %+v", doc.Subvols)
	}
	fsckClean(t, img)
}

// TestSubvolOffline: the subvolume commands on an unmounted image, and
// their bad input: usage errors (exit 2, a JSON error object of kind
// usage) for an unknown subcommand, missing or
// extra arguments and bad UUIDs; failures (exit 1) naming the cause for
// a plain directory, a missing path, the top level, and an image whose
// format predates subvolumes.
func TestSubvolOffline(t *testing.T) {
	img := mkfs(t)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Mkdir(fs.RootIno, "plain", fs.NewInode{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	var a subvolDoc
	subvolOut(t, &a, "subvol", "create", "--image", img, "/plain/a")
	if a.Subvol.Path != "/plain/a" || a.Subvol.UUID == "" {
		t.Fatalf("create: %+v", a)
	}
	out := expect(t, 0, "subvol", "show", "--image", img, "/plain/a")
	if !strings.Contains(out, "/plain/a in "+img) || !strings.Contains(out, a.Subvol.UUID) {
		t.Fatalf("show:\n%s", out)
	}
	var f subvolFindDoc
	subvolOut(t, &f, "subvol", "find", "--image", img, "--uuid", a.Subvol.UUID)
	if len(f.Own) != 1 || f.Own[0] != a.Subvol.ID || f.Image != img {
		t.Fatalf("find: %+v", f)
	}
	subvolOut(t, &a, "subvol", "set-received-uuid", "--image", img, "/plain/a", a.Subvol.UUID)
	subvolOut(t, &f, "subvol", "find", "--image", img, "--uuid", a.Subvol.UUID)
	if len(f.Received) != 1 || f.Received[0] != a.Subvol.ID {
		t.Fatalf("find after set-received-uuid: %+v", f)
	}
	subvolOut(t, &a, "subvol", "set-received-uuid", "--image", img, "/plain/a", "00000000-0000-0000-0000-000000000000")
	subvolOut(t, &f, "subvol", "find", "--image", img, "--uuid", a.Subvol.UUID)
	if len(f.Received) != 0 || a.Subvol.ReceivedUUID != "" {
		t.Fatalf("find after clearing the received uuid: %+v %+v", f, a)
	}

	// An unknown subcommand; "subvol" itself takes no --json, so that
	// error object names the flag.
	for _, args := range [][]string{{"subvol", "nosuch"}} {
		_, errs, code := run(t, args...)
		if code != 2 || !strings.Contains(errs, fmt.Sprintf("unknown command %q for \"scrubd subvol\"", args[1])) {
			t.Fatalf("scrubd %s: exit %d %q", strings.Join(args, " "), code, errs)
		}
		out, _, code := run(t, append(args, "--json")...)
		var e errOut
		if err := json.Unmarshal([]byte(out), &e); err != nil || code != 2 || e.Kind != "usage" {
			t.Fatalf("scrubd %s --json: exit %d %v %s", strings.Join(args, " "), code, err, out)
		}
	}
	for _, c := range []struct {
		msg  string
		args []string
	}{
		{"accepts 1 arg", []string{"subvol", "create"}},
		{"accepts 1 arg", []string{"subvol", "show", "a", "b"}},
		{"accepts 2 arg", []string{"subvol", "set-received-uuid", "a"}},
		{"needs MOUNTPOINT", []string{"subvol", "list"}},
		{"takes no MOUNTPOINT", []string{"subvol", "list", "x", "--image", img}},
		{"needs --uuid", []string{"subvol", "find", "--image", img}},
		{"want 32 hex digits", []string{"subvol", "find", "--image", img, "--uuid", "12"}},
		{"--uuid", []string{"subvol", "find", "--image", img, "--uuid", strings.Repeat("g", 32)}},
		{"want 32 hex digits", []string{"subvol", "set-received-uuid", "--image", img, "/plain/a", "not-a-uuid"}},
		{"top level", []string{"subvol", "create", "--image", img, "/"}},
		{"unknown flag", []string{"subvol", "delete", "--image", img, "/plain/a", "--bogus"}},
	} {
		subvolFails(t, 2, c.msg, c.args...)
	}
	for _, c := range []struct {
		msg  string
		args []string
	}{
		{"not a subvolume", []string{"subvol", "delete", "--image", img, "/plain"}},
		{"not a subvolume", []string{"subvol", "show", "--image", img, "/"}},
		{"no such file", []string{"subvol", "show", "--image", img, "/nosuch"}},
		{"no such file", []string{"subvol", "create", "--image", img, "/nosuch/a"}},
		{"file exists", []string{"subvol", "create", "--image", img, "/plain"}},
		{"no such file", []string{"subvol", "list", "--image", filepath.Join(t.TempDir(), "missing.img")}},
	} {
		subvolFails(t, 1, c.msg, c.args...)
	}
	if doc := listSubvols(t, "--image", img); len(doc.Subvols) != 1 || doc.Subvols[0].Path != "/plain/a" {
		t.Fatalf("list: %+v", doc)
	}
	expect(t, 0, "subvol", "delete", "--image", img, "/plain/a")
	if doc := listSubvols(t, "--image", img); len(doc.Subvols) != 0 {
		t.Fatalf("list after delete: %+v", doc)
	}
	fsckClean(t, img)

	// Format 1.6 has no subvolumes: create says how to upgrade, and
	// nothing upgrades the image behind the user's back.
	expect(t, 0, "upgrade", img, "--to", "1.6")
	subvolFails(t, 1, "predates subvolumes", "subvol", "create", "--image", img, "/plain/b")
	if v := info(t, img).Version; v != "1.6" {
		t.Fatalf("image at %s after an offline subvol create, want 1.6", v)
	}
	expect(t, 0, "upgrade", img)
	expect(t, 0, "subvol", "create", "--image", img, "/plain/b")
	fsckClean(t, img)
}

// TestSubvolSnapshotMounted: through a real FUSE mount, "subvol
// snapshot" of a subvolume written through the mount; the snapshot
// shows the files as they were while the source is changed after (cp,
// rm, overwrite); a read-only snapshot refuses writes with EROFS; the
// source is not deleted while a fill reads from it; the image checks
// clean after the unmount and holds both trees.
func TestSubvolSnapshotMounted(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir)
	var a subvolDoc
	subvolOut(t, &a, "subvol", "create", filepath.Join(dir, "a"))
	r := rand.New(rand.NewPCG(8, 8))
	files := map[string][]byte{"f1": randBytes(r, 200000), "d/f2": randBytes(r, 3000), "d/e/f3": randBytes(r, 70)}
	if err := os.MkdirAll(filepath.Join(dir, "a", "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		writeSynced(t, filepath.Join(dir, "a", name), data, 0)
	}
	var s, ro subvolDoc
	subvolOut(t, &s, "subvol", "snapshot", filepath.Join(dir, "a"), filepath.Join(dir, "s"))
	if s.Subvol.Path != "/s" || s.Subvol.ParentUUID != a.Subvol.UUID || s.Mountpoint != dir {
		t.Fatalf("snapshot: %+v", s)
	}
	// The source changes; the snapshot does not.
	if err := os.WriteFile(filepath.Join(dir, "a", "f1"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "a", "d", "e")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", filepath.Join(dir, "a", "d", "f2"), filepath.Join(dir, "a", "new")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	sfiles := map[string][]byte{}
	for name, data := range files {
		sfiles["s/"+name] = data
	}
	verifyFiles(t, dir, sfiles)
	if _, err := os.Stat(filepath.Join(dir, "s", "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file made in the source after the snapshot: %v", err)
	}
	// The snapshot is writable; the source does not see it.
	if err := os.WriteFile(filepath.Join(dir, "s", "d", "f2"), []byte("snap"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "a", "d", "f2")); err != nil || !bytes.Equal(got, files["d/f2"]) {
		t.Fatalf("source's d/f2 after the snapshot's write: %v", err)
	}
	subvolOut(t, &ro, "subvol", "snapshot", filepath.Join(dir, "s"), filepath.Join(dir, "ro"), "--readonly", "--wait")
	if !ro.Subvol.ReadOnly || ro.Subvol.Filling {
		t.Fatalf("read-only snapshot --wait: %+v", ro)
	}
	if err := os.WriteFile(filepath.Join(dir, "ro", "f1"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write into a read-only snapshot: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "ro", "x"), 0o755); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("mkdir in a read-only snapshot: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "ro", "d", "f2")); err != nil || string(got) != "snap" {
		t.Fatalf("read-only snapshot's d/f2: %q %v", got, err)
	}
	if out := expect(t, 0, "subvol", "list", dir); !strings.Contains(out, "readonly") || !strings.Contains(out, "/ro") {
		t.Fatalf("list:\n%s", out)
	}
	subvolFails(t, 1, "top level", "subvol", "snapshot", dir, filepath.Join(dir, "t"))
	subvolFails(t, 1, "not a subvolume", "subvol", "snapshot", filepath.Join(dir, "a", "d"), filepath.Join(dir, "t"))
	subvolFails(t, 1, "not inside a scrubd mount", "subvol", "snapshot", filepath.Join(dir, "a"), filepath.Join(t.TempDir(), "t"))
	expect(t, 0, "subvol", "delete", filepath.Join(dir, "ro"), "--wait")
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("unmount: exit %d\n%s", code, p.stderr)
	}
	fsckClean(t, img)
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	fsys.WaitFill()
	at, err := fsys.Resolve("/s/d/e/f3")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 100)
	if n, err := fsys.Read(at.Ino, got, 0); err != nil || !bytes.Equal(got[:n], files["d/e/f3"]) {
		t.Fatalf("/s/d/e/f3 after remount: %v", err)
	}
}

// TestSubvolSnapshotKill: a snapshot of a subvolume of 3,000 files made
// through a real mount, then the mount killed with SIGKILL: at once (no
// commit after the snapshot's own: the fill's progress is lost and the
// next mount must resume it), or after the source was rewritten and
// fsync'd (each fsync commits while the fill is under way). The next
// mount resumes any fill in the background; the snapshot holds every
// file as it was, the source what was fsync'd; after a clean unmount
// the image checks clean with the fill done.
func TestSubvolSnapshotKill(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	for _, rewrite := range []bool{false, true} {
		t.Run(fmt.Sprint("rewrite=", rewrite), func(t *testing.T) {
			img := mkfs(t)
			fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			a, err := fsys.CreateSubvol(fs.RootIno, "a")
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{}
			var dir fs.Attr
			for i := 0; i < 3000; i++ {
				if i%500 == 0 {
					if dir, err = fsys.Mkdir(a.RootIno, fmt.Sprint("d", i/500), fs.NewInode{Mode: 0o755}); err != nil {
						t.Fatal(err)
					}
				}
				name := fmt.Sprintf("d%d/f%d", i/500, i)
				c, err := fsys.Create(dir.Ino, fmt.Sprint("f", i), fs.NewInode{Mode: 0o644})
				if err != nil {
					t.Fatal(err)
				}
				data := []byte(strings.Repeat(name+" ", 1+i%50))
				if _, err := fsys.Write(c.Ino, data, 0); err != nil {
					t.Fatal(err)
				}
				want[name] = data
			}
			if err := fsys.Close(); err != nil {
				t.Fatal(err)
			}
			mnt := t.TempDir()
			args := []string{"--commit-interval", "-1s"}
			p := startMount(t, img, mnt, args...)
			expect(t, 0, "subvol", "snapshot", filepath.Join(mnt, "a"), filepath.Join(mnt, "s"))
			srcWant := map[string][]byte{}
			for name, data := range want {
				srcWant["a/"+name] = data
			}
			if rewrite {
				for i := 0; i < 3000; i += 97 {
					name := fmt.Sprintf("d%d/f%d", i/500, i)
					writeSynced(t, filepath.Join(mnt, "a", name), []byte("REWRITTEN"), 0)
					d := append([]byte(nil), want[name]...)
					if len(d) < 9 {
						d = append(d, make([]byte, 9-len(d))...)
					}
					copy(d, "REWRITTEN")
					srcWant["a/"+name] = d
				}
			}
			p.cmd.Process.Kill()
			if code := p.wait(); code != -1 {
				t.Fatalf("kill -9: exit code %d", code)
			}
			lazyUnmount(mnt)
			midFill := false
			if ro, err := fs.OpenPath(img, fs.Options{ReadOnly: true}); err == nil {
				if info, err := ro.Subvol(2); err == nil {
					midFill = info.Filling
				}
				ro.Close()
			}
			t.Logf("killed with the fill under way: %v", midFill)
			if !rewrite && !midFill {
				t.Fatal("the fill's progress was committed without a commit")
			}
			p = startMount(t, img, mnt, args...)
			verifyFiles(t, mnt, srcWant)
			snapWant := map[string][]byte{}
			for name, data := range want {
				snapWant["s/"+name] = data
			}
			verifyFiles(t, mnt, snapWant)
			p.signal(syscall.SIGTERM)
			if code := p.wait(); code != 0 {
				t.Fatalf("SIGTERM: exit %d\n%s", code, p.stderr)
			}
			expect(t, 0, "fsck", img, "--pass", "snapshot_fill")
			fsckClean(t, img)
			if doc := listSubvols(t, "--image", img); len(doc.Subvols) != 2 || doc.Subvols[1].Filling {
				t.Fatalf("after the fill: %+v", doc.Subvols)
			}
		})
	}
}

// TestSubvolSnapshotOffline: "subvol snapshot --image" makes a snapshot
// and waits for its fill; the snapshot holds the source's files as they
// were, a read-only one refuses changes; the refusals (top level, a plain
// directory, a snapshot into a read-only one, too few arguments) exit 1
// or 2 naming the cause; the image checks clean.
func TestSubvolSnapshotOffline(t *testing.T) {
	img := mkfs(t)
	var a subvolDoc
	subvolOut(t, &a, "subvol", "create", "--image", img, "/a")
	fsys, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	data := randBytes(r, 50000)
	f, err := fsys.Create(a.Subvol.RootIno, "f", fs.NewInode{Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Write(f.Ino, data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Mkdir(fs.RootIno, "plain", fs.NewInode{Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	var s, ro subvolDoc
	subvolOut(t, &s, "subvol", "snapshot", "--image", img, "/a", "/s")
	if s.Subvol.Path != "/s" || s.Subvol.ParentUUID != a.Subvol.UUID || s.Subvol.Filling || s.Subvol.ReadOnly || s.Image != img {
		t.Fatalf("snapshot: %+v", s)
	}
	subvolOut(t, &ro, "subvol", "snapshot", "--image", img, "/a", "/plain/ro", "--readonly")
	if !ro.Subvol.ReadOnly || ro.Subvol.ParentUUID != a.Subvol.UUID {
		t.Fatalf("read-only snapshot: %+v", ro)
	}
	if out := expect(t, 0, "subvol", "show", "--image", img, "/plain/ro"); !strings.Contains(out, "readonly") || !strings.Contains(out, a.Subvol.UUID) {
		t.Fatalf("show:\n%s", out)
	}
	out := expect(t, 0, "subvol", "snapshot", "--image", img, "/s", "/s2")
	if !strings.Contains(out, "made snapshot") || !strings.Contains(out, "/s2 in "+img) {
		t.Fatalf("snapshot text: %s", out)
	}
	for _, c := range []struct {
		msg  string
		args []string
	}{
		{"top level", []string{"subvol", "snapshot", "--image", img, "/", "/t"}},
		{"not a subvolume", []string{"subvol", "snapshot", "--image", img, "/plain", "/t"}},
		{"read-only", []string{"subvol", "snapshot", "--image", img, "/a", "/plain/ro/t"}},
		{"file exists", []string{"subvol", "snapshot", "--image", img, "/a", "/s"}},
		{"no such file", []string{"subvol", "snapshot", "--image", img, "/nosuch", "/t"}},
	} {
		subvolFails(t, 1, c.msg, c.args...)
	}
	subvolFails(t, 2, "accepts 2 arg", "subvol", "snapshot", "--image", img, "/a")
	subvolFails(t, 2, "top level", "subvol", "snapshot", "--image", img, "/a", "/")
	fsckClean(t, img)
	fsys, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for _, p := range []string{"/a/f", "/s/f", "/plain/ro/f", "/s2/f"} {
		at, err := fsys.Resolve(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got := make([]byte, len(data)+1)
		n, err := fsys.Read(at.Ino, got, 0)
		if err != nil || !bytes.Equal(got[:n], data) {
			t.Fatalf("%s: %d bytes, %v", p, n, err)
		}
		if _, err := fsys.Write(at.Ino, []byte("x"), 0); (p == "/plain/ro/f") != errors.Is(err, syscall.EROFS) {
			t.Fatalf("write %s: %v", p, err)
		}
	}
}

// TestSubvolHelp: the subvol commands' help has EXAMPLES and an EXIT
// STATUS section, and the man pages generate names each.
func TestSubvolHelp(t *testing.T) {
	for _, c := range []string{"", "create", "list", "show", "delete", "find", "set-received-uuid"} {
		args := []string{"subvol", "--help"}
		if c != "" {
			args = []string{"subvol", c, "--help"}
		}
		out := expect(t, 0, args...)
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, "EXIT STATUS") {
			t.Errorf("scrubd %s lacks Examples or EXIT STATUS:\n%s", strings.Join(args, " "), out)
		}
	}
	dir := t.TempDir()
	expect(t, 0, "generate", dir)
	for _, c := range []string{"subvol", "subvol-create", "subvol-set-received-uuid"} {
		b, err := os.ReadFile(filepath.Join(dir, "man1", "scrubd-"+c+".1"))
		if err != nil || !bytes.Contains(b, []byte(".TH")) {
			t.Errorf("man page of %s: %v", c, err)
		}
	}
}
