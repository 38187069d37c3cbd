package repair

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// TestScrubRepairEveryRmapDamage: for every kind of rmap damage, scrub
// finds it, online repair fixes it while a writer runs, offline fsck is
// then clean, and every byte the writer fsync'd verifies after a remount.
func TestScrubRepairEveryRmapDamage(t *testing.T) {
	for _, kind := range InjectKinds {
		t.Run(kind, func(t *testing.T) {
			img := newImage(t)
			f, err := fs.OpenPath(img, fs.Options{CommitInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			w := &writer{f: f, files: map[uint64][]byte{}}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go w.run(7, stop, &wg)
			for w.count() < 60 {
				time.Sleep(time.Millisecond)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			inj, err := InjectOnline(f.Engine(), InjectOptions{Tree: format.TreeRmap, Kind: kind, Seed: 3})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("injected: %+v", *inj)
			rep, err := Scrub(context.Background(), f, "test", ScrubOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Found == 0 || rep.Status != StatusUncorrected {
				t.Fatalf("scrub after %s found nothing: %+v", kind, rep)
			}
			rep, err = Scrub(context.Background(), f, "test", ScrubOptions{Repair: true, TempDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != StatusCorrected || rep.Repaired == 0 || rep.ExitCode() != ExitCorrected {
				var b []string
				for _, s := range rep.Structures {
					for _, fd := range s.Findings {
						b = append(b, s.Name+": "+fd.Name+": "+fd.Detail)
					}
				}
				t.Fatalf("repair of %s: status %s found %d repaired %d notes %v findings %v", kind, rep.Status, rep.Found, rep.Repaired, rep.Notes, b)
			}
			close(stop)
			wg.Wait()
			if w.err != nil {
				t.Fatal(w.err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			off, err := CheckOffline(context.Background(), img, Options{})
			if err != nil || off.Status != StatusClean {
				t.Fatalf("offline fsck after repair: %v %+v", err, off)
			}
			f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			w.verify(t, f)
			f.Close()
		})
	}
}

// TestScrubNoFalsePositivesUnderLoad scrubs a healthy filesystem again and
// again while a writer runs: no findings, ever.
func TestScrubNoFalsePositivesUnderLoad(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &writer{f: f, files: map[uint64][]byte{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go w.run(8, stop, &wg)
	for i := 0; i < 40; i++ {
		for w.count() < 2*i {
			time.Sleep(time.Millisecond)
		}
		rep, err := Scrub(context.Background(), f, "test", ScrubOptions{Data: i%4 == 0})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Found != 0 {
			t.Fatalf("scrub %d of a healthy filesystem under load found %d: %+v", i, rep.Found, rep.Structures)
		}
	}
	close(stop)
	wg.Wait()
	if w.err != nil {
		t.Fatal(w.err)
	}
}

// TestRepairRefusesDamagedSources: damage to a tree the rmap is derived
// from (a file extent record dropped) must not be "repaired" by rebuilding
// the rmap from it, which would lose the extent's last record.
func TestRepairRefusesDamagedSources(t *testing.T) {
	img := newImage(t)
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		a, _ := f.Create(fs.RootIno, fmt.Sprintf("f%d", i), fs.NewInode{Mode: 0o644})
		f.Write(a.Ino, make([]byte, 20000), 0)
	}
	f.Close()
	if _, err := InjectOffline(img, InjectOptions{Tree: format.TreeExtent, Kind: KindDropRecord, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	before, err := CheckOffline(context.Background(), img, Options{})
	if err != nil || before.Found == 0 {
		t.Fatalf("damage not found: %v %+v", err, before)
	}
	f, err = fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Scrub(context.Background(), f, img, ScrubOptions{Repair: true, Mode: "offline"})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if rep.Status != StatusUncorrected || rep.Repaired != 0 || len(rep.Rebuilds) != 0 {
		t.Fatalf("repair from a damaged extent tree: status %s repaired %d rebuilds %d", rep.Status, rep.Repaired, len(rep.Rebuilds))
	}
	after, err := CheckOffline(context.Background(), img, Options{})
	if err != nil || after.Found != before.Found {
		t.Fatalf("the image changed: %d findings before, %d after (%v)", before.Found, after.Found, err)
	}
}
