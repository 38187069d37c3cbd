package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bench is one run of the command: its configuration, the things it made
// (undone by cleanup, last first) and the rows measured.
type bench struct {
	cfg config
	ctx context.Context

	dir    string // the temporary directory
	bin    string // the scrubd binary
	self   string // this command's binary, for the helper modes
	undo   []undoStep
	undoMu sync.Mutex

	images map[string]string // fs name -> image file
	loops  map[string]string // fs name -> loop device
	mnts   map[string]string // fs name -> mountpoint (the loopbacks too)
	server map[string]*server

	content contentStats
	rows    []*row
	notes   []string
	header  header
}

type undoStep struct {
	what string
	fn   func() error
}

// later registers fn to run at clean-up, before the steps registered earlier.
func (b *bench) later(what string, fn func() error) {
	b.undoMu.Lock()
	b.undo = append(b.undo, undoStep{what, fn})
	b.undoMu.Unlock()
}

// cleanup runs the undo steps, last first; a failed step does not stop the
// others.
func (b *bench) cleanup() error {
	b.undoMu.Lock()
	steps := b.undo
	b.undo = nil
	b.undoMu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].what, err))
		}
	}
	return errors.Join(errs...)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compare: "+format+"\n", args...)
}

// sh runs an untimed setup command; its output is returned with the error.
func (b *bench) sh(name string, args ...string) (string, error) {
	return runQuiet(b.ctx, name, args...)
}

func runQuiet(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(string(out), 3))
	}
	return string(out), nil
}

// cleanupCmd runs a clean-up command, which must run even after Ctrl-C.
func cleanupCmd(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := runQuiet(ctx, name, args...)
	return err
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// sample is one measured run.
type sample struct {
	Wall   float64 `json:"wall_s"`
	CPU    float64 `json:"cpu_s"`
	MaxRSS int64   `json:"peak_kib"`
	// KthreadCPU is the CPU time kernel threads (loop devices,
	// writeback, btrfs workers, kworkers) used during the run, whoever
	// for: on a shared machine it includes others' share.
	KthreadCPU float64 `json:"kthread_cpu_s"`
	Metric     float64 `json:"metric,omitempty"`
	Bytes      int64   `json:"bytes,omitempty"`
}

// spec is one command to measure.
type spec struct {
	label  string   // what the table calls it
	argv   []string // the command
	dir    string   // its working directory
	server *server  // the FUSE server behind the target, whose CPU and peak memory are counted too
	pre    func() error
	post   func() error
	// metric turns the command's stdout and the sample into the row's
	// metric (a throughput or a rate); nil for none.
	metric    func(out []byte, s *sample) error
	dropCache bool
	okStatus  []int // exit statuses besides 0 that are not failures
}

// measure runs s once: a global sync, pre, (drop caches), the command,
// post. The sync settles every filesystem first, so that no run pays
// for the writeback another left behind (the peers' loop devices and
// scrubd's image share the host's disk and page cache: the fio files
// written before the first run, or a peer's last run, would otherwise
// still be written back during the next).
func (b *bench) measure(s spec) (sample, error) {
	var sm sample
	syscall.Sync()
	if s.pre != nil {
		if err := s.pre(); err != nil {
			return sm, fmt.Errorf("%s: before: %w", s.label, err)
		}
	}
	if s.dropCache && b.cfg.dropCaches {
		if err := dropCaches(); err != nil {
			return sm, err
		}
	}
	var before procStat
	if s.server != nil {
		if err := resetPeak(s.server.pid()); err != nil {
			return sm, err
		}
		var err error
		if before, err = readProcStat(s.server.pid()); err != nil {
			return sm, err
		}
	}
	kbefore := kthreadCPU()
	cmd := exec.CommandContext(b.ctx, s.argv[0], s.argv[1:]...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	start := time.Now()
	err := cmd.Run()
	sm.Wall = time.Since(start).Seconds()
	for pid, t := range kthreadCPU() {
		sm.KthreadCPU += t - kbefore[pid]
	}
	if b.ctx.Err() != nil {
		return sm, b.ctx.Err()
	}
	if err != nil {
		var ee *exec.ExitError
		ok := false
		if errors.As(err, &ee) {
			for _, st := range s.okStatus {
				ok = ok || ee.ExitCode() == st
			}
		}
		if !ok {
			return sm, fmt.Errorf("%s: %s: %w: %s", s.label, strings.Join(s.argv, " "), err, lastLines(errb.String()+out.String(), 4))
		}
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		sm.CPU = tv(ru.Utime) + tv(ru.Stime)
		sm.MaxRSS = ru.Maxrss
	}
	if s.server != nil {
		after, err := readProcStat(s.server.pid())
		if err != nil {
			return sm, err
		}
		sm.CPU += after.cpu - before.cpu
		sm.MaxRSS += after.hwmKiB
	}
	if s.metric != nil {
		if err := s.metric(out.Bytes(), &sm); err != nil {
			return sm, fmt.Errorf("%s: reading its output: %w", s.label, err)
		}
	}
	if s.post != nil {
		if err := s.post(); err != nil {
			return sm, fmt.Errorf("%s: after: %w", s.label, err)
		}
	}
	return sm, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// procStat is a process's CPU time so far and its peak resident set.
type procStat struct {
	cpu    float64
	hwmKiB int64
}

// kthreadCPU returns the CPU time of every kernel thread, by pid.
func kthreadCPU() map[int]float64 {
	out := map[int]float64{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(raw, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(raw[i+1:]))
		if len(f) < 13 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		const pfKthread = 0x00200000
		if flags&pfKthread == 0 {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		out[pid] = (ut + st) / clkTck
	}
	return out
}

// clkTck is USER_HZ, the unit of /proc/PID/stat's times (100 on Linux).
const clkTck = 100

func readProcStat(pid int) (procStat, error) {
	var ps procStat
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return ps, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	// After the command: state(3) ... utime(14) stime(15).
	if len(f) < 13 {
		return ps, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return ps, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	ps.cpu = (ut + st) / clkTck
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			ps.hwmKiB, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return ps, nil
}

// resetPeak resets a process's peak resident set (VmHWM) to its current one.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5\n"), 0)
}

// server is a FUSE server process the command started (scrubd mount or
// the loopback).
type server struct {
	name string
	mnt  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
	mu   sync.Mutex
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

type lockedWriter struct{ s *server }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.log.Write(p)
}

// startServer starts a FUSE server and waits until its output has a line
// starting with ready (it prints it once the mount is up).
func (b *bench) startServer(name, mnt, ready string, argv ...string) (*server, error) {
	s := &server{name: name, mnt: mnt, done: make(chan struct{}), log: &bytes.Buffer{}}
	// Not CommandContext: the server is stopped by stopServer, in order,
	// also after Ctrl-C.
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	s.cmd.Stdout = pw
	s.cmd.Stderr = lockedWriter{s}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	readyc := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			lockedWriter{s}.Write(append(sc.Bytes(), '\n'))
			if !sent && strings.HasPrefix(sc.Text(), ready) {
				readyc <- true
				sent = true
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		s.cmd.Wait()
		pw.Close()
		close(s.done)
	}()
	b.later("stop "+name, func() error { return stopServer(s) })
	select {
	case <-readyc:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("%s exited before mounting: %s", name, lastLines(s.output(), 4))
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("%s did not mount in 2 minutes: %s", name, lastLines(s.output(), 4))
	case <-b.ctx.Done():
		return nil, b.ctx.Err()
	}
}

// stopServer unmounts a server's mount by signalling it (both servers
// unmount on SIGTERM), waits for it, and falls back to fusermount3 -u and
// SIGKILL.
func stopServer(s *server) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(3 * time.Minute):
		cleanupCmd("fusermount3", "-u", "-z", s.mnt)
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not stop on SIGTERM; killed", s.name)
	}
	if st := s.cmd.ProcessState; st != nil && !st.Success() {
		return fmt.Errorf("%s exited with %v: %s", s.name, st, lastLines(s.output(), 3))
	}
	return nil
}

// mkdir makes a directory under the temporary directory.
func (b *bench) mkdir(parts ...string) (string, error) {
	p := filepath.Join(append([]string{b.dir}, parts...)...)
	return p, os.MkdirAll(p, 0o755)
}
