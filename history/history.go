// Package history keeps the reports of past scrub and fsck runs.
//
// Each filesystem (by UUID) has a directory under the state directory,
// holding one JSON file per run, named by when the run started, so a
// directory listing in name order is the runs in time order. A store
// rotates on every save: it keeps at most Keep reports and none older
// than MaxAge. Files are written to a temporary name and renamed, so a
// crash leaves whole reports or none; a file that does not parse (a
// disk error, a hand edit) is skipped by List and named by Get's error.
//
// The history lives beside the image, not in it: reports are for people
// and tools, and must survive even an image that no longer opens.
package history

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/repair"
)

// Defaults for Store.
const (
	DefaultKeep   = 100
	DefaultMaxAge = 365 * 24 * time.Hour
)

// ErrNotFound: no report has that id (or there is none at all).
var ErrNotFound = errors.New("no such report")

// DefaultDir is where histories are kept: $SCRUBD_STATE_DIR if set, else
// /var/lib/scrubd for root, else $XDG_STATE_HOME/scrubd (by default
// ~/.local/state/scrubd).
func DefaultDir() string {
	if d := os.Getenv("SCRUBD_STATE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/scrubd"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "scrubd")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "scrubd")
	}
	return filepath.Join(os.TempDir(), "scrubd-state")
}

// Store is the history of one filesystem.
type Store struct {
	dir    string
	Keep   int           // reports kept at most (0: DefaultKeep)
	MaxAge time.Duration // older reports are removed (0: DefaultMaxAge)
	now    func() time.Time
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Open returns the store of the filesystem with uuid under root ("":
// DefaultDir). Nothing is created until the first Save.
func Open(root, uuid string) (*Store, error) {
	if !uuidRE.MatchString(uuid) {
		return nil, fmt.Errorf("history: %q is not a filesystem UUID", uuid)
	}
	if root == "" {
		root = DefaultDir()
	}
	return &Store{dir: filepath.Join(root, uuid, "reports"), now: time.Now}, nil
}

// Dir is the directory of the store's reports.
func (s *Store) Dir() string { return s.dir }

// Summary is one run in a listing.
type Summary struct {
	ID        string    `json:"id"`
	Started   time.Time `json:"started"`
	Mode      string    `json:"mode"`
	Target    string    `json:"target"`
	Repair    bool      `json:"repair"`
	Data      bool      `json:"data"`
	Status    string    `json:"status"`
	Found     int       `json:"found"`
	Repaired  int       `json:"repaired"`
	DurationS float64   `json:"duration_s"`
	Complete  bool      `json:"complete"`
	// Interrupted: the run was cancelled.
	Interrupted bool `json:"interrupted,omitempty"`
}

func summarize(id string, r *repair.Report) Summary {
	return Summary{ID: id, Started: r.Started, Mode: r.Mode, Target: r.Target, Repair: r.Requested.Repair,
		Data: r.Requested.Data, Status: r.Status, Found: r.Found, Repaired: r.Repaired,
		DurationS: r.DurationS, Complete: r.Complete, Interrupted: r.Interrupted}
}

var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}\.[0-9]{9}Z$`)

// Save writes rep as a new run and rotates; it returns the run's id.
func (s *Store) Save(rep *repair.Report) (string, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return "", fmt.Errorf("history: %w", err)
	}
	t := rep.Started
	if t.IsZero() {
		t = s.now()
	}
	id := t.UTC().Format("20060102T150405.000000000Z")
	for {
		if _, err := os.Lstat(filepath.Join(s.dir, id+".json")); errors.Is(err, os.ErrNotExist) {
			break
		}
		// Two runs in the same nanosecond (a clock that did not move):
		// the later one a nanosecond on.
		t = t.Add(time.Nanosecond)
		id = t.UTC().Format("20060102T150405.000000000Z")
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(s.dir, ".report-*")
	if err != nil {
		return "", fmt.Errorf("history: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), filepath.Join(s.dir, id+".json"))
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("history: save report: %w", werr)
	}
	return id, s.rotate()
}

// ids lists the stored runs' ids, oldest first.
func (s *Store) ids() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var out []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && e.Type().IsRegular() && idRE.MatchString(id) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

// rotate removes the reports past Keep and those older than MaxAge.
func (s *Store) rotate() error {
	keep, maxAge := s.Keep, s.MaxAge
	if keep <= 0 {
		keep = DefaultKeep
	}
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	ids, err := s.ids()
	if err != nil {
		return err
	}
	cutoff := s.now().Add(-maxAge)
	var errs []error
	for i, id := range ids {
		t, _ := time.Parse("20060102T150405.000000000Z", id)
		if i < len(ids)-keep || t.Before(cutoff) {
			if err := os.Remove(filepath.Join(s.dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("history: rotate: %w", errors.Join(errs...))
	}
	return nil
}

// Get reads the run with id ("" or "last": the newest).
func (s *Store) Get(id string) (*repair.Report, string, error) {
	if id == "" || id == "last" {
		ids, err := s.ids()
		if err != nil {
			return nil, "", err
		}
		if len(ids) == 0 {
			return nil, "", fmt.Errorf("history: %w: no run recorded in %s", ErrNotFound, s.dir)
		}
		id = ids[len(ids)-1]
	}
	if !idRE.MatchString(id) {
		return nil, "", fmt.Errorf("history: %w: %q is not a report id (ids look like 20261205T031500.000000000Z; see --list)", ErrNotFound, id)
	}
	b, err := os.ReadFile(filepath.Join(s.dir, id+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("history: %w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, "", fmt.Errorf("history: %w", err)
	}
	var rep repair.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, "", fmt.Errorf("history: report %s does not parse: %w", id, err)
	}
	return &rep, id, nil
}

// List summarizes the stored runs, newest first; reports that do not
// parse are skipped and counted.
func (s *Store) List() ([]Summary, int, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, 0, err
	}
	var out []Summary
	bad := 0
	for i := len(ids) - 1; i >= 0; i-- {
		rep, _, err := s.Get(ids[i])
		if err != nil {
			bad++
			continue
		}
		out = append(out, summarize(ids[i], rep))
	}
	return out, bad, nil
}

// LastComplete returns the generation the newest complete run checked
// (for an incremental scrub: what was written since needs reading) and
// that run's id; ok false if no run completed.
func (s *Store) LastComplete() (gen uint64, id string, ok bool, err error) {
	ids, err := s.ids()
	if err != nil {
		return 0, "", false, err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		rep, _, err := s.Get(ids[i])
		if err != nil {
			continue
		}
		if rep.Complete && !rep.Interrupted && rep.Requested.Data && rep.Requested.Since == 0 && !rep.Requested.Errors {
			return rep.Generation, ids[i], true, nil
		}
	}
	return 0, "", false, nil
}

// LastBadBlocks returns the data blocks the newest run that read data
// found bad, and that run's id; ok false if no run read data.
func (s *Store) LastBadBlocks() ([]engine.BadBlock, string, bool, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, "", false, err
	}
	for i := len(ids) - 1; i >= 0; i-- {
		rep, _, err := s.Get(ids[i])
		if err != nil || !rep.Requested.Data {
			continue
		}
		var bad []engine.BadBlock
		for _, st := range rep.Structures {
			for _, f := range st.Findings {
				if f.Name == engine.ErrDataChecksum.Name() && f.Inode != 0 && f.Offset != nil {
					b := engine.BadBlock{Ino: f.Inode, Offset: *f.Offset}
					if f.DiskBlock != nil {
						b.Disk = format.BlockNr(*f.DiskBlock)
					}
					bad = append(bad, b)
				}
			}
		}
		return bad, ids[i], true, nil
	}
	return nil, "", false, nil
}

// Scope resolves an incremental (since the last complete data scrub) or
// errors-only (the last data scrub's bad blocks) request against the
// kept runs: the generation to read since (0: everything), or the blocks
// to re-read (onlyErrors), and a note for the report.
func (s *Store) Scope(incremental, errors bool) (since uint64, bad []engine.BadBlock, onlyErrors bool, note string, err error) {
	switch {
	case incremental:
		gen, id, ok, err := s.LastComplete()
		if err != nil {
			return 0, nil, false, "", err
		}
		if !ok {
			return 0, nil, false, "incremental: no complete data scrub is kept, so this one reads everything", nil
		}
		return gen, nil, false, fmt.Sprintf("incremental: the data written since run %s (generation %d)", id, gen), nil
	case errors:
		bad, id, ok, err := s.LastBadBlocks()
		if err != nil {
			return 0, nil, false, "", err
		}
		if !ok {
			return 0, nil, true, "errors: no data scrub is kept, so there is nothing to re-read", nil
		}
		return 0, bad, true, fmt.Sprintf("errors: the %d bad blocks of run %s", len(bad), id), nil
	}
	return 0, nil, false, "", nil
}
