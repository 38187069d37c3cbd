package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	eb "github.com/scrubd/scrubd/engine/btree"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// csumKeys is what a walk of the committed csum tree reads: every record's
// extent start, and, for one block, the range of keys its parent routes
// to it.
type csumKeys struct {
	keys   map[format.BlockNr]bool
	lo, hi *format.Key // of the block asked for (nil: open)
	found  bool
}

// readCsumKeys walks the csum tree of e's last commit, going on past what
// it cannot read, and notes the key range of block b.
func readCsumKeys(t *testing.T, e *engine.Engine, b format.BlockNr) csumKeys {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	tr, ok := s.Tree(format.TreeCsum)
	if !ok {
		t.Fatal("no csum tree")
	}
	out := csumKeys{keys: map[format.BlockNr]bool{}}
	var walk func(p eb.Ptr, level int, lo, hi *format.Key)
	walk = func(p eb.Ptr, level int, lo, hi *format.Key) {
		if p.Block == b {
			out.lo, out.hi, out.found = lo, hi, true
		}
		n, err := tr.Store.Read(format.TreeCsum, p, level)
		if err != nil {
			if !errors.Is(err, format.ErrCorrupt) {
				t.Fatal(err)
			}
			return
		}
		for i := 0; i < n.NrItems(); i++ {
			if n.IsLeaf() {
				out.keys[format.BlockNr(n.Key(i).Obj)] = true
				continue
			}
			clo, chi := lo, hi
			if i > 0 {
				k := n.Key(i)
				clo = &k
			}
			if i+1 < n.NrItems() {
				k := n.Key(i + 1)
				chi = &k
			}
			c, g := n.Child(i)
			walk(eb.Ptr{Block: c, Gen: g}, level-1, clo, chi)
		}
	}
	walk(tr.Root, tr.Level, nil, nil)
	return out
}

// in says whether start's record key falls in the range.
func (c csumKeys) in(start format.BlockNr) bool {
	k := format.CsumKey(start)
	return (c.lo == nil || !k.Less(*c.lo)) && (c.hi == nil || k.Less(*c.hi))
}

// rebuildCsumOnline runs RebuildCsum on f while a writer of its own files
// writes and fsyncs (it met the damage already, if any, and never failed)
// and checks the outcome: the check is clean, csum healthy with its
// marker cleared, every file the writer fsync'd reads back.
func rebuildCsumOnline(t *testing.T, f *fs.FS, seed uint64) *RebuildResult {
	t.Helper()
	w, stop := startWriter(t, f, seed, 20)
	res, err := RebuildCsum(context.Background(), f.Engine(), RebuildOptions{TempDir: t.TempDir()})
	if err != nil {
		stop()
		t.Fatal(err)
	}
	for w.count() < 40 {
		time.Sleep(time.Millisecond)
	}
	stop()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustClean(t, f.Engine())
	e := f.Engine()
	s := e.Pin()
	passes := s.Super().RecoveryPasses
	s.Release()
	if e.Sick(engine.StructCsum) || e.Degraded(engine.StructCsum) || passes&(1<<engine.PassCsumUntrusted) != 0 {
		t.Fatalf("after the rebuild: csum sick %v degraded %v, recovery passes %#x", e.Sick(engine.StructCsum), e.Degraded(engine.StructCsum), passes)
	}
	w.verify(t, f)
	if res.Events == 0 {
		t.Error("the rebuild followed no live update")
	}
	return res
}

// bigWrites writes whole files of 1 MiB (extents of the largest size,
// whose checksums take several live-update records and whose records
// split leaves every few inserts) and fsyncs them until stop is closed;
// it returns what each file holds.
func bigWrites(f *fs.FS, stop <-chan struct{}) (map[uint64][]byte, error) {
	out := map[uint64][]byte{}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return out, nil
		default:
		}
		a, err := f.Create(fs.RootIno, fmt.Sprintf("big%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			return out, err
		}
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5c}, 1<<20/3+1)[:1<<20]
		if _, err := f.Write(a.Ino, data, 0); err != nil {
			return out, err
		}
		if err := f.Fsync(a.Ino); err != nil {
			return out, err
		}
		out[a.Ino] = data
	}
}

// TestRebuildCsumHealthy rebuilds a healthy csum tree under two writers,
// one of small writes, one of 1 MiB files: every record is kept, none is
// computed again, and every file reads back.
func TestRebuildCsumHealthy(t *testing.T) {
	f, err := fs.OpenPath(populatedImage(t), fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop := make(chan struct{})
	type result struct {
		files map[uint64][]byte
		err   error
	}
	done := make(chan result)
	go func() {
		files, err := bigWrites(f, stop)
		done <- result{files, err}
	}()
	res := rebuildCsumOnline(t, f, 21)
	close(stop)
	big := <-done
	if big.err != nil {
		t.Fatal(big.err)
	}
	if len(res.Unverified) != 0 {
		t.Fatalf("a healthy tree's rebuild reports %d unverified ranges: %+v", len(res.Unverified), res.Unverified)
	}
	mustClean(t, f.Engine())
	verifyPopulated(t, f, nil)
	for ino, want := range big.files {
		got := make([]byte, len(want))
		if n, err := f.Read(ino, got, 0); err != nil || !bytes.Equal(got[:n], want) {
			t.Fatalf("1 MiB file inode %d: %d bytes read (%v)", ino, n, err)
		}
	}
	if len(big.files) == 0 {
		t.Fatal("no 1 MiB file written during the rebuild")
	}
	t.Logf("rebuild: %d records, %d events, %d new blocks, %d old, paused %v", res.Records, res.Events, res.NewBlocks, res.OldBlocks, res.ExclusivePause)
}

// TestRebuildCsumDamageOnline: every kind of damage, to a leaf and to an
// interior node of the csum tree of a mounted filesystem whose writer
// keeps writing and fsyncing (the tree runs degraded: no write fails),
// then an online rebuild under a writer. Afterwards the check is clean,
// csum is healthy, every file reads back byte for byte (through its new
// checksums), and the unverified ranges are exactly those whose records
// were in the damaged block: every record the damage hid, and, for damage
// that makes a block unreadable, records a write put in its key range
// before the rebuild followed the writes — nothing else. Under the race
// detector (or -short) a slice runs; SCRUBD_MATRIX_ALL=1 runs it all.
func TestRebuildCsumDamageOnline(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, kind := range inject.Kinds {
		for level := 0; level <= 1; level++ {
			n++
			if (raceEnabled || testing.Short()) && os.Getenv("SCRUBD_MATRIX_ALL") == "" && n%3 != 0 {
				continue
			}
			t.Run(fmt.Sprintf("%s_level=%d", kind, level), func(t *testing.T) {
				img := filepath.Join(t.TempDir(), "fs.img")
				if err := os.WriteFile(img, pristine, 0o600); err != nil {
					t.Fatal(err)
				}
				csumDamageCase(t, img, kind, level)
			})
		}
	}
}

func csumDamageCase(t *testing.T, img, kind string, level int) {
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := f.Engine()
	// A writer of its own files, stopped before the damage: with the
	// populated files, every record the damage can hide is of an extent
	// nothing frees afterwards.
	w1, stop1 := startWriter(t, f, 22, 30)
	stop1()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	before := readCsumKeys(t, e, 0)
	lv := level
	inj, err := inject.Online(e, inject.Options{Tree: format.TreeCsum, Kind: kind, Seed: 3, Level: &lv})
	if err != nil {
		if errors.Is(err, inject.ErrRefused) {
			t.Skipf("not injectable here: %v", err)
		}
		t.Fatal(err)
	}
	after := readCsumKeys(t, e, format.BlockNr(inj.Block))
	if !after.found {
		t.Fatalf("damaged block %d not in the tree", inj.Block)
	}
	var hidden []format.BlockNr
	for k := range before.keys {
		if !after.keys[k] {
			hidden = append(hidden, k)
		}
	}
	slices.Sort(hidden)
	if len(hidden) == 0 {
		t.Fatalf("%s: no record hidden", inj.Detail)
	}

	res := rebuildCsumOnline(t, f, 23)
	got := map[format.BlockNr]UnverifiedRange{}
	for _, u := range res.Unverified {
		got[u.Start] = u
	}
	if level > 0 {
		// An interior node damaged: the leaves below it are intact, and
		// salvaged (salvage.go): every hidden record kept, verified.
		for _, k := range hidden {
			if u, ok := got[k]; ok {
				t.Errorf("%s: the record of extent %d, in an intact leaf, listed unverified: %+v", inj.Detail, k, u)
			}
		}
		if res.Salvaged.Items < uint64(len(hidden)) || res.Salvaged.Leaves == 0 {
			t.Errorf("%s: %d records hidden, salvaged %+v", inj.Detail, len(hidden), res.Salvaged)
		}
		t.Logf("%s: %d hidden records salvaged", inj.Detail, len(hidden))
		hidden = nil
	}
	for _, k := range hidden {
		u, ok := got[k]
		if !ok {
			t.Fatalf("%s: the record of extent %d was hidden, the rebuild does not list it (unverified: %v)", inj.Detail, k, res.Unverified)
		}
		if len(u.Owners) == 0 || u.Owners[0].Ino < fs.RootIno || u.Blocks == 0 {
			t.Errorf("unverified extent %d: %+v", k, u)
		}
	}
	// Beyond those, only records of extents new since the damage, put
	// in the unreadable block's key range before the rebuild followed.
	unreadable := kind != inject.DropRecord
	for _, u := range res.Unverified {
		if slices.Contains(hidden, u.Start) {
			continue
		}
		if !unreadable || before.keys[u.Start] || !after.in(u.Start) {
			t.Errorf("%s: extent %d+%d listed unverified; its record was not in the damaged block (hidden: %v)", inj.Detail, u.Start, u.Blocks, hidden)
		}
	}
	verifyPopulated(t, f, nil)
	w1.verify(t, f)
	// The data verifies against the new records.
	if st := f.Stats(); st.CsumErrors != 0 {
		t.Fatalf("%d checksum errors", st.CsumErrors)
	}
	t.Logf("%s: %d hidden, %d unverified, salvaged %+v; rebuild %d records, %d events, %d new blocks, %d old, paused %v",
		inj.Detail, len(hidden), len(res.Unverified), res.Salvaged, res.Records, res.Events, res.NewBlocks, res.OldBlocks, res.ExclusivePause)
}

// TestCrashDuringCsumRebuild is TestCrashDuringRebuild for the csum tree:
// a crash at any flush boundary of its rebuild, of a healthy and of a
// damaged tree, leaves an image that mounts and checks clean after at
// most one more rebuild, and leaks nothing.
func TestCrashDuringCsumRebuild(t *testing.T) {
	skipShort(t)
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) { crashDuringRebuild(t, "csum", damaged) })
	}
}

// TestRebuildCsumRefusesDegradedRmap: the data extents come from the rmap;
// one the engine runs without is no source.
func TestRebuildCsumRefusesDegradedRmap(t *testing.T) {
	e := kitEngine(t, kitDevice(t, 4096), nil)
	e.SetRmapSick(true)
	_, err := RebuildCsum(context.Background(), e, RebuildOptions{TempDir: t.TempDir()})
	if !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), "rmap") {
		t.Fatalf("rebuild from a degraded rmap: %v", err)
	}
	if _, err := RebuildRmap(context.Background(), e, RebuildOptions{TempDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	// No data extent at all: an empty tree.
	res, err := RebuildCsum(context.Background(), e, RebuildOptions{TempDir: t.TempDir()})
	if err != nil || res.Records != 0 || len(res.Unverified) != 0 {
		t.Fatalf("rebuild of an empty csum tree: %v %+v", err, res)
	}
}

// TestScrubRepairsCsum repairs a damaged csum leaf through the ops table
// on a mount (scrub --repair): the report's rebuild lists the extents
// whose checksums were lost, and its notes name each file range that was
// re-checksummed without verification by the file's path.
func TestScrubRepairsCsum(t *testing.T) {
	img := filepath.Join(t.TempDir(), "fs.img")
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lv := 0
	if _, err := inject.Online(f.Engine(), inject.Options{Tree: format.TreeCsum, Kind: inject.Bitflip, Seed: 3, Level: &lv}); err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusCorrected {
		t.Fatalf("status %s, notes %v", rep.Status, rep.Notes)
	}
	var rb *RebuildReport
	for i := range rep.Rebuilds {
		if rep.Rebuilds[i].Structure == "csum" {
			rb = &rep.Rebuilds[i]
		}
	}
	if rb == nil || len(rb.Unverified) == 0 {
		t.Fatalf("no csum rebuild listing unverified extents: %+v", rep.Rebuilds)
	}
	named := 0
	for _, n := range rep.Notes {
		if strings.HasPrefix(n, "csum: /") && strings.Contains(n, "re-checksummed without verification") {
			if named == 0 {
				t.Log(n)
			}
			named++
		}
	}
	owners := 0
	for _, u := range rb.Unverified {
		owners += len(u.Owners)
	}
	if named != owners {
		t.Errorf("%d file ranges named by path in the notes, %d unverified owners: %v", named, owners, rep.Notes)
	}
	verifyPopulated(t, f, nil)
	f = remountClean(t, f, img)
	f.Close()
}
