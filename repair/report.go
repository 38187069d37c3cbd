package repair

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dustin/go-humanize"

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

// FindingReport is one finding in a report. A data finding also says
// which file, where in it, and which disk block.
type FindingReport struct {
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	Block    uint64 `json:"block"`
	Detail   string `json:"detail"`
	Repaired bool   `json:"repaired"`
	// Severity is "corrupt" for damage in the structure's own blocks or
	// records, "xref" for a disagreement with another structure.
	Severity  string  `json:"severity"`
	Path      string  `json:"path,omitempty"`
	Inode     uint64  `json:"inode,omitempty"`
	Offset    *uint64 `json:"offset,omitempty"`
	DiskBlock *uint64 `json:"disk_block,omitempty"`
}

// findingReport turns a finding into its report form.
func findingReport(f engine.Finding) FindingReport {
	r := FindingReport{ID: uint32(f.ID), Name: f.Name, Block: uint64(f.Block), Detail: f.Detail, Severity: "xref"}
	if walkDamage(f.ID) || f.ID == engine.ErrDataChecksum || f.ID == engine.ErrSuperCopyBad || f.ID == engine.ErrSuperCopyStale {
		r.Severity = "corrupt"
	}
	if fr := f.File; fr != nil {
		off, db := fr.Offset, uint64(fr.DiskBlock)
		r.Path, r.Inode, r.Offset, r.DiskBlock = fr.Path, fr.Inode, &off, &db
		r.Block = db
	}
	return r
}

// Requested says what a run was asked to do.
type Requested struct {
	Repair bool `json:"repair"`
	Data   bool `json:"data"`
	// Since: only the data written after this generation was read.
	Since uint64 `json:"since,omitempty"`
	// Errors: only the blocks the last run found bad were read.
	Errors bool `json:"errors,omitempty"`
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
	// Action says what the repair did when it rebuilt no tree ("fixed
	// link counts"); empty for a rebuild.
	Action string `json:"action,omitempty"`
	// Changes lists what the repair changed that an operator must know
	// of, one line each (a link count set, a file moved to lost+found).
	Changes []string `json:"changes,omitempty"`
	// Unverified lists the data extents whose checksums a csum rebuild
	// computed again from the data as it is now (their records were lost
	// with the damage): that data is protected again from here on, but
	// nothing proved it was the data written.
	Unverified []UnverifiedRange `json:"unverified,omitempty"`
	// Reconstructed lists the inodes an inode rebuild made again from
	// what still names them (directory entries, file extents, the deleted
	// list): their items were lost with the damage. Each names the fields
	// nothing recorded, which were set to a safe default.
	Reconstructed []ReconstructedInode `json:"reconstructed,omitempty"`
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
	Version int `json:"version"`
	// ScrubdVersion is the version of the scrubd that wrote the report.
	ScrubdVersion string `json:"scrubd_version"`
	Mode          string `json:"mode"` // "offline" or "online"
	Target        string `json:"target"`
	// UUID and Label name the filesystem checked.
	UUID      string    `json:"uuid,omitempty"`
	Label     string    `json:"label"`
	Requested Requested `json:"requested"`
	// BytesVerified counts the file data read and verified (with data).
	BytesVerified uint64            `json:"bytes_verified"`
	Status        string            `json:"status"`
	Found         int               `json:"found"`
	Repaired      int               `json:"repaired"`
	DurationS     float64           `json:"duration_s"`
	Generation    uint64            `json:"generation"`
	Complete      bool              `json:"complete"`
	Started       time.Time         `json:"started"`
	Structures    []StructureReport `json:"structures"`
	Rebuilds      []RebuildReport   `json:"rebuilds,omitempty"`
	Notes         []string          `json:"notes,omitempty"`
	// Interrupted says the run was canceled before it finished: the
	// report holds what was checked until then, and Complete is false.
	Interrupted bool `json:"interrupted,omitempty"`
	// Scope says what part of the file data the run read, when not all
	// of it (--since, --incremental, --errors).
	Scope string `json:"scope,omitempty"`
	// Resumed says the run continued the data scrub of an interrupted one
	// (whose start it names) from its cursor: the files before it were
	// not read again, and their bad blocks are reported again.
	Resumed *Resumed `json:"resumed,omitempty"`
	// ThroughputBytesS is how fast the data scrub verified file data:
	// the bytes it read and verified a second of its own time (the
	// metadata check's time not counted; 0 without data).
	ThroughputBytesS float64 `json:"throughput_bytes_s,omitempty"`
}

// Resumed describes the interrupted run a scrub continued.
type Resumed struct {
	RunStarted     time.Time `json:"run_started"`
	FromInode      uint64    `json:"from_inode"`
	VerifiedBefore uint64    `json:"verified_before"`

	// FromDiskBlock is the disk block the data scrub resumed at (a run
	// that read in disk order; 0 for one that read by inode).
	FromDiskBlock uint64 `json:"from_disk_block,omitempty"`
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
				fr := findingReport(f)
				fr.Detail = "after repair: " + fr.Detail
				s.Findings = append(s.Findings, fr)
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

// addSelfRepaired adds the findings the engine repaired on its own during
// the run, those not already among known (same id, tree and block), as
// found and repaired.
func (r *Report) addSelfRepaired(fs, known []engine.Finding) {
	for _, f := range fs {
		if slices.ContainsFunc(known, func(k engine.Finding) bool {
			return k.ID == f.ID && k.Tree == f.Tree && k.Block == f.Block
		}) {
			continue
		}
		name := structureName(f.Tree)
		i := slices.IndexFunc(r.Structures, func(s StructureReport) bool { return s.Name == name })
		if i < 0 {
			r.Structures = append(r.Structures, StructureReport{Name: name, Findings: []FindingReport{}})
			i = len(r.Structures) - 1
		}
		fr := findingReport(f)
		fr.Repaired = true
		s := &r.Structures[i]
		s.Findings = append(s.Findings, fr)
		s.Found++
		s.Repaired++
		r.Found++
		r.Repaired++
		if r.Status == StatusClean {
			r.Status = StatusCorrected
		}
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
	if op := opOfTree(t); op != nil {
		return op.Name
	}
	return t.String()
}

// newReport builds a report from a check result and its findings.
func newReport(mode, target string, started time.Time, res *engine.CheckResult, fs []engine.Finding) *Report {
	r := &Report{Version: ReportVersion, ScrubdVersion: VersionString(), Mode: mode, Target: target, Started: started,
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
		s.Findings = append(s.Findings, findingReport(f))
	}
	r.Status = StatusClean
	if r.Found > 0 {
		r.Status = StatusUncorrected
	}
	return r
}

// WriteSummary prints the one-screen human summary: a line saying what was
// checked and the outcome, a table of the structures, the findings (the
// first 20: the JSON report lists all), the notes, and a closing count.
func (r *Report) WriteSummary(w io.Writer) {
	what := "check"
	if r.Requested.Repair {
		what = "check and repair"
	}
	fs := ""
	if r.UUID != "" {
		fs = " (filesystem " + r.UUID
		if r.Label != "" {
			fs += fmt.Sprintf(" %q", r.Label)
		}
		fs += ")"
	}
	fmt.Fprintf(w, "%s %s of %s%s, generation %d: %s\n", r.Mode, what, r.Target, fs, r.Generation, r.Status)
	rows := [][]string{{"STRUCTURE", "ITEMS", "BLOCKS", "STATUS"}}
	for _, s := range r.Structures {
		mark := "ok"
		if s.Found > 0 {
			mark = fmt.Sprintf("%d found", s.Found)
			if s.Repaired > 0 {
				mark += fmt.Sprintf(", %d repaired", s.Repaired)
			}
		}
		rows = append(rows, []string{s.Name, humanize.Comma(int64(s.Checked)), humanize.Comma(int64(s.Blocks)), mark})
	}
	writeTable(w, "  ", rows, 1, 2)
	const maxShown = 20
	shown := 0
	for _, s := range r.Structures {
		for _, f := range s.Findings {
			if shown < maxShown {
				if f.Path != "" {
					fmt.Fprintf(w, "  %s %s offset %d (inode %d, disk block %d): %s: %s\n", s.Name, f.Path, *f.Offset, f.Inode, *f.DiskBlock, f.Name, f.Detail)
				} else {
					fmt.Fprintf(w, "  %s block %d: %s: %s\n", s.Name, f.Block, f.Name, f.Detail)
				}
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
	if r.Interrupted {
		fmt.Fprintln(w, "  interrupted: this is what was checked until then")
	} else if !r.Complete && r.Status == StatusUncorrected {
		fmt.Fprintln(w, "  damage hid part of the metadata: cross-reference checks that need all of it were skipped")
	}
	took := time.Duration(r.DurationS * float64(time.Second))
	if took >= time.Second {
		took = took.Round(time.Millisecond)
	} else {
		took = took.Round(10 * time.Microsecond)
	}
	fmt.Fprintf(w, "%d found, %d repaired in %s", r.Found, r.Repaired, took)
	if r.Requested.Data {
		fmt.Fprintf(w, "; %s of file data verified", humanize.IBytes(r.BytesVerified))
		if r.DurationS > 0 {
			fmt.Fprintf(w, " (%s/s)", humanize.IBytes(uint64(float64(r.BytesVerified)/r.DurationS)))
		}
		if r.ThroughputBytesS > 0 {
			fmt.Fprintf(w, ", the data scrub at %s/s", humanize.IBytes(uint64(r.ThroughputBytesS)))
		}
	}
	fmt.Fprintln(w)
}

// writeTable prints rows as aligned columns, each line led by indent: the
// columns numbered from right-aligned to last right-aligned (numbers)
// align right, the others left.
func writeTable(w io.Writer, indent string, rows [][]string, right, lastRight int) {
	var width []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		b.Reset()
		b.WriteString(indent)
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if i >= right && i <= lastRight {
				b.WriteString(pad + c)
			} else if i < len(r)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

// structure returns the report of the structure named name, or nil.
func (r *Report) structure(name string) *StructureReport {
	for i := range r.Structures {
		if r.Structures[i].Name == name {
			return &r.Structures[i]
		}
	}
	return nil
}
