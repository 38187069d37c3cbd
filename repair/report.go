package repair

import (
	"fmt"
	"io"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
)

// ReportVersion is the version of the JSON report; fields are only ever
// added within a version.
const ReportVersion = 1

// Status values of a report.
const (
	StatusClean       = "clean"
	StatusCorrected   = "corrected"
	StatusUncorrected = "uncorrected"
)

// Exit codes, as fsck(8).
const (
	ExitClean       = 0
	ExitCorrected   = 1
	ExitUncorrected = 4
	ExitOperational = 8
)

// FindingReport is one finding in a report.
type FindingReport struct {
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	Block    uint64 `json:"block"`
	Detail   string `json:"detail"`
	Repaired bool   `json:"repaired"`
}

// RebuildReport describes one online rebuild.
type RebuildReport struct {
	Structure  string  `json:"structure"`
	Gen        uint64  `json:"generation"`
	Records    uint64  `json:"records"`
	Events     uint64  `json:"live_updates"`
	NewBlocks  uint64  `json:"new_blocks"`
	OldBlocks  uint64  `json:"old_blocks"`
	DurationS  float64 `json:"duration_s"`
	PauseMs    float64 `json:"writer_pause_ms"`
	XfileBytes int64   `json:"xfile_bytes"`
}

// StructureReport is what one structure's check found.
type StructureReport struct {
	Name     string          `json:"name"`
	Checked  uint64          `json:"checked"`
	Found    int             `json:"found"`
	Repaired int             `json:"repaired"`
	Root     uint64          `json:"root,omitempty"`
	Level    int             `json:"level"`
	Blocks   uint64          `json:"blocks"`
	Findings []FindingReport `json:"findings"`
}

// Report is the result of one check run.
type Report struct {
	Version    int               `json:"version"`
	Mode       string            `json:"mode"` // "offline" or "online"
	Target     string            `json:"target"`
	Status     string            `json:"status"`
	Found      int               `json:"found"`
	Repaired   int               `json:"repaired"`
	DurationS  float64           `json:"duration_s"`
	Generation uint64            `json:"generation"`
	Complete   bool              `json:"complete"`
	Started    time.Time         `json:"started"`
	Structures []StructureReport `json:"structures"`
	Rebuilds   []RebuildReport   `json:"rebuilds,omitempty"`
	Notes      []string          `json:"notes,omitempty"`
}

// markRepaired compares the findings before repair with those the second
// check still sees: per structure, what is no longer found was repaired.
func (r *Report) markRepaired(before, left []engine.Finding) {
	leftBy := map[string][]engine.Finding{}
	for _, f := range left {
		leftBy[structureName(f.Tree)] = append(leftBy[structureName(f.Tree)], f)
	}
	r.Repaired = 0
	for i := range r.Structures {
		s := &r.Structures[i]
		still := len(leftBy[s.Name])
		s.Repaired = max(0, s.Found-still)
		if still == 0 {
			for j := range s.Findings {
				s.Findings[j].Repaired = true
			}
		}
		r.Repaired += s.Repaired
		if extra := still - s.Found; extra > 0 {
			// Findings the first check did not have: count and list them.
			for _, f := range leftBy[s.Name][len(leftBy[s.Name])-extra:] {
				s.Findings = append(s.Findings, FindingReport{ID: uint32(f.ID), Name: f.Name, Block: uint64(f.Block), Detail: "after repair: " + f.Detail})
			}
			s.Found += extra
			r.Found += extra
		}
	}
	switch {
	case len(left) > 0:
		r.Status = StatusUncorrected
	case r.Found > 0:
		r.Status = StatusCorrected
	default:
		r.Status = StatusClean
	}
}

// ExitCode maps the report to an fsck(8) exit code.
func (r *Report) ExitCode() int {
	switch r.Status {
	case StatusClean:
		return ExitClean
	case StatusCorrected:
		return ExitCorrected
	}
	return ExitUncorrected
}

// structureName names the structure a finding belongs to.
func structureName(t format.TreeID) string {
	if t == format.OwnerSuper {
		return "superblock"
	}
	return t.String()
}

// newReport builds a report from a check result and its findings.
func newReport(mode, target string, started time.Time, res *engine.CheckResult, fs []engine.Finding) *Report {
	r := &Report{Version: ReportVersion, Mode: mode, Target: target, Started: started,
		DurationS: time.Since(started).Seconds(), Found: len(fs), Structures: []StructureReport{}}
	byName := map[string]*StructureReport{}
	get := func(name string) *StructureReport {
		if s, ok := byName[name]; ok {
			return s
		}
		r.Structures = append(r.Structures, StructureReport{Name: name, Findings: []FindingReport{}})
		s := &r.Structures[len(r.Structures)-1]
		byName[name] = s
		return s
	}
	// Pointers into r.Structures stay valid: all structures are added
	// before findings are attached.
	sup := get("superblock")
	if res != nil {
		sup.Checked, sup.Blocks = uint64(res.SuperCopies), uint64(res.SuperCopies)
		r.Generation = uint64(res.Gen)
		r.Complete = res.Complete
		for _, tc := range res.Trees {
			s := get(structureName(tc.Tree))
			s.Checked, s.Root, s.Level, s.Blocks = tc.Items, uint64(tc.Root), tc.Level, tc.Blocks
		}
	}
	for _, f := range fs {
		if _, ok := byName[structureName(f.Tree)]; !ok {
			get(structureName(f.Tree))
		}
	}
	byName = map[string]*StructureReport{}
	for i := range r.Structures {
		byName[r.Structures[i].Name] = &r.Structures[i]
	}
	for _, f := range fs {
		s := byName[structureName(f.Tree)]
		s.Found++
		s.Findings = append(s.Findings, FindingReport{ID: uint32(f.ID), Name: f.Name, Block: uint64(f.Block), Detail: f.Detail})
	}
	r.Status = StatusClean
	if r.Found > 0 {
		r.Status = StatusUncorrected
	}
	return r
}

// WriteSummary prints the one-screen human summary.
func (r *Report) WriteSummary(w io.Writer) {
	fmt.Fprintf(w, "%s check of %s, generation %d: %s\n", r.Mode, r.Target, r.Generation, r.Status)
	for _, s := range r.Structures {
		mark := "ok"
		if s.Found > 0 {
			mark = fmt.Sprintf("%d found", s.Found)
			if s.Repaired > 0 {
				mark += fmt.Sprintf(", %d repaired", s.Repaired)
			}
		}
		fmt.Fprintf(w, "  %-12s %10d items %8d blocks  %s\n", s.Name, s.Checked, s.Blocks, mark)
	}
	const maxShown = 20
	shown := 0
	for _, s := range r.Structures {
		for _, f := range s.Findings {
			if shown < maxShown {
				fmt.Fprintf(w, "  %s block %d: %s: %s\n", s.Name, f.Block, f.Name, f.Detail)
			}
			shown++
		}
	}
	if shown > maxShown {
		fmt.Fprintf(w, "  ... %d more findings (--json lists all)\n", shown-maxShown)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	if !r.Complete && r.Status == StatusUncorrected {
		fmt.Fprintln(w, "  damage hid part of the metadata: cross-reference checks that need all of it were skipped")
	}
	fmt.Fprintf(w, "%d found, %d repaired in %.2fs\n", r.Found, r.Repaired, r.DurationS)
}
