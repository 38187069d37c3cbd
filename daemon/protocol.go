package daemon

import (
	"errors"
	"time"

	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// ProtocolVersion is the version of the control protocol; fields are only
// ever added within a version.
const ProtocolVersion = 1

// MaxRequest bounds one request line, newline excluded.
const MaxRequest = 64 << 10

// maxResponse bounds one response line a client reads (a report lists
// every finding, so it may be long, but not unboundedly).
const maxResponse = 64 << 20

// Operations.
const (
	OpStatus = "status"
	OpScrub  = "scrub"
	OpInject = "inject"
	OpPause  = "pause"  // pause the running scrub
	OpResume = "resume" // resume a paused scrub
	OpCancel = "cancel" // stop the running scrub (its partial report is kept as the last run)
)

// Request is one line a client sends.
type Request struct {
	Op string `json:"op"`
	// scrub
	Repair bool `json:"repair,omitempty"`
	Data   bool `json:"data,omitempty"`
	// Rate limits the scrub's data reads (repair.ParseRate: "auto",
	// "200M", "auto,200M"; "": none).
	Rate string `json:"rate,omitempty"`
	// Since reads only the data written after that generation;
	// Incremental since the last complete data scrub; Errors only the
	// blocks the last data scrub found bad. With Data only.
	Since       uint64 `json:"since,omitempty"`
	Incremental bool   `json:"incremental,omitempty"`
	Errors      bool   `json:"errors,omitempty"`
	// Background starts the scrub and answers at once with the status;
	// status, pause, resume and cancel follow it.
	Background bool `json:"background,omitempty"`
	// inject
	Tree string `json:"tree,omitempty"`
	Kind string `json:"kind,omitempty"`
	Seed uint64 `json:"seed,omitempty"`
	// Level, for inject, damages a node of that level only (0: a leaf).
	Level *int `json:"level,omitempty"`
	// Copy, for inject with tree "superblock", names the copy (its
	// block); File and Offset damage the data block holding that byte of
	// the file at that path instead of a tree.
	Copy   *uint64 `json:"copy,omitempty"`
	File   string  `json:"file,omitempty"`
	Offset uint64  `json:"offset,omitempty"`
	// Path, UUID and Wait are the subvolume ops' (subvol.go): a path of
	// the filesystem from its top level, a UUID, and for delete, waiting
	// until its space is freed.
	Path string `json:"path,omitempty"`
	UUID string `json:"uuid,omitempty"`
	Wait bool   `json:"wait,omitempty"`
	// Dest and ReadOnly are subvol_snapshot's: the path of the snapshot
	// to make (Path is its source), read-only or not. Wait, for a
	// snapshot, waits until its fill has ended.
	Dest     string `json:"dest,omitempty"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

// Response is one line the server answers; exactly one field is set.
type Response struct {
	Report *repair.Report `json:"report,omitempty"`
	Inject *inject.Result `json:"inject,omitempty"`
	Status *Status        `json:"status,omitempty"`
	Subvol *SubvolResult  `json:"subvol,omitempty"`
	Error  string         `json:"error,omitempty"`
	Code   string         `json:"code,omitempty"`
}

// Error codes of a Response.
const (
	CodeBadRequest = "bad_request" // malformed, too long, unknown op or field, bad argument
	CodeBusy       = "busy"        // another scrub or inject is running
	CodeFailed     = "failed"      // the operation ran and failed
	CodeDenied     = "denied"      // the peer is another user
	CodeClosing    = "closing"     // the server is shutting down
	CodeIdle       = "idle"        // pause, resume or cancel with no scrub running (or resume of one not paused)
)

// Status describes the mount a server controls.
type Status struct {
	Protocol   int       `json:"protocol"`
	PID        int       `json:"pid"`
	Image      string    `json:"image"`
	Mountpoint string    `json:"mountpoint"`
	UUID       string    `json:"uuid"` // the filesystem's
	Started    time.Time `json:"started"`
	// Generation is the last committed generation.
	Generation  uint64 `json:"generation"`
	TotalBlocks uint64 `json:"total_blocks"`
	FreeBlocks  uint64 `json:"free_blocks"`
	Commits     uint64 `json:"commits"`
	// CommitHoldMs is how long the last commit held writers out;
	// CommitHoldMaxMs the longest since mount. CommitWriteMs and
	// CommitWriteMaxMs time the write-outs (writers run meanwhile).
	CommitHoldMs     float64 `json:"commit_hold_ms"`
	CommitHoldMaxMs  float64 `json:"commit_hold_max_ms"`
	CommitWriteMs    float64 `json:"commit_write_ms"`
	CommitWriteMaxMs float64 `json:"commit_write_max_ms"`
	// WriterHoldMaxMs is the longest hold of the engine's writer lock
	// since mount, whoever held it: the longest any write waited for it.
	WriterHoldMaxMs float64 `json:"writer_hold_max_ms"`
	// RmapSick is set while the reverse-mapping tree is known damaged
	// (the mount runs degraded until a repair rebuilds it).
	RmapSick bool `json:"rmap_sick"`
	// Health is every structure's health, in the ops table's order.
	Health   []StructureHealth `json:"health"`
	ReadOnly bool              `json:"read_only"`
	// Aborted says why the engine refuses writes, if it aborted a
	// transaction.
	Aborted     string `json:"aborted,omitempty"`
	ReadErrors  uint64 `json:"read_errors"`
	WriteErrors uint64 `json:"write_errors"`
	CsumErrors  uint64 `json:"csum_errors"`
	// UnverifiedReads counts data blocks served without verification
	// since mount: damage to the csum tree hid their checksums.
	UnverifiedReads uint64 `json:"unverified_reads"`
	FsyncLogged     uint64 `json:"fsync_logged"`
	FsyncFull       uint64 `json:"fsync_full"`
	Running         string `json:"running,omitempty"` // "scrub" or "inject" while one runs
	// State is the scrub's: "idle", "running" or "paused".
	State string `json:"state"`
	// Progress is the running scrub's: absent when idle, and absent too
	// in the moments a run is "running" but not yet started or already
	// ended (claimed and not yet begun, or making its report).
	Progress  *repair.ScrubProgress `json:"progress,omitempty"`
	LastScrub *Last                 `json:"last_scrub,omitempty"`
	// Schedules are the mount's scheduled scrubs, soonest first;
	// NextScrub is the soonest's next run (absent without schedules).
	Schedules []ScheduleStatus `json:"schedules,omitempty"`
	NextScrub *time.Time       `json:"next_scrub,omitempty"`
	// Notify counts the notifications (absent when none are set up).
	Notify *NotifyStats `json:"notify,omitempty"`
	// AutoRepairs counts the repairs AutoRepair started (absent
	// without it).
	AutoRepairs  *uint64 `json:"auto_repairs,omitempty"`
	ScrubsServed uint64  `json:"scrubs"`
}

// StructureHealth is one structure's health in Status.
type StructureHealth struct {
	Name  string `json:"name"`
	State string `json:"state"` // "healthy", "sick" or "unchecked"
	// Generation and CheckedAt say when it was last checked (or found
	// damaged in use); zero and null while unchecked.
	Generation uint64     `json:"generation"`
	CheckedAt  *time.Time `json:"checked_at"`
	// Findings are the ids of the findings that made it sick.
	Findings []uint32 `json:"findings,omitempty"`
}

// Last summarizes the last scrub the server ran.
type Last struct {
	Finished  time.Time `json:"finished"`
	Repair    bool      `json:"repair"`
	Data      bool      `json:"data"`
	Status    string    `json:"status"` // a report status, or "failed"
	Found     int       `json:"found"`
	Repaired  int       `json:"repaired"`
	DurationS float64   `json:"duration_s"`
	Error     string    `json:"error,omitempty"`
	// ReportID is the run's id in the history ("scrubd report --id").
	ReportID string `json:"report_id,omitempty"`
	// Trigger says who started the run: "request" or "schedule SPEC".
	Trigger string `json:"trigger,omitempty"`
	// Interrupted: the run was cancelled; Found counts what it saw.
	Interrupted bool `json:"interrupted,omitempty"`
	// Report is the last run's full report (absent if it failed before
	// making one).
	Report *repair.Report `json:"report,omitempty"`
}

// ErrBusy is matched (errors.Is) by a RemoteError refused because another
// scrub or inject is running.
var ErrBusy = errors.New("scrub already running")

// RemoteError is an error the server answered.
type RemoteError struct {
	Msg  string
	Code string
}

func (e *RemoteError) Error() string { return e.Msg }

// Is matches ErrBusy for busy refusals.
func (e *RemoteError) Is(target error) bool { return target == ErrBusy && e.Code == CodeBusy }
