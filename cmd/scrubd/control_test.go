package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/daemon"
)

// statusOf runs "scrubd status DIR --json".
func statusOf(t *testing.T, dir string) statusDoc {
	t.Helper()
	var st statusDoc
	out := expect(t, 0, "status", dir, "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Status == nil || st.Version != jsonVersion {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// TestScrubBackgroundControl, through the CLI and a real FUSE mount: a
// background data scrub returns at once; pause holds it (status says
// paused, its progress stands still), resume lets it finish (percent
// never backwards, ≤ 100), and status shows the last run clean; cancel
// ends a run with its partial report; pause, resume and cancel with
// nothing running exit 1 naming why; --background on an image is a usage
// error; status prints people's text too.
func TestScrubBackgroundControl(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := filepath.Join(t.TempDir(), "fs.img")
	expect(t, 0, "mkfs", img, "--size", "128M")
	dir := t.TempDir()
	startMount(t, img, dir, "--commit-interval", "-1s")
	writeSynced(t, filepath.Join(dir, "big"), bytes.Repeat([]byte("0123456789abcdef"), 2<<20), 0) // 32 MiB

	for _, verb := range []string{"pause", "resume", "cancel"} {
		_, errs, code := run(t, verb, dir)
		if code != 1 || !strings.Contains(errs, "no scrub is running") {
			t.Fatalf("%s with nothing running: exit %d, %q", verb, code, errs)
		}
	}
	expect(t, 16, "scrub", img, "--background")
	expect(t, 16, "scrub", dir, "--rate", "fast")

	paused := false
	for try := 0; try < 5 && !paused; try++ {
		out := expect(t, 0, "scrub", dir, "--data", "--background", "--rate", "64M") // the data scrub outruns a CLI round trip unlimited: a pause then finds it finished (exit 1, "already finished")
		if !strings.Contains(out, "scrub started in the background") {
			t.Fatalf("scrub --background printed %q", out)
		}
		_, errs, code := run(t, "pause", dir)
		paused = code == 0
		if !paused && !strings.Contains(errs, "already finished") && !strings.Contains(errs, "no scrub is running") {
			t.Fatalf("pause of a scrub that finished first: exit %d, %q", code, errs)
		}
		if !paused {
			// It finished first: wait for idle and try again.
			for statusOf(t, dir).State != "idle" {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	if !paused {
		t.Fatal("could not pause a background scrub in 5 tries")
	}
	st := statusOf(t, dir)
	if st.State != "paused" || st.Progress == nil {
		t.Fatalf("status after pause: %+v", st.Status)
	}
	time.Sleep(100 * time.Millisecond)
	if st2 := statusOf(t, dir); st2.Progress == nil || st2.Progress.Done != st.Progress.Done {
		t.Fatalf("paused scrub moved: %+v then %+v", st.Progress, st2.Progress)
	}
	out := expect(t, 0, "status", dir)
	if !strings.Contains(out, "scrub       paused:") || !strings.Contains(out, "STRUCTURE") {
		t.Fatalf("status:\n%s", out)
	}
	t.Logf("status of a paused scrub:\n%s", out)
	expect(t, 0, "resume", dir)
	last := -1.0
	for {
		st = statusOf(t, dir)
		if st.State == "idle" {
			break
		}
		if p := st.Progress; p.Percent < last || p.Percent > 100 {
			t.Fatalf("progress from %.1f%% to %+v", last, p)
		} else {
			last = p.Percent
		}
		time.Sleep(2 * time.Millisecond)
	}
	if l := st.LastScrub; l == nil || l.Status != "clean" || !l.Data || l.Report == nil || l.Report.BytesVerified < 32<<20 {
		t.Fatalf("last scrub: %+v", st.LastScrub)
	}

	// Cancel a running scrub.
	cancelled := false
	for try := 0; try < 5 && !cancelled; try++ {
		expect(t, 0, "scrub", dir, "--data", "--background", "--rate", "64M") // slow enough to be running still
		_, errs, code := run(t, "cancel", dir)
		cancelled = code == 0 // a cancel that came too late says so (exit 1): the run finished, not interrupted
		if !cancelled {
			if !strings.Contains(errs, "already finished") && !strings.Contains(errs, "no scrub is running") {
				t.Fatalf("cancel of a scrub that finished first: exit %d, %q", code, errs)
			}
			for statusOf(t, dir).State != "idle" {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	if !cancelled {
		t.Fatal("could not cancel a background scrub in 5 tries")
	}
	for st = statusOf(t, dir); st.State != "idle"; st = statusOf(t, dir) {
		time.Sleep(5 * time.Millisecond)
	}
	if l := st.LastScrub; l == nil || !l.Interrupted || l.Report == nil || l.Report.Complete {
		t.Fatalf("last scrub after cancel: %+v", st.LastScrub)
	}
	if !daemon.IsServed(dir) {
		t.Fatal("the mount went away")
	}
	expect(t, 0, "scrub", dir, "--data")
}

// TestMountSchedules: the schedule flags reach the daemon (status names
// each schedule and the next run); a bad expression, and --repair without
// a schedule, are usage errors naming the flag, before anything is
// mounted.
func TestMountSchedules(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := mkfs(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--schedule", "61 * * * *"}, "--schedule"},
		{[]string{"--schedule-data", "@sometimes"}, "--schedule-data"},
		{[]string{"--repair"}, "--repair applies to scheduled scrubs"},
		{[]string{"--notify-webhook", "ftp://example.com/x"}, "--notify-webhook"},
		{[]string{"--rate", "fast"}, "--rate"},
	} {
		_, errs, code := run(t, append([]string{"mount", img, dir}, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.msg) {
			t.Fatalf("mount %v: exit %d, %q", c.args, code, errs)
		}
	}
	// A metrics address that cannot be listened on fails the mount,
	// which leaves nothing mounted.
	if _, errs, code := run(t, "mount", img, dir, "--metrics", "256.1.1.1:1"); code != 1 || !strings.Contains(errs, "metrics") || isMountpoint(t, dir) {
		t.Fatalf("mount --metrics on a bad address: exit %d, %q", code, errs)
	}
	startMount(t, img, dir, "--schedule", "@every 1h", "--schedule-data", "0 3 * * 0", "--repair")
	st := statusOf(t, dir)
	// Status lists schedules soonest first, so which comes first depends
	// on the clock (on Sundays before 03:00 the weekly one does): find
	// each by its expression.
	specs := map[string]daemon.ScheduleStatus{}
	for _, sc := range st.Schedules {
		specs[sc.Spec] = sc
	}
	hourly, weekly := specs["@every 1h"], specs["0 3 * * 0"]
	if len(st.Schedules) != 2 || st.NextScrub == nil || !hourly.Repair || hourly.Data || !weekly.Data || !weekly.Repair {
		t.Fatalf("schedules in status: %+v", st.Schedules)
	}
	if !st.Schedules[0].Next.Before(st.Schedules[1].Next) && !st.Schedules[0].Next.Equal(st.Schedules[1].Next) {
		t.Fatalf("schedules not soonest first: %+v", st.Schedules)
	}
	if d := time.Until(*st.NextScrub); d <= 0 || d > time.Hour+time.Minute {
		t.Fatalf("next scrub in %v", d)
	}
	out := expect(t, 0, "status", dir)
	if !strings.Contains(out, `schedule    "@every 1h" (metadata, repair): next`) {
		t.Fatalf("status:\n%s", out)
	}
}

// TestReportHistory: every run a mount makes is kept and survives the
// remount; the mount rotates by --history-keep; offline runs are kept
// too; report --list --json lists them newest first, --last and --id
// show one; a TARGET may be the mountpoint, the image or the UUID.
func TestReportHistory(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	t.Setenv("SCRUBD_STATE_DIR", t.TempDir())
	img := mkfs(t)
	dir := t.TempDir()
	p := startMount(t, img, dir, "--history-keep", "3")
	for i := 0; i < 4; i++ {
		args := []string{"scrub", dir}
		if i == 3 {
			args = append(args, "--data")
		}
		expect(t, 0, args...)
	}
	var list struct {
		Version int    `json:"version"`
		UUID    string `json:"uuid"`
		Reports []struct {
			ID     string `json:"id"`
			Mode   string `json:"mode"`
			Data   bool   `json:"data"`
			Status string `json:"status"`
		} `json:"reports"`
	}
	if err := json.Unmarshal([]byte(expect(t, 0, "report", dir, "--list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if list.Version != 1 || len(list.Reports) != 3 || !list.Reports[0].Data || list.Reports[1].Data || list.Reports[0].Mode != "online" {
		t.Fatalf("list after 4 runs, keep 3: %+v", list)
	}
	newest := list.Reports[0].ID
	if rep := parseReport(t, expect(t, 0, "report", dir, "--json")); rep.Status != "clean" || rep.Mode != "online" {
		t.Fatalf("report --json (last): %+v", rep)
	}
	var h healthDoc
	if err := json.Unmarshal([]byte(expect(t, 0, "health", dir, "--json")), &h); err != nil || h.Source != "mount" || len(h.Structures) < 13 || h.Structures[0].State != "healthy" {
		t.Fatalf("health of the mount: %v %+v", err, h)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("mount exit %d", code)
	}
	// Unmounted: by image and by UUID; an offline fsck joins the list.
	if out := expect(t, 0, "report", img, "--id", newest); !strings.Contains(out, "run "+newest) {
		t.Fatalf("report --id:\n%s", out)
	}
	expect(t, 0, "fsck", img)
	if err := json.Unmarshal([]byte(expect(t, 0, "report", list.UUID, "--list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Reports) != 4 || list.Reports[0].Mode != "offline" || list.Reports[1].ID != newest {
		t.Fatalf("list after an offline fsck: %+v", list)
	}
	if out := expect(t, 0, "report", img, "--list"); !strings.Contains(out, "STATUS") || !strings.Contains(out, newest) {
		t.Fatalf("report --list:\n%s", out)
	}
	_, errs, code := run(t, "report", img, "--id", "20200101T000000.000000000Z")
	if code != 1 || !strings.Contains(errs, "no such report") {
		t.Fatalf("unknown id: %d %q", code, errs)
	}
	// Health of the unmounted image, from its newest report: damage an
	// unrepaired fsck found makes a structure sick (exit 4).
	if out := expect(t, 0, "health", img); !strings.Contains(out, "from the report of run") {
		t.Fatalf("health of the image:\n%s", out)
	}
	expect(t, 0, "inject", img, "--tree", "csum", "--kind", "bitflip")
	expect(t, 4, "fsck", img)
	h = healthDoc{}
	if err := json.Unmarshal([]byte(expect(t, 4, "health", img, "--json")), &h); err != nil || h.Source != "report" {
		t.Fatalf("health after damage: %v %+v", err, h)
	}
	sick := ""
	for _, s := range h.Structures {
		if s.State == "sick" {
			sick += s.Name
		}
	}
	if sick != "csum" {
		t.Fatalf("sick structures %q, want csum: %+v", sick, h.Structures)
	}
	if _, _, code := run(t, "report", img, "--list", "--last"); code != 2 {
		t.Fatalf("--list --last: exit %d, want 2", code)
	}
	if _, _, code := run(t, "mount", img, dir, "--history-keep", "0"); code != 2 {
		t.Fatalf("--history-keep 0: exit %d, want 2", code)
	}
}

// TestScrubProgressLines: a foreground scrub whose stderr is not a
// terminal prints plain progress lines (phase, percent, counts) every
// --progress-interval, online and offline, and nothing but the report
// with --json.
func TestScrubProgressLines(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	img := filepath.Join(t.TempDir(), "fs.img")
	expect(t, 0, "mkfs", img, "--size", "128M")
	dir := t.TempDir()
	p := startMount(t, img, dir, "--commit-interval", "-1s")
	writeSynced(t, filepath.Join(dir, "big"), bytes.Repeat([]byte("0123456789abcdef"), 2<<20), 0) // 32 MiB
	out, errs, code := run(t, "scrub", dir, "--data", "--progress-interval", "1ms")
	if code != 0 || !strings.Contains(errs, "scrubd: scrub ") || !strings.Contains(errs, "%") || strings.Contains(out, "scrubd: scrub ") {
		t.Fatalf("online scrub with progress: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	_, errs, code = run(t, "scrub", dir, "--data", "--json", "--progress-interval", "1ms")
	if code != 0 || errs != "" {
		t.Fatalf("scrub --json printed on stderr: %q", errs)
	}
	p.signal(syscall.SIGTERM)
	p.wait()
	_, errs, code = run(t, "scrub", img, "--data", "--progress-interval", "1ms")
	// The data scrub runs beside the check (phase "check and data"), then
	// alone ("data") if it outlasts the check.
	if code != 0 || !(strings.Contains(errs, "scrubd: scrub data") || strings.Contains(errs, "scrubd: scrub check and data")) {
		t.Fatalf("offline scrub with progress: exit %d\nstderr:\n%s", code, errs)
	}
}

// TestScrubResumesAfterKill: a data scrub running on a mount killed with
// SIGKILL resumes at the next mount from its cursor (kept in the image),
// and its report covers every byte exactly once: the bytes verified before
// the kill plus those after are the files' sizes, and it says it resumed.
func TestScrubResumesAfterKill(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	t.Setenv("SCRUBD_STATE_DIR", t.TempDir())
	img := filepath.Join(t.TempDir(), "fs.img")
	expect(t, 0, "mkfs", img, "--size", "256M")
	dir := t.TempDir()
	args := []string{"--commit-interval", "200ms", "--rate", "auto,24M"}
	p := startMount(t, img, dir, args...)
	var total uint64
	for i := 0; i < 12; i++ {
		data := bytes.Repeat([]byte{byte(i + 1)}, 8<<20)
		writeSynced(t, filepath.Join(dir, fmt.Sprintf("f%02d", i)), data, 0)
		total += uint64(len(data))
	}
	// 96 MiB at 24 MB/s: about 4 s. Kill it past a third, once a cursor
	// (every 2 s) has had a commit (every 200 ms) to land in.
	expect(t, 0, "scrub", dir, "--data", "--background", "--rate", "24M")
	for {
		st := statusOf(t, dir)
		if st.Progress == nil {
			t.Fatalf("the scrub ended before the kill: %+v", st.LastScrub)
		}
		if st.Progress.Phase == "data" && st.Progress.ElapsedS > 2.6 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.cmd.Process.Kill()
	p.wait()
	lazyUnmount(dir)

	p = startMount(t, img, dir, args...)
	var st statusDoc
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st = statusOf(t, dir)
		if st.State == "idle" && st.LastScrub != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resumed scrub finished: %+v", st.Status)
		}
	}
	l := st.LastScrub
	if l.Status != "clean" || !strings.HasPrefix(l.Trigger, "resume (run of ") || l.Report == nil || l.Report.Resumed == nil {
		t.Fatalf("resumed run: %+v", l)
	}
	r := l.Report
	if r.Resumed.VerifiedBefore == 0 || r.Resumed.VerifiedBefore >= total || r.BytesVerified != total {
		t.Fatalf("resumed from inode %d with %d bytes verified before; %d in all, want %d exactly", r.Resumed.FromInode, r.Resumed.VerifiedBefore, r.BytesVerified, total)
	}
	t.Logf("killed after %d of %d bytes; resumed from inode %d", r.Resumed.VerifiedBefore, total, r.Resumed.FromInode)
	// The cursor is gone: a remount starts nothing.
	p.signal(syscall.SIGTERM)
	p.wait()
	p = startMount(t, img, dir, args...)
	time.Sleep(300 * time.Millisecond)
	if st := statusOf(t, dir); st.State != "idle" || (st.LastScrub != nil) {
		t.Fatalf("a scrub ran after a complete one: %+v", st.Status)
	}
}

// TestScrubIncremental: after a complete data scrub, --incremental reads
// only what was written since (the report names the scope and the
// generation), --errors re-reads only the last run's bad blocks (none
// here), and the three flags are usage errors without --data or together.
func TestScrubIncremental(t *testing.T) {
	needFuse(t)
	privateRuntimeDir(t)
	t.Setenv("SCRUBD_STATE_DIR", t.TempDir())
	img := filepath.Join(t.TempDir(), "fs.img")
	expect(t, 0, "mkfs", img, "--size", "128M")
	dir := t.TempDir()
	startMount(t, img, dir, "--commit-interval", "-1s")
	for i := 0; i < 300; i++ {
		writeSynced(t, filepath.Join(dir, fmt.Sprintf("f%03d", i)), bytes.Repeat([]byte{byte(i)}, 64<<10), 0)
	}
	full := parseReport(t, expect(t, 0, "scrub", dir, "--data", "--json"))
	writeSynced(t, filepath.Join(dir, "zz-new"), bytes.Repeat([]byte("n"), 1<<20), 0)
	var inc struct {
		Requested struct {
			Since  uint64 `json:"since"`
			Errors bool   `json:"errors"`
		} `json:"requested"`
		Scope         string   `json:"scope"`
		BytesVerified uint64   `json:"bytes_verified"`
		Notes         []string `json:"notes"`
		Status        string   `json:"status"`
	}
	if err := json.Unmarshal([]byte(expect(t, 0, "scrub", dir, "--data", "--incremental", "--json")), &inc); err != nil {
		t.Fatal(err)
	}
	if inc.Requested.Since == 0 || inc.Scope == "" || inc.BytesVerified < 1<<20 || inc.BytesVerified >= full.BytesVerified/2 {
		t.Fatalf("incremental after a full scrub of %d bytes: %+v", full.BytesVerified, inc)
	}
	inc.Scope, inc.BytesVerified = "", 1
	if err := json.Unmarshal([]byte(expect(t, 0, "scrub", dir, "--data", "--errors", "--json")), &inc); err != nil {
		t.Fatal(err)
	}
	if !inc.Requested.Errors || inc.BytesVerified != 0 || inc.Status != "clean" {
		t.Fatalf("--errors with no bad block: %+v", inc)
	}
	for _, a := range [][]string{{"--since", "5"}, {"--incremental"}, {"--data", "--incremental", "--errors"}} {
		expect(t, 16, append([]string{"scrub", dir}, a...)...)
	}
}
