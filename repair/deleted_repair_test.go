package repair

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/inject"
)

// unlinkOpen creates n files, opens each and unlinks it: n entries in
// the deleted tree, held open by f. It returns their inodes.
func unlinkOpen(t *testing.T, f *fs.FS, prefix string, n int) []uint64 {
	t.Helper()
	var inos []uint64
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%s%d", prefix, i)
		a, err := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(a.Ino, populatedBuf[:3000], 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Open(a.Ino); err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink(fs.RootIno, name); err != nil {
			t.Fatal(err)
		}
		inos = append(inos, a.Ino)
	}
	return inos
}

// unlinker keeps unlinking open files and closing some of them until
// stop: entries added to and removed from the deleted tree while the
// repair scans. Every operation must succeed, whatever the damage.
func unlinker(t *testing.T, f *fs.FS, seed uint64) (stop func() []uint64) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var err error
	var open []uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(seed, 1))
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			name := fmt.Sprintf("u%d-%d", seed, i)
			a, e := f.Create(fs.RootIno, name, fs.NewInode{Mode: 0o644})
			if e == nil {
				_, e = f.Write(a.Ino, populatedBuf[:1+r.IntN(9000)], 0)
			}
			if e == nil {
				e = f.Open(a.Ino)
			}
			if e == nil {
				e = f.Unlink(fs.RootIno, name)
			}
			if e == nil {
				open = append(open, a.Ino)
				if r.IntN(3) > 0 {
					k := r.IntN(len(open))
					e = f.Release(open[k])
					open = append(open[:k], open[k+1:]...)
				}
			}
			if e != nil {
				err = fmt.Errorf("%s: %w", name, e)
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() []uint64 {
		t.Helper()
		close(done)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		return open
	}
}

// TestDeletedLoggedOpsDamageOnline: every kind of damage, at a leaf and at
// an interior node where the tree has one, to the deleted and logged_ops
// trees of a mount with a writer fsyncing and an unlinker unlinking open
// files all along: nothing fails; scrub --repair corrects it; the next
// scrub is clean; the offline check after unmount is clean; every
// fsync'd byte reads back after a remount, and the files unlinked while
// open are gone.
func TestDeletedLoggedOpsDamageOnline(t *testing.T) {
	pristine, err := os.ReadFile(populatedImage(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tree := range []format.TreeID{format.TreeDeleted, format.TreeLoggedOps} {
		for _, kind := range inject.Kinds {
			for level := 0; level <= 1; level++ {
				if testing.Short() && (level > 0 || kind != inject.Bitflip && kind != inject.Zero) {
					continue // the race pass: bitflip and zero at the leaves are enough
				}
				t.Run(fmt.Sprintf("%s/%s/%d", tree, kind, level), func(t *testing.T) {
					damageOnline(t, pristine, tree, kind, level)
				})
			}
		}
	}
}

func damageOnline(t *testing.T, pristine []byte, tree format.TreeID, kind string, level int) {
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, pristine, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Content for the tree: entries enough for two levels of the deleted
	// tree at level 1; a scrub cursor in logged_ops.
	n := 3
	if level == 1 {
		n = 400
	}
	held := unlinkOpen(t, f, "held", n)
	if tree == format.TreeLoggedOps {
		c := engine.ScrubCursor{Run: 1, Data: true, NextIno: 300, Verified: 1 << 20}
		if level == 1 {
			for i := range engine.MaxCursorBad {
				c.Bad = append(c.Bad, engine.BadBlock{Ino: 300, Offset: uint64(i) * format.BlockSize})
			}
		}
		if err := f.Engine().Update(func(tx *engine.Tx) error { return tx.SetScrubCursor(c) }); err != nil {
			t.Fatal(err)
		}
	}
	w, stop := startWriterOn(t, &writer{f: f, files: map[uint64][]byte{}}, 5, 50)
	stopU := unlinker(t, f, 7)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	lv := level
	inj, err := inject.Online(f.Engine(), inject.Options{Tree: tree, Kind: kind, Seed: 3, Level: &lv})
	if err != nil {
		stopU()
		stop()
		f.Close()
		if errors.Is(err, inject.ErrRefused) {
			t.Skipf("not injectable here: %v", err)
		}
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the writers meet the damage
	rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	name := tree.String()
	st := rep.structure(name)
	if rep.Status != StatusCorrected || st == nil || st.Found == 0 || st.Repaired != st.Found {
		t.Fatalf("scrub --repair after %s at block %d: status %s, %s %+v, notes %v", kind, inj.Block, rep.Status, name, st, rep.Notes)
	}
	// A record dropped from a leaf is only a wrong item count to the
	// check (recounted; the record is gone either way); any other kind
	// is the repairer's.
	if kind != inject.DropRecord || level > 0 {
		if !slices.ContainsFunc(rep.Rebuilds, func(rb RebuildReport) bool { return rb.Structure == name }) {
			t.Fatalf("the %s repairer did not run: notes %v", name, rep.Notes)
		}
		for _, rb := range rep.Rebuilds {
			if rb.Structure == name {
				t.Logf("%s repair: %d records, %d live updates, %d old blocks freed, writers paused %.2f ms, %.3f s", name, rb.Records, rb.Events, rb.OldBlocks, rb.PauseMs, rb.DurationS)
			}
		}
		if tree == format.TreeLoggedOps && !strings.Contains(strings.Join(rep.Notes, "\n"), "scrub cursor") {
			t.Errorf("the report does not say the scrub cursor was dropped: %v", rep.Notes)
		}
	}
	rep, err = Scrub(context.Background(), f, "test", ScrubOptions{})
	if err != nil || rep.Status != StatusClean {
		t.Fatalf("second scrub: %v %+v", err, rep)
	}
	if f.Engine().Sick(engine.StructDeleted) || f.Engine().Sick(engine.StructLoggedOps) {
		t.Fatal("still sick after the repair")
	}
	open := stopU()
	stop()
	f = remountClean(t, f, img)
	defer f.Close()
	w.verify(t, f)
	verifyPopulated(t, f, nil)
	for _, ino := range append(held, open...) {
		if _, err := f.GetAttr(ino); !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("inode %d, unlinked while open, survives the remount: %v", ino, err)
		}
	}
}

// TestCrashDuringDeletedLoggedOpsRepair records every write and flush of
// the deleted and logged_ops repairs (of a healthy tree and of a damaged
// one; the damaged logged_ops tree hides a pending reservation, whose
// blocks the repair frees) and opens the image as a crash at each flush
// boundary would leave it: it must mount, and pass the self-check after
// at most one more repair, needed only when the old tree was damaged.
func TestCrashDuringDeletedLoggedOpsRepair(t *testing.T) {
	skipShort(t)
	for _, name := range []string{"deleted", "logged_ops"} {
		for _, damaged := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/damaged=%v", name, damaged), func(t *testing.T) { crashDuringRepair(t, name, damaged) })
		}
	}
}

func crashDuringRepair(t *testing.T, name string, damaged bool) {
	op := opByName(name)
	tree := op.Trees[0]
	dev := disk.NewMem(32768 * format.BlockSize)
	if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Open(nopClose{dev}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 40; i++ {
		a, err := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1+r.IntN(30000))
		if _, err := f.Write(a.Ino, buf, int64(r.IntN(9000))); err != nil {
			t.Fatal(err)
		}
	}
	unlinkOpen(t, f, "held", 5)
	var reserved []format.BlockNr
	if name == "logged_ops" {
		// A reservation a crash interrupted: pending in the tree.
		if err := f.Engine().Update(func(tx *engine.Tx) error {
			var err error
			if reserved, err = tx.ReserveMeta(format.TreeRmap, 4); err != nil {
				return err
			}
			_, err = tx.LogFreeUnreachable(format.TreeRmap, reserved)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if damaged {
		if _, err := inject.Online(f.Engine(), inject.Options{Tree: tree, Kind: inject.Bitflip, Seed: 5}); err != nil {
			t.Fatal(err)
		}
	}
	img := dev.Bytes() // a crash: the held files are open
	rec := disk.NewRecorder(img)
	f, err = fs.Open(nopClose{rec}, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Engine().Sick(op.structure()); got != damaged {
		t.Fatalf("%s sick %v after the mount", name, got)
	}
	if !damaged {
		// Held open by this mount, so the repair lists them.
		unlinkOpen(t, f, "again", 3)
	}
	startFlush := rec.Flushes()
	rb, err := op.Repair(context.Background(), f.Engine(), ScrubOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	endFlush := rec.Flushes()
	if damaged && name == "logged_ops" && rb.OldBlocks < uint64(len(reserved))+1 {
		t.Fatalf("freed %d blocks, want the %d reserved and the old root", rb.OldBlocks, len(reserved))
	}
	mustClean(t, f.Engine())
	f.Close()
	rng := rand.New(rand.NewPCG(10, 10))
	again := 0 // crash images left with the old, damaged tree
	defer func() {
		if damaged && again == 0 && !t.Failed() {
			t.Error("no crash image kept the damaged tree: the boundaries were not covered")
		}
	}()
	for k := startFlush; k <= endFlush; k++ {
		for _, mode := range []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom} {
			what := fmt.Sprintf("%s: flush %d %v", name, k, mode)
			cf, err := fs.Open(disk.NewMemFrom(rec.CrashImage(k, mode, rng)), fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatalf("%s: mount: %v", what, err)
			}
			if found := checkFindings(t, cf.Engine()); len(found) > 0 {
				if !damaged || !onlyFor(op, found) {
					t.Fatalf("%s: findings after a crash mid-repair (damaged=%v): %v", what, damaged, found)
				}
				again++
				if _, err := op.Repair(context.Background(), cf.Engine(), ScrubOptions{TempDir: t.TempDir()}); err != nil {
					t.Fatalf("%s: second repair: %v", what, err)
				}
				mustClean(t, cf.Engine())
			}
			cf.Close()
		}
	}
}

// structure is the health structure of the row.
func (op *Op) structure() engine.Structure {
	s, _ := engine.StructureByName(op.Name)
	return s
}
