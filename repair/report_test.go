package repair

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// goldenReport builds a report of a corrected online run over a made-up
// check: one structure repaired, one data block bad, every field set.
func goldenReport() *Report {
	res := &engine.CheckResult{Gen: 42, Complete: true, SuperCopies: 3, Trees: []engine.TreeCheck{
		{Tree: format.TreeRoot, Root: 30, Gen: 42, Items: 12, Blocks: 1},
		{Tree: format.TreeRmap, Root: 31, Level: 1, Gen: 41, Items: 12345, Blocks: 70},
	}}
	data := engine.Finding{ID: engine.ErrDataChecksum, Name: engine.ErrDataChecksum.Name(), Tree: format.OwnerData, Block: 9000,
		Detail: "data checksum mismatch",
		File:   &engine.FileRef{Path: "/docs/a.txt", Inode: 260, Offset: 8192, DiskBlock: 9000}}
	rmap := engine.Finding{ID: engine.ErrNodeBadChecksum, Name: engine.ErrNodeBadChecksum.Name(), Tree: format.TreeRmap, Block: 77,
		Detail: "stored crc32c 0x1, computed 0x2"}
	r := newReport("online", "/mnt/fs", time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC), res, []engine.Finding{rmap, data})
	r.ScrubdVersion = "VERSION"
	r.UUID, r.Label = "0c62437b-5a7f-a6ae-6ac9-f3ec86d58962", "golden"
	r.Requested = Requested{Repair: true, Data: true}
	r.Rebuilds = []RebuildReport{{Structure: "rmap", Gen: 43, Records: 12345, Events: 17, NewBlocks: 69, OldBlocks: 70, DurationS: 0.25, PauseMs: 1.5, XfileBytes: 1 << 20}}
	r.Notes = []string{"rebuilt the rmap tree online: 12345 records, 17 live updates followed, writers paused 1.5 ms"}
	r.markRepaired([]engine.Finding{rmap, data}, []engine.Finding{data})
	r.BytesVerified = 3 << 30
	r.DurationS = 12.5
	r.Generation = 43
	return r
}

// TestReportGolden pins the human summary and the JSON report's shape
// (testdata/report.summary.golden, testdata/report.json.golden; -update
// rewrites them).
func TestReportGolden(t *testing.T) {
	r := goldenReport()
	var sum bytes.Buffer
	r.WriteSummary(&sum)
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"report.summary.golden": sum.Bytes(), "report.json.golden": append(js, '\n')} {
		p := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(p, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (run with -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs:\n got:\n%s\nwant:\n%s", p, got, want)
		}
	}
}

// TestInterruptedRunsReportPartially: a canceled scrub or offline check
// returns the report of what it checked, marked interrupted and not
// complete, with the context's error.
func TestInterruptedRunsReportPartially(t *testing.T) {
	img := newImage(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := CheckOffline(ctx, img, Options{})
	if !errors.Is(err, context.Canceled) || rep == nil || !rep.Interrupted || rep.Complete {
		t.Fatalf("offline: %v %+v", err, rep)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err = Scrub(ctx, f, img, ScrubOptions{Data: true})
	if !errors.Is(err, context.Canceled) || rep == nil || !rep.Interrupted || rep.Complete || rep.UUID == "" {
		t.Fatalf("scrub: %v %+v", err, rep)
	}
	var sum bytes.Buffer
	rep.WriteSummary(&sum)
	if !bytes.Contains(sum.Bytes(), []byte("interrupted")) {
		t.Errorf("summary does not say interrupted:\n%s", sum.String())
	}
}
