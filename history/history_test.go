package history

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/scrubd/scrubd/repair"
)

const testUUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

func TestSaveListGetRotate(t *testing.T) {
	root := t.TempDir()
	if _, err := Open(root, "../etc"); err == nil {
		t.Fatal("a path accepted as a UUID")
	}
	s, err := Open(root, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	s.Keep, s.MaxAge = 3, 30*24*time.Hour
	if _, _, err := s.Get(""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("last of an empty history: %v", err)
	}
	var ids []string
	for i := 0; i < 5; i++ {
		rep := &repair.Report{Version: 1, Mode: "online", UUID: testUUID, Status: repair.StatusClean, Found: i,
			Started: now.Add(time.Duration(i-5) * time.Hour)}
		id, err := s.Save(rep)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	sums, bad, err := s.List()
	if err != nil || bad != 0 || len(sums) != 3 {
		t.Fatalf("list after 5 saves with keep 3: %d %d %v", len(sums), bad, err)
	}
	for i, sm := range sums { // newest first
		if sm.ID != ids[4-i] || sm.Found != 4-i {
			t.Fatalf("list[%d] = %+v, want run %s", i, sm, ids[4-i])
		}
	}
	if rep, id, err := s.Get("last"); err != nil || id != ids[4] || rep.Found != 4 {
		t.Fatalf("last: %s %v %+v", id, err, rep)
	}
	if _, _, err := s.Get(ids[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a rotated-out run: %v", err)
	}
	if _, _, err := s.Get("../../x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a hostile id: %v", err)
	}
	// Age: a run 40 days old goes at the next save.
	old, err := s.Save(&repair.Report{UUID: testUUID, Started: now.AddDate(0, 0, -40)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(old); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a report past the maximum age was kept: %v", err)
	}
	// Same start twice: two runs.
	a, _ := s.Save(&repair.Report{UUID: testUUID, Started: now})
	b, _ := s.Save(&repair.Report{UUID: testUUID, Started: now})
	if a == b {
		t.Fatalf("two runs with one id %s", a)
	}
	// A damaged file is skipped by the listing and named by Get.
	if err := os.WriteFile(filepath.Join(s.Dir(), b+".json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	sums, bad, err = s.List()
	if err != nil || bad != 1 || len(sums) != 2 {
		t.Fatalf("list with a damaged report: %d %d %v", len(sums), bad, err)
	}
	if _, _, err := s.Get(b); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("damaged report: %v", err)
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(s.Dir())
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			t.Fatalf("left over: %s", e.Name())
		}
	}
}
