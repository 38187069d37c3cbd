package fs_test

// An external test: the inject package it damages the csum tree with
// reaches the filesystem layer itself.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

const bs = format.BlockSize

type nopClose struct{ disk.Device }

func (nopClose) Close() error { return nil }

// csumMount mounts dev with no periodic commit.
func csumMount(t *testing.T, dev disk.Device) *fs.FS {
	t.Helper()
	f, err := fs.Open(dev, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// imageFindings runs the offline check (fsck's) on a copy of img and
// returns the findings as "structure:name", sorted.
func imageFindings(t *testing.T, img []byte) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "check.img")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := repair.CheckOffline(context.Background(), path, repair.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range rep.Structures {
		for _, f := range s.Findings {
			names = append(names, s.Name+":"+f.Name)
		}
	}
	slices.Sort(names)
	return names
}

// csumFiles is a filesystem under test with what each file holds.
type csumFiles struct {
	t    *testing.T
	dev  *disk.Mem
	f    *fs.FS
	r    *rand.Rand
	want map[uint64][]byte
	name map[uint64]string
}

// populateCsum makes n files of one extent each (1-3 blocks, the last
// one partial) and commits: a csum tree of a few leaves under a root.
func populateCsum(t *testing.T, n int) *csumFiles {
	t.Helper()
	c := &csumFiles{t: t, dev: disk.NewMem(16384 * bs), r: rand.New(rand.NewPCG(11, 12)), want: map[uint64][]byte{}, name: map[uint64]string{}}
	if err := engine.Mkfs(c.dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	c.f = csumMount(t, nopClose{c.dev})
	for i := 0; i < n; i++ {
		c.create(fmt.Sprintf("f%04d", i), (1+i%3)*bs-100)
	}
	if err := c.f.Sync(); err != nil {
		t.Fatal(err)
	}
	return c
}

// create makes a file of size random bytes.
func (c *csumFiles) create(name string, size int) uint64 {
	c.t.Helper()
	a, err := c.f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
	if err != nil {
		c.t.Fatal(err)
	}
	c.name[a.Ino] = name
	c.write(a.Ino, 0, size)
	return a.Ino
}

// write writes n random bytes at off and fsyncs: no error, whatever the
// damage.
func (c *csumFiles) write(ino uint64, off, n int) {
	c.t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(c.r.Uint32())
	}
	if _, err := c.f.Write(ino, data, int64(off)); err != nil {
		c.t.Fatalf("write to inode %d: %v", ino, err)
	}
	if err := c.f.Fsync(ino); err != nil {
		c.t.Fatalf("fsync of inode %d: %v", ino, err)
	}
	cur := c.want[ino]
	if end := off + n; end > len(cur) {
		cur = append(cur, make([]byte, end-len(cur))...)
	}
	copy(cur[off:], data)
	c.want[ino] = cur
}

// read reads ino whole, checks its bytes and returns how many blocks it
// served unverified.
func (c *csumFiles) read(f *fs.FS, ino uint64) uint64 {
	c.t.Helper()
	before := f.Stats().UnverifiedReads
	got := make([]byte, len(c.want[ino])+1)
	n, err := f.Read(ino, got, 0)
	if err != nil || !bytes.Equal(got[:n], c.want[ino]) {
		c.t.Fatalf("inode %d: read %d bytes (%v), want %d", ino, n, err, len(c.want[ino]))
	}
	return f.Stats().UnverifiedReads - before
}

// starts returns the disk starts of ino's extents.
func (c *csumFiles) starts(ino uint64) []format.BlockNr {
	c.t.Helper()
	var out []format.BlockNr
	if err := c.f.Engine().View(func(tx *engine.Tx) error {
		tr, _ := tx.ReadTree(format.TreeExtent)
		var derr error
		err := tr.Ascend(format.FileExtentKey(ino, 0), func(k format.Key, v []byte) bool {
			if k.Obj != ino || k.Type != format.TypeFileExtent {
				return false
			}
			fe, err := format.DecodeFileExtent(v)
			derr = err
			out = append(out, fe.Start)
			return err == nil
		})
		return errors.Join(err, derr)
	}); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// csumLeaves returns the extent starts each leaf of the committed csum
// tree holds.
func csumLeaves(t *testing.T, e *engine.Engine) map[format.BlockNr][]format.BlockNr {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	tr, _ := s.Tree(format.TreeCsum)
	out := map[format.BlockNr][]format.BlockNr{}
	if err := tr.Check(eb.CheckVisitor{Node: func(n format.Node, p eb.Ptr) {
		for i := 0; n.IsLeaf() && i < n.NrItems(); i++ {
			out[p.Block] = append(out[p.Block], format.BlockNr(n.Key(i).Obj))
		}
	}}); err != nil {
		t.Fatal(err)
	}
	return out
}

// sickCsum fails the test unless the csum tree is sick and degraded, and
// the last commit says so (the marker pass).
func sickCsum(t *testing.T, f *fs.FS) {
	t.Helper()
	e := f.Engine()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	s := e.Pin()
	passes := s.Super().RecoveryPasses
	s.Release()
	if !e.Sick(engine.StructCsum) || !e.Degraded(engine.StructCsum) || passes&(1<<engine.PassCsumUntrusted) == 0 {
		t.Fatalf("csum sick %v degraded %v, recovery passes %#x", e.Sick(engine.StructCsum), e.Degraded(engine.StructCsum), passes)
	}
}

// TestCsumLeafDamageKeepsWriting damages one leaf of a populated
// filesystem's csum tree online. Files whose records were in it read back
// whole, unverified and counted; every other file verifies, and a data
// block of one that fails its checksum is still EIO. Writers notice
// nothing: overwrites of damaged files (their old records' deletes meet
// the damage), new files, appends, truncates, unlinks and their fsyncs
// all succeed, fsyncs of unaffected extents still go through the log,
// and a crash before the next commit replays them. A remount keeps the
// csum tree sick, and the image's only finding is the damaged leaf.
func TestCsumLeafDamageKeepsWriting(t *testing.T) {
	c := populateCsum(t, 400)
	leaves := csumLeaves(t, c.f.Engine())
	if len(leaves) < 3 {
		t.Fatalf("csum tree of %d leaves", len(leaves))
	}
	lv := 0
	res, err := inject.Online(c.f.Engine(), inject.Options{Tree: format.TreeCsum, Kind: inject.Bitflip, Seed: 1, Level: &lv})
	if err != nil {
		t.Fatal(err)
	}
	hidden := leaves[format.BlockNr(res.Block)]
	var damaged, clean []uint64
	for ino := range c.want {
		blocks := uint64(len(c.want[ino])+bs-1) / bs
		want := uint64(0)
		if slices.Contains(hidden, c.starts(ino)[0]) {
			damaged, want = append(damaged, ino), blocks
		} else {
			clean = append(clean, ino)
		}
		if got := c.read(c.f, ino); got != want {
			t.Fatalf("inode %d (damaged %v): %d blocks served unverified, want %d", ino, want > 0, got, want)
		}
	}
	slices.Sort(damaged)
	slices.Sort(clean)
	if len(damaged) < 2 || len(clean) == 0 {
		t.Fatalf("%d files behind the damaged leaf, %d not", len(damaged), len(clean))
	}
	if !c.f.Engine().Sick(engine.StructCsum) {
		t.Fatal("csum not marked sick by the reads that met the damage")
	}

	// A record found that mismatches is still EIO.
	victim := clean[0]
	at := int64(c.starts(victim)[0]) * bs
	orig := make([]byte, 1)
	c.dev.ReadAt(orig, at+9)
	c.dev.WriteAt([]byte{orig[0] ^ 0x10}, at+9)
	var ce *fs.ChecksumError
	if _, err := c.f.Read(victim, make([]byte, bs), 0); !errors.As(err, &ce) || fs.Errno(err) != syscall.EIO {
		t.Fatalf("read of a block that fails its checksum: %v", err)
	}
	c.dev.WriteAt(orig, at+9)

	// Writers go on.
	logged := c.f.Stats().FsyncLogged
	half := len(damaged) / 2
	for _, ino := range damaged[:half] {
		c.write(ino, 0, len(c.want[ino])) // the old extent is freed
	}
	for _, ino := range clean[:20] {
		c.write(ino, len(c.want[ino]), 3*bs) // appended
	}
	if err := c.f.Truncate(clean[20], 10); err != nil {
		t.Fatal(err)
	}
	c.want[clean[20]] = c.want[clean[20]][:10]
	last := damaged[len(damaged)-1]
	if err := c.f.Unlink(fs.RootIno, c.name[last]); err != nil {
		t.Fatal(err)
	}
	delete(c.want, last)
	damaged = damaged[:len(damaged)-1]
	for i := 0; i < 50; i++ {
		c.create(fmt.Sprintf("new%d", i), 1+c.r.IntN(5*bs))
	}
	if err := c.f.Sync(); err != nil {
		t.Fatalf("commit with a damaged csum leaf: %v", err)
	}
	sickCsum(t, c.f)
	// Fsyncs since the last commit, then a crash: the log has them.
	for i := 0; i < 5; i++ {
		c.create(fmt.Sprintf("logged%d", i), 2*bs)
		c.write(clean[i], 0, bs)
	}
	if c.f.Stats().FsyncLogged == logged {
		t.Fatal("no fsync went through the log while the csum tree was damaged")
	}
	crashed := csumMount(t, disk.NewMemFrom(c.dev.Bytes()))
	for ino := range c.want {
		c.read(crashed, ino)
	}
	crashed.Close()
	for ino := range c.want {
		c.read(c.f, ino)
	}
	if err := c.f.Close(); err != nil {
		t.Fatal(err)
	}

	// A remount: still sick, the hidden records still unverified.
	c.f = csumMount(t, nopClose{c.dev})
	sickCsum(t, c.f)
	for _, ino := range damaged[half:] {
		if got := c.read(c.f, ino); got == 0 {
			t.Fatalf("inode %d behind the damaged leaf verified after a remount", ino)
		}
	}
	for _, ino := range clean[25:] {
		if got := c.read(c.f, ino); got != 0 {
			t.Fatalf("inode %d served %d blocks unverified", ino, got)
		}
	}
	if err := c.f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := imageFindings(t, c.dev.Bytes()); !slices.Equal(got, []string{"csum:node_bad_checksum"}) {
		t.Fatalf("findings %v, want the damaged leaf's alone", got)
	}
}

// TestCsumRootDamageKeepsWriting damages the csum tree's root: every
// record is out of reach, so every write's record is dropped, every read
// is unverified, and every fsync that has new extents commits instead of
// logging (the log would lack their checksums) — and none fails. New
// data reads back, a remount keeps the tree sick, and the image's only
// finding is the damaged root.
func TestCsumRootDamageKeepsWriting(t *testing.T) {
	c := populateCsum(t, 400)
	s := c.f.Engine().Pin()
	tr, _ := s.Tree(format.TreeCsum)
	level := tr.Level
	s.Release()
	if level != 1 {
		t.Fatalf("csum tree of level %d, want a root above the leaves", level)
	}
	res, err := inject.Online(c.f.Engine(), inject.Options{Tree: format.TreeCsum, Kind: inject.Zero, Seed: 1, Level: &level})
	if err != nil {
		t.Fatal(err)
	}
	if res.Level != 1 {
		t.Fatalf("damaged level %d", res.Level)
	}
	full := c.f.Stats().FsyncFull
	var inos []uint64
	for ino := range c.want {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	for i, ino := range inos[:100] {
		switch i % 4 {
		case 0:
			c.write(ino, 0, len(c.want[ino]))
		case 1:
			c.write(ino, len(c.want[ino]), bs)
		case 2:
			if err := c.f.Unlink(fs.RootIno, c.name[ino]); err != nil {
				t.Fatal(err)
			}
			delete(c.want, ino)
		case 3:
			c.create(fmt.Sprintf("new%d", i), 1+c.r.IntN(4*bs))
		}
	}
	if c.f.Stats().FsyncFull == full {
		t.Fatal("no fsync committed although no new extent's checksums can be stored")
	}
	for ino := range c.want {
		if got := c.read(c.f, ino); got == 0 {
			t.Fatalf("inode %d verified behind a damaged root", ino)
		}
	}
	sickCsum(t, c.f)
	if err := c.f.Close(); err != nil {
		t.Fatal(err)
	}
	c.f = csumMount(t, nopClose{c.dev})
	sickCsum(t, c.f)
	for ino := range c.want {
		c.read(c.f, ino)
	}
	if err := c.f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := imageFindings(t, c.dev.Bytes()); !slices.Equal(got, []string{"csum:node_bad_magic"}) {
		t.Fatalf("findings %v, want the damaged root's alone", got)
	}
}

// TestCsumDamageAtReplay: the csum tree's root is damaged under an fsync
// log that holds checksums: the mount's replay stores none of them (the
// damage drops them, marking the tree sick) and goes on, and every file
// reads back what was fsync'd, unverified.
func TestCsumDamageAtReplay(t *testing.T) {
	c := populateCsum(t, 400)
	logged := c.f.Stats().FsyncLogged
	var inos []uint64
	for ino := range c.want {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	for _, ino := range inos[:10] {
		c.write(ino, bs, 2*bs)
	}
	if c.f.Stats().FsyncLogged != logged+10 {
		t.Fatalf("%d of 10 fsyncs logged", c.f.Stats().FsyncLogged-logged)
	}
	img := filepath.Join(t.TempDir(), "crash.img")
	if err := os.WriteFile(img, c.dev.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c.f.Close()
	lv := 1
	if _, err := inject.Offline(img, inject.Options{Tree: format.TreeCsum, Kind: inject.Zero, Seed: 1, Level: &lv}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatalf("mount replaying a log over a damaged csum tree: %v", err)
	}
	defer f.Close()
	sickCsum(t, f)
	for _, ino := range inos {
		if got := c.read(f, ino); got == 0 {
			t.Fatalf("inode %d verified behind a damaged root", ino)
		}
	}
}
