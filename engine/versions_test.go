package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// versionImage makes an image of format 1.minor holding files (extents
// split in two, so the mappings differ from whole extents) and returns
// its bytes.
func versionImage(t *testing.T, minor uint16, files int) []byte {
	t.Helper()
	dev := disk.NewMem(2 * format.MinBlocks * format.BlockSize)
	if err := Mkfs(dev, MkfsOptions{Version: fmt.Sprintf("1.%d", minor)}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(nopClose{dev}, Options{CommitInterval: -1, VersionUpgrade: UpgradeNone})
	if err != nil {
		t.Fatal(err)
	}
	if sb := e.super; sb.Minor != minor {
		t.Fatalf("mkfs 1.%d made %d.%d", minor, sb.Major, sb.Minor)
	}
	for i := 0; i < files; i++ {
		ino := uint64(300 + i)
		if err := e.Update(func(tx *Tx) error {
			start, err := tx.AllocExtent(8, format.Owner{Inode: ino})
			if err != nil {
				return err
			}
			ctr, err := tx.Tree(format.TreeCsum)
			if err != nil {
				return err
			}
			if err := ctr.Put(format.CsumKey(start), make([]byte, 4*8)); err != nil {
				return err
			}
			etr, err := tx.Tree(format.TreeExtent)
			if err != nil {
				return err
			}
			if i%2 == 0 {
				return etr.Put(format.FileExtentKey(ino, 0), format.FileExtent{Start: start, Len: 8, Count: 8}.Encode())
			}
			left := format.FileExtent{Start: start, Len: 8, Count: 3}
			right := format.FileExtent{Start: start, Len: 8, Offset: 5, Count: 3}
			if err := etr.Put(format.FileExtentKey(ino, 0), left.Encode()); err != nil {
				return err
			}
			tx.RemapRef(format.Owner{Inode: ino}, left)
			if err := etr.Put(format.FileExtentKey(ino, 5), right.Encode()); err != nil {
				return err
			}
			tx.AddRef(format.Owner{Inode: ino, Offset: 5}, right)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return dev.Bytes()
}

// dataRecords counts the committed data rmap records and those of them
// carrying a mapping.
func dataRecords(t *testing.T, e *Engine) (all, mapped int) {
	t.Helper()
	s := e.Pin()
	defer s.Release()
	rt, _ := s.ScanTree(format.TreeRmap)
	if err := rt.Ascend(format.Key{}, func(k format.Key, v []byte) bool {
		if k.Type == format.TypeRmapInode {
			all++
			if len(v) == format.RmapMappedItemSize {
				mapped++
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return all, mapped
}

// checkVersion fails unless e's committed superblock is of minor version
// minor with exactly its features, no recovery pass required, every data
// record mapped from 1.2 on and none before, and the check clean.
func checkVersion(t *testing.T, e *Engine, minor uint16, files int) {
	t.Helper()
	s := e.Pin()
	sb := s.Super()
	s.Release()
	c, r, i := featuresUpTo(minor)
	if sb.Minor != minor || sb.Compat != c || sb.RoCompat != r || sb.Incompat != i {
		t.Fatalf("version %d.%d features %#x/%#x/%#x, want 1.%d %#x/%#x/%#x", sb.Major, sb.Minor, sb.Compat, sb.RoCompat, sb.Incompat, minor, c, r, i)
	}
	if sb.RecoveryPasses != 0 {
		t.Fatalf("recovery passes %#x still required", sb.RecoveryPasses)
	}
	all, mapped := dataRecords(t, e)
	if want := files + files/2; all != want {
		t.Fatalf("%d data records, want %d", all, want)
	}
	if minor >= 2 && mapped != all || minor < 2 && mapped != 0 {
		t.Fatalf("format 1.%d: %d of %d data records mapped", minor, mapped, all)
	}
	mustCheck(t, e)
}

// TestUpgradeTable: an image of every minor version upgraded to every
// newer one has exactly the target's features, the passes its rows need
// ran (data records mapped from 1.2 on), nothing left required, and checks
// clean, before and after a remount.
func TestUpgradeTable(t *testing.T) {
	files := 20
	if testing.Short() {
		files = 6
	}
	for from := uint16(0); from <= NewestMinor(); from++ {
		// -short: 1.0 to 1.1, and every other version to the newest.
		short := func(to uint16) bool { return to == from+1 && from == 0 || to == NewestMinor() && from > 0 && from < to }
		if testing.Short() && !short(from+1) && !short(NewestMinor()) {
			continue
		}
		img := versionImage(t, from, files)
		for to := from; to <= NewestMinor(); to++ {
			if testing.Short() && !short(to) {
				continue
			}
			t.Run(fmt.Sprintf("1.%d-to-1.%d", from, to), func(t *testing.T) {
				e := reopen(t, slices.Clone(img), Options{VersionUpgrade: UpgradeNone})
				defer e.Close()
				ch, err := e.SetFormatVersion(context.Background(), to)
				if err != nil {
					t.Fatal(err)
				}
				if len(ch.Added) != int(to-from) {
					t.Fatalf("added %v", ch.Added)
				}
				if from < 2 && to >= 2 && !slices.Contains(ch.Passes, "rmap_maps") {
					t.Fatalf("passes run %v, want rmap_maps", ch.Passes)
				}
				checkVersion(t, e, to, files)
				img2 := snapshotBytes(t, e)
				e2 := reopen(t, img2, Options{VersionUpgrade: UpgradeNone})
				defer e2.Close()
				checkVersion(t, e2, to, files)
			})
		}
	}
}

// snapshotBytes commits and returns a copy of the engine's device.
func snapshotBytes(t *testing.T, e *Engine) []byte {
	t.Helper()
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	switch d := e.dev.(type) {
	case *disk.Mem:
		return slices.Clone(d.Bytes())
	case nopClose:
		return slices.Clone(d.Device.(*disk.Mem).Bytes())
	}
	t.Fatalf("device %T", e.dev)
	return nil
}

// TestUpgradeOnOpen: the open's policy picks the target version.
func TestUpgradeOnOpen(t *testing.T) {
	for _, tc := range []struct {
		from uint16
		u    VersionUpgrade
		want uint16
	}{
		{0, UpgradeNone, 0},
		{0, UpgradeCompatible, 0}, // 1.1 sets an incompat bit
		{1, UpgradeCompatible, 1},
		{1, UpgradeIncompatible, NewestMinor()},
		{0, UpgradeIncompatible, NewestMinor()},
		{2, UpgradeIncompatible, NewestMinor()},
		{NewestMinor(), UpgradeIncompatible, NewestMinor()},
	} {
		if got := UpgradeTarget(tc.from, tc.u); got != tc.want {
			t.Fatalf("1.%d %s: target 1.%d, want 1.%d", tc.from, tc.u, got, tc.want)
		}
		if testing.Short() && tc.from != 0 && tc.from != 1 {
			continue
		}
		t.Run(fmt.Sprintf("1.%d-%s", tc.from, tc.u), func(t *testing.T) {
			e := reopen(t, versionImage(t, tc.from, 4), Options{VersionUpgrade: tc.u})
			defer e.Close()
			checkVersion(t, e, tc.want, 4)
			// An image without the log chain keeps no fsync log: an
			// append is refused and the fsync commits.
			if err := e.Update(func(tx *Tx) error {
				tr, err := tx.Tree(format.TreeInode)
				if err != nil {
					return err
				}
				return tr.Put(key(7), []byte("y"))
			}); err != nil {
				t.Fatal(err)
			}
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
			err := e.FsyncView(func(tx *Tx) error {
				return tx.AppendLog([]LogItem{{Tree: format.TreeInode, Key: key(1), Value: []byte("x")}})
			})
			if tc.want == 0 && !errors.Is(err, ErrNoLog) || tc.want > 0 && err != nil {
				t.Fatalf("append on 1.0: %v, want ErrNoLog", err)
			}
		})
	}
	// A compatible-only row is reached by the default policy: pretend
	// 1.2 and 1.3 set no incompat bit.
	saved := slices.Clone(formatVersions)
	defer func() { formatVersions = saved }()
	formatVersions[2].Incompat, formatVersions[2].RoCompat = 0, 1<<40
	if got := UpgradeTarget(1, UpgradeCompatible); got != 2 {
		t.Fatalf("compatible target from 1.1 with 1.2 ro-compat: 1.%d, want 1.2", got)
	}
}

// TestUpgradeCrash: a crash at every flush boundary of an upgrade from
// 1.1 to the newest version (its rmap_maps pass committing in several
// batches) leaves an image that mounts — running the pass again when the
// upgrade commit is durable and the pass was not done — and checks clean
// with every record mapped, or is still 1.1.
func TestUpgradeCrash(t *testing.T) {
	files, batch := 24, 7
	if testing.Short() {
		files, batch = 8, 3
	}
	img := versionImage(t, 1, files)
	saved := rmapMapsBatch
	rmapMapsBatch = batch
	defer func() { rmapMapsBatch = saved }()
	rec := disk.NewRecorder(img)
	e, err := Open(nopClose{rec}, Options{CommitInterval: -1, VersionUpgrade: UpgradeIncompatible})
	if err != nil {
		t.Fatal(err)
	}
	checkVersion(t, e, NewestMinor(), files)
	e.Close()
	rng := rand.New(rand.NewPCG(6, 7))
	modes := []disk.CrashMode{disk.CrashDropAll, disk.CrashKeepAll, disk.CrashRandom}
	reran := 0
	for k := 0; k <= rec.Flushes(); k++ {
		ms := modes
		// -short: about four boundaries, the last among them.
		if stride := max(1, rec.Flushes()/4); testing.Short() && k%stride != 0 && k != rec.Flushes() {
			continue
		}
		if testing.Short() {
			// One mode per boundary, in turn.
			ms = modes[k%len(modes) : k%len(modes)+1]
		}
		for _, mode := range ms {
			name := fmt.Sprintf("flush %d mode %v", k, mode)
			ci := rec.CrashImage(k, mode, rng)
			sb, _, err := readSuper(disk.NewMemFrom(slices.Clone(ci)))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			pending := sb.RecoveryPasses&(1<<PassRmapMaps) != 0
			ce, err := Open(nopClose{disk.NewMemFrom(ci)}, Options{CommitInterval: -1, VersionUpgrade: UpgradeNone})
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			if pending {
				reran++
				if !slices.Contains(ce.mount.PassesRun, "rmap_maps") {
					t.Fatalf("%s: rmap_maps required but not run (ran %v)", name, ce.mount.PassesRun)
				}
			}
			if err := ce.Sync(); err != nil {
				t.Fatalf("%s: sync: %v", name, err)
			}
			want := uint16(1)
			if sb.Minor != 1 {
				want = NewestMinor()
			}
			func() {
				defer func() {
					if t.Failed() {
						t.Logf("%s", name)
					}
				}()
				checkVersion(t, ce, want, files)
			}()
			ce.Close()
		}
	}
	if reran == 0 {
		t.Fatal("no crash image had the upgrade's pass pending")
	}
}

// TestDowngrade: a downgrade past a feature in use is refused, naming
// it; otherwise the image keeps only the target's features and checks
// clean; a downgrade to 1.0 stops the fsync log.
func TestDowngrade(t *testing.T) {
	newest := NewestMinor()
	for _, tc := range []struct {
		files   int
		to      uint16
		refused string
	}{
		{4, 2, ""},
		{4, 1, "rmap_maps"},
		{4, 0, "rmap_maps"},
		{0, 1, ""},
		{0, 0, ""},
	} {
		if testing.Short() && tc.to == 0 {
			continue
		}
		t.Run(fmt.Sprintf("files%d-to-1.%d", tc.files, tc.to), func(t *testing.T) {
			e := reopen(t, versionImage(t, newest, tc.files), Options{})
			defer e.Close()
			_, err := e.SetFormatVersion(context.Background(), tc.to)
			if tc.refused != "" {
				var fe *FeatureInUseError
				if !errors.As(err, &fe) || fe.Feature != tc.refused || !errors.Is(err, ErrFeatureInUse) || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("downgrade: %v, want refused for %s", err, tc.refused)
				}
				checkVersion(t, e, newest, tc.files)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkVersion(t, e, tc.to, tc.files)
			e2 := reopen(t, snapshotBytes(t, e), Options{VersionUpgrade: UpgradeNone})
			defer e2.Close()
			checkVersion(t, e2, tc.to, tc.files)
			if err := e2.Update(func(tx *Tx) error {
				tr, err := tx.Tree(format.TreeInode)
				if err != nil {
					return err
				}
				return tr.Put(key(7), []byte("y"))
			}); err != nil {
				t.Fatal(err)
			}
			if err := e2.Sync(); err != nil {
				t.Fatal(err)
			}
			err = e2.FsyncView(func(tx *Tx) error {
				return tx.AppendLog([]LogItem{{Tree: format.TreeInode, Key: key(1), Value: []byte("x")}})
			})
			if tc.to == 0 && !errors.Is(err, ErrNoLog) || tc.to > 0 && err != nil {
				t.Fatalf("append on 1.0: %v, want ErrNoLog", err)
			}
		})
	}
}

// TestRunPass: every runnable pass runs by name and clears its bit; an
// unknown name lists the names; a marker is refused.
func TestRunPass(t *testing.T) {
	e, _ := newTestEngine(t, Options{})
	for _, name := range PassNames() {
		if err := e.RunPass(context.Background(), name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	e.RequirePasses(PassRmapMaps)
	if err := e.RunPass(context.Background(), "rmap_maps"); err != nil {
		t.Fatal(err)
	}
	if s := e.Pin(); s.Super().RecoveryPasses != 0 {
		s.Release()
		t.Fatalf("passes %#x left", s.Super().RecoveryPasses)
	} else {
		s.Release()
	}
	err := e.RunPass(context.Background(), "nope")
	if !errors.Is(err, ErrUnknownPass) || !strings.Contains(err.Error(), "deleted_inodes") {
		t.Fatalf("unknown: %v", err)
	}
	if err := e.RunPass(context.Background(), "rmap_untrusted"); !errors.Is(err, ErrMarkerPass) {
		t.Fatalf("marker: %v", err)
	}
}

// TestSicknessPersisted: damage to the deleted or logged_ops tree found
// at runtime sets its pass's bit, committed; the next mount runs the pass
// and, meeting no damage, clears it.
func TestSicknessPersisted(t *testing.T) {
	for _, tc := range []struct {
		name string
		pass uint
		hit  func(e *Engine, err error)
	}{
		{"deleted", PassDeletedInodes, func(e *Engine, err error) { e.DeletedDamaged(err) }},
		{"logged_ops", PassLoggedOps, func(e *Engine, err error) { e.LoggedOpsDamaged(err) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, dev := newTestEngine(t, Options{})
			if err := e.Update(func(tx *Tx) error {
				tc.hit(e, corruptf(format.TreeDeleted, 9, "test damage"))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := e.Sync(); err != nil {
				t.Fatal(err)
			}
			sb, _, err := readSuper(dev)
			if err != nil {
				t.Fatal(err)
			}
			if sb.RecoveryPasses&(1<<tc.pass) == 0 {
				t.Fatalf("recovery passes %#x: pass %d not required", sb.RecoveryPasses, tc.pass)
			}
			e2 := reopen(t, slices.Clone(dev.Bytes()), Options{})
			defer e2.Close()
			if err := e2.Sync(); err != nil {
				t.Fatal(err)
			}
			if s := e2.Pin(); s.Super().RecoveryPasses != 0 {
				s.Release()
				t.Fatalf("passes %#x left after the mount ran them", s.Super().RecoveryPasses)
			} else {
				s.Release()
			}
			mustCheck(t, e2)
		})
	}
}

// TestErrorsSilent: damage of an id in errors_silent is logged at info
// level, not error level, and counted all the same; other ids stay loud;
// unsilenced, the id is loud again.
func TestErrorsSilent(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, dev := newTestEngine(t, Options{Logger: log})
	id, ok := ErrorIDByName(ErrNodeBadChecksum.Name())
	if !ok || id != ErrNodeBadChecksum {
		t.Fatalf("ErrorIDByName(%q) = %v, %v", ErrNodeBadChecksum.Name(), id, ok)
	}
	if err := e.SetErrorsSilent(true, id); err != nil {
		t.Fatal(err)
	}
	damage := func(kind format.Kind, tree format.TreeID) error {
		return &format.CorruptError{Kind: kind, Tree: tree, Block: 9, Detail: "test damage"}
	}
	if err := e.Update(func(tx *Tx) error {
		e.DeletedDamaged(damage(format.KindBadChecksum, format.TreeDeleted))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "level=ERROR") || !strings.Contains(buf.String(), "silenced=true") {
		t.Fatalf("silenced damage logged:\n%s", buf.String())
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	count := func(id ErrorID) uint64 {
		sb, _, err := readSuper(dev)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range sb.Errors {
			if x.ID == uint32(id) {
				return x.Count
			}
		}
		return 0
	}
	if n := count(ErrNodeBadChecksum); n != 1 {
		t.Fatalf("silenced damage counted %d times, want 1", n)
	}
	// Another id is loud.
	buf.Reset()
	if err := e.Update(func(tx *Tx) error {
		e.LoggedOpsDamaged(damage(format.KindBadMagic, format.TreeLoggedOps))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Fatalf("loud damage not logged at error level:\n%s", buf.String())
	}
	// Unsilenced, the id is loud again (on a structure not yet sick).
	if err := e.SetErrorsSilent(false, id); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := e.Update(func(tx *Tx) error {
		e.CsumDamaged(damage(format.KindBadChecksum, format.TreeCsum))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Fatalf("unsilenced damage not logged at error level:\n%s", buf.String())
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := count(ErrNodeBadChecksum); n != 2 {
		t.Fatalf("counted %d, want 2", n)
	}
	// Put the trees the test called sick right for the final check:
	// nothing on disk is damaged, only marked so.
	for _, s := range []Structure{StructDeleted, StructLoggedOps, StructCsum} {
		e.MarkRepaired(s, e.committedGen())
	}
}
