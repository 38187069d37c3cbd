package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	sfs "github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/history"
	"github.com/scrubd/scrubd/hooks"
	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// Options configure a control server.
type Options struct {
	// Image is the image the mount serves, as status reports it.
	Image string
	// TempDir is where repairs put their xfiles ("": anonymous memory).
	TempDir string
	// Logger receives one line per request and operational problems
	// (default: discard).
	Logger *slog.Logger
	// MaxConns bounds the connections served at once (0: 16); more are
	// answered "busy" and closed.
	MaxConns int
	// Schedules start background scrubs at their times (see
	// schedule.go); Serve refuses one that does not parse.
	Schedules []Schedule
	// Clock is the scheduler's time (nil: the system's).
	Clock Clock
	// HistoryDir is where every run's report is kept (history.Open's
	// root; "": history.DefaultDir()); NoHistory keeps none.
	// HistoryKeep and HistoryMaxAge rotate it (0: the defaults).
	HistoryDir    string
	NoHistory     bool
	HistoryKeep   int
	HistoryMaxAge time.Duration
	// Notify says where to tell of damage found or repaired, failed runs
	// and structures going sick (none if both are empty).
	Notify NotifyOptions
	// MetricsAddr, if set, is where /metrics is served (Prometheus text
	// format), e.g. "127.0.0.1:9417"; Serve fails if it cannot listen.
	MetricsAddr string
	// AutoRepair runs a scrub with repair as soon as a structure goes
	// sick outside a repairing scrub (see autorepair.go).
	AutoRepair bool
	// ScheduleRate limits the data reads of the runs the server starts
	// itself (scheduled and auto-repair; repair.ParseRate; "": "auto").
	ScheduleRate string
}

// writeTimeout bounds writing one response: a client that stops reading
// does not hold a connection slot for ever.
const writeTimeout = 30 * time.Second

// Server serves the control API of one mount.
type Server struct {
	fsys       *sfs.FS
	mountpoint string // absolute, symlinks resolved
	path       string // the socket
	opts       Options
	log        *slog.Logger
	ln         *net.UnixListener
	lnInfo     os.FileInfo // the socket file we made, to remove only that
	started    time.Time

	ctx    context.Context // cancelled by Close: every request's parent
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and the connections

	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]struct{}
	uid     int    // the uid peers must have
	running string // "scrub" or "inject" while one runs
	last    *Last
	scrubs  uint64
	ctl     *repair.ScrubControl // the running scrub's
	// repairing: the running scrub repairs (its own findings' health
	// events need no auto-repair).
	repairing bool
	bg        sync.WaitGroup // the background scrub
	scheds    []*scheduled
	notify    *notifier
	metrics   *metrics
	auto      *autoRepair
	uuid      string
	sickH     *hooks.Handle

	// afterScrub, if set (tests, before the scrub starts), is called
	// when a scrub's work has ended, before the run is recorded.
	afterScrub func()

	closeOnce sync.Once
	closeErr  error
}

// Serve starts serving the control API of fsys, mounted on mountpoint, on
// SocketPath(mountpoint) (symlinks in mountpoint resolved). It returns
// once the socket accepts connections. The server runs until Close, or
// until ctx is cancelled; either way running requests are cancelled and
// the socket is removed. The caller keeps fsys, and closes it only after
// Close returns.
func Serve(ctx context.Context, fsys *sfs.FS, mountpoint string, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 16
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.ScheduleRate == "" {
		opts.ScheduleRate = "auto"
	}
	if _, err := repair.ParseRate(opts.ScheduleRate); err != nil {
		return nil, err
	}
	var scheds []*scheduled
	for _, sc := range opts.Schedules {
		cs, err := ParseSchedule(sc.Spec)
		if err != nil {
			return nil, err
		}
		scheds = append(scheds, &scheduled{ScheduleStatus: ScheduleStatus{Schedule: sc, Next: cs.Next(opts.Clock.Now())}, sched: cs})
	}
	mnt, err := resolve(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("control socket for %s: %w", mountpoint, err)
	}
	path := SocketPath(mnt)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control socket %s: path longer than %d bytes (set XDG_RUNTIME_DIR to a shorter directory)", path, maxSocketPath)
	}
	if err := ensureSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // Close removes it, and only if it is still ours
	// The directory is 0700, so nobody else could reach the socket while
	// it had the umask's permissions.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{
		fsys: fsys, mountpoint: mnt, path: path, opts: opts, log: opts.Logger,
		ln: ln, lnInfo: fi, started: time.Now(), uid: os.Geteuid(),
		conns: map[net.Conn]struct{}{}, scheds: scheds,
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	pin := fsys.Engine().Pin()
	s.uuid = pin.Super().FSID.String()
	pin.Release()
	if opts.Notify.Exec != "" || opts.Notify.Webhook != "" {
		s.notify = newNotifier(opts.Notify, s.log)
		s.notify.start(s.ctx)
		s.sickH = fsys.Engine().Hooks().Health.Register(func(ev engine.HealthEvent) {
			s.notify.send(Event{Version: 1, Event: "sick", Time: time.Now().UTC(), UUID: s.uuid, Mountpoint: s.mountpoint,
				Image: s.opts.Image, Structure: ev.Structure.Name(), Generation: uint64(ev.Gen), Findings: findingNames(ev.Findings)})
		})
	}
	if opts.AutoRepair {
		s.startAutoRepair()
	}
	var resume *engine.ScrubCursor
	if c, ok, err := fsys.Engine().ScrubCursor(); err != nil {
		s.log.Warn("scrub cursor unreadable: not resuming", "err", err)
	} else if ok && c.Data {
		resume = &c
	}
	if opts.MetricsAddr != "" {
		s.metrics = newMetrics(s)
		if err := s.metrics.serve(opts.MetricsAddr, s.log); err != nil {
			s.cancel()
			if s.notify != nil {
				fsys.Engine().Hooks().Health.Unregister(s.sickH)
				s.notify.wg.Wait()
			}
			s.stopAutoRepair()
			ln.Close()
			os.Remove(path)
			return nil, err
		}
		s.log.Info("metrics served", "addr", s.metrics.ln.Addr().String())
	}
	s.wg.Add(1)
	go s.acceptLoop()
	if len(scheds) > 0 {
		s.wg.Add(1)
		go s.runSchedules()
	}
	go func() {
		<-s.ctx.Done()
		s.shutdown()
	}()
	s.log.Info("control socket ready", "socket", path, "mountpoint", mnt)
	if resume != nil {
		// The interrupted run goes on, now that the server serves.
		started := time.Unix(0, resume.Run).UTC().Format(time.RFC3339)
		if _, err := s.startBackgroundFrom(Request{Op: OpScrub, Repair: resume.Repair, Data: true, Background: true, Rate: s.opts.ScheduleRate},
			"resume (run of "+started+")", resume); err != nil {
			s.log.Warn("interrupted scrub not resumed", "err", err)
		} else {
			s.log.Info("resuming an interrupted scrub", "run", started, "from_inode", resume.NextIno)
		}
	}
	return s, nil
}

// MetricsAddr returns the address /metrics is served on ("" if none).
func (s *Server) MetricsAddr() string {
	if s.metrics == nil || s.metrics.ln == nil {
		return ""
	}
	return s.metrics.ln.Addr().String()
}

// SocketPath returns the socket the server listens on.
func (s *Server) SocketPath() string { return s.path }

// Mountpoint returns the mountpoint as the server names it (absolute,
// symlinks resolved).
func (s *Server) Mountpoint() string { return s.mountpoint }

// Close stops serving: it stops accepting, cancels running requests,
// closes every connection, waits for their handlers, and removes the
// socket. It is safe to call more than once and concurrently.
func (s *Server) Close() error {
	s.cancel()
	s.shutdown()
	return s.closeErr
}

func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		lerr := s.ln.Close()
		// A background scrub ends with the cancelled context (resumed
		// first, if paused).
		s.mu.Lock()
		if s.ctl != nil {
			s.ctl.Cancel()
		}
		s.mu.Unlock()
		s.stopAutoRepair()
		s.bg.Wait()
		if s.metrics != nil {
			s.metrics.close()
		}
		if s.notify != nil {
			s.fsys.Engine().Hooks().Health.Unregister(s.sickH)
			s.notify.wg.Wait()
		}
		// Connections are closed by their handlers, which the cancelled
		// context wakes; a handler blocked reading is woken by closing.
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
		var rerr error
		if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.lnInfo) {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				rerr = err
			}
		}
		if lerr != nil && errors.Is(lerr, net.ErrClosed) {
			lerr = nil
		}
		s.closeErr = errors.Join(lerr, rerr)
		s.log.Info("control socket closed", "socket", s.path)
	})
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("control socket: accept", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		if err := s.checkPeer(c); err != nil {
			s.log.Warn("control socket: connection refused", "err", err)
			s.reply(c, errResponse(CodeDenied, "permission denied"))
			c.Close()
			continue
		}
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			c.Close()
			continue
		case len(s.conns) >= s.opts.MaxConns:
			s.mu.Unlock()
			s.reply(c, errResponse(CodeBusy, "too many connections"))
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

// checkPeer refuses a peer whose uid is not the server's.
func (s *Server) checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	s.mu.Lock()
	uid := s.uid
	s.mu.Unlock()
	if int(cred.Uid) != uid {
		return fmt.Errorf("peer pid %d has uid %d, want %d", cred.Pid, cred.Uid, uid)
	}
	return nil
}

// line is one request line read, or why reading stopped.
type line struct {
	b   []byte
	err error
}

var errTooLong = errors.New("line too long")

// handle serves one connection: requests are answered in order; a
// reader goroutine watches the connection meanwhile, so a client that
// goes away cancels the request it left running.
func (s *Server) handle(c *net.UnixConn) {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	lines := make(chan line)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		br := bufio.NewReaderSize(c, 4096)
		for {
			b, err := readLine(br, MaxRequest)
			if err != nil && !errors.Is(err, errTooLong) {
				close(lines)
				if errors.Is(err, io.EOF) {
					// No more requests. A client that only closed its
					// writing half still waits for the answers; one
					// that hung up entirely does not.
					watchHangup(ctx, c, cancel)
				} else {
					cancel()
				}
				return
			}
			select {
			case lines <- line{b, err}:
			case <-ctx.Done():
				close(lines)
				return
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	defer func() {
		cancel()
		c.Close()
		<-readerDone
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	for {
		var l line
		var ok bool
		select {
		case l, ok = <-lines:
		case <-ctx.Done():
			return
		}
		if !ok {
			return
		}
		if l.err != nil {
			s.reply(c, errResponse(CodeBadRequest, fmt.Sprintf("request longer than %d bytes", MaxRequest)))
			return
		}
		if len(bytes.TrimSpace(l.b)) == 0 {
			continue
		}
		resp := s.do(ctx, l.b)
		if ctx.Err() != nil && s.ctx.Err() != nil && resp.Error != "" {
			resp = errResponse(CodeClosing, "server shutting down: "+resp.Error)
		}
		if err := s.reply(c, resp); err != nil {
			return
		}
	}
}

// hangupPoll is how often a connection whose client has stopped sending
// is checked for a hangup.
const hangupPoll = 100 * time.Millisecond

// watchHangup calls cancel once the peer of c has closed the connection
// entirely (POLLHUP: both directions shut), or returns when ctx ends.
func watchHangup(ctx context.Context, c *net.UnixConn, cancel context.CancelFunc) {
	t := time.NewTicker(hangupPoll)
	defer t.Stop()
	for {
		if peerGone(c) {
			cancel()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// peerGone reports whether the peer of c has hung up (or c is closed).
func peerGone(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return true
	}
	gone := true
	if err := raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		gone = err == nil && n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	}); err != nil {
		return true
	}
	return gone
}

// readLine reads one line of at most max bytes (newline excluded).
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max+1 {
			return nil, errTooLong
		}
		buf = append(buf, frag...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err // a partial last line is dropped with the connection
		}
	}
}

func (s *Server) reply(c net.Conn, r Response) error {
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(errResponse(CodeFailed, "encode response: "+err.Error()))
	}
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = c.Write(append(b, '\n'))
	return err
}

func errResponse(code, msg string) Response { return Response{Error: msg, Code: code} }

// do carries out one request.
func (s *Server) do(ctx context.Context, b []byte) Response {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errResponse(CodeBadRequest, "bad request: "+err.Error())
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errResponse(CodeBadRequest, "bad request: more than one JSON value on the line")
	}
	started := time.Now()
	var resp Response
	switch req.Op {
	case OpStatus:
		st := s.Status()
		resp.Status = &st
	case OpScrub:
		resp = s.scrub(ctx, req)
	case OpInject:
		resp = s.inject(req)
	case OpPause, OpResume, OpCancel:
		resp = s.control(req)
	case OpSubvolCreate, OpSubvolList, OpSubvolShow, OpSubvolDelete, OpSubvolFind, OpSubvolSetReceived, OpSubvolSnapshot:
		resp = s.subvol(ctx, req)
	default:
		return errResponse(CodeBadRequest, fmt.Sprintf("unknown op %q (ops: %s, %s, %s, %s, %s, %s, %s)", req.Op,
			OpStatus, OpScrub, OpInject, OpPause, OpResume, OpCancel, strings.Join(SubvolOps, ", ")))
	}
	lvl := slog.LevelInfo
	if req.Op == OpStatus {
		lvl = slog.LevelDebug
	}
	s.log.Log(ctx, lvl, "control request", "op", req.Op, "repair", req.Repair, "data", req.Data,
		"took", time.Since(started), "err", resp.Error)
	return resp
}

// begin claims the one maintenance slot for op.
func (s *Server) begin(op string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running != "" {
		return &RemoteError{Msg: s.running + " already running", Code: CodeBusy}
	}
	s.running = op
	return nil
}

func (s *Server) end() {
	s.mu.Lock()
	s.running = ""
	s.mu.Unlock()
}

func (s *Server) scrub(ctx context.Context, req Request) Response {
	if req.Tree != "" || req.Kind != "" || req.Seed != 0 || req.Level != nil {
		return errResponse(CodeBadRequest, "scrub takes repair, data, rate and background only")
	}
	if _, err := repair.ParseRate(req.Rate); err != nil {
		return errResponse(CodeBadRequest, "scrub: "+err.Error())
	}
	if n := btoi(req.Since != 0) + btoi(req.Incremental) + btoi(req.Errors); n > 1 || (n == 1 && !req.Data) {
		return errResponse(CodeBadRequest, "scrub: since, incremental and errors limit the data scrub: give one of them, with data")
	}
	if req.Background {
		st, err := s.startBackground(req, "request")
		if err != nil {
			return errResponse(CodeBusy, err.Error())
		}
		return Response{Status: st}
	}
	if err := s.begin(OpScrub); err != nil {
		return errResponse(CodeBusy, err.Error())
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctl := repair.NewScrubControl(cancel)
	s.mu.Lock()
	s.ctl, s.repairing = ctl, req.Repair
	s.mu.Unlock()
	rep, err := s.runScrub(rctx, req, ctl, "request")
	if err != nil {
		if rep != nil && rep.Interrupted && ctx.Err() == nil {
			// Cancelled from another connection: the partial report.
			return Response{Report: rep}
		}
		return errResponse(CodeFailed, "scrub: "+err.Error())
	}
	return Response{Report: rep}
}

// startBackground starts a scrub that belongs to the server, not to a
// connection: it ends with Close (or cancel), not when a client hangs
// up. It fails (busy) if a scrub or injection runs.
func (s *Server) startBackground(req Request, trigger string) (*Status, error) {
	return s.startBackgroundFrom(req, trigger, nil)
}

// startBackgroundFrom is startBackground resuming from a cursor.
func (s *Server) startBackgroundFrom(req Request, trigger string, resume *engine.ScrubCursor) (*Status, error) {
	if err := s.begin(OpScrub); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(s.ctx)
	ctl := repair.NewScrubControl(cancel)
	s.mu.Lock()
	s.ctl, s.repairing = ctl, req.Repair
	s.mu.Unlock()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		defer cancel()
		s.runScrubFrom(rctx, req, ctl, trigger, resume)
	}()
	st := s.Status()
	return &st, nil
}

// runScrub runs one scrub under ctl, records it as the last run, and
// frees the maintenance slot.
func (s *Server) runScrub(ctx context.Context, req Request, ctl *repair.ScrubControl, trigger string) (*repair.Report, error) {
	return s.runScrubFrom(ctx, req, ctl, trigger, nil)
}

// scope resolves an incremental or errors-only request against the
// history into opts, and returns the note the report gets ("" if none).
func (s *Server) scope(req Request, opts *repair.ScrubOptions) string {
	if !req.Incremental && !req.Errors {
		return ""
	}
	hs, err := history.Open(s.opts.HistoryDir, s.uuid)
	var note string
	if err == nil {
		opts.Since, opts.Errors, opts.OnlyErrors, note, err = hs.Scope(req.Incremental, req.Errors)
	}
	if err != nil {
		s.log.Warn("history unreadable: the scrub reads all the data", "err", err)
		opts.Since, opts.Errors, opts.OnlyErrors = 0, nil, false
		return "the history could not be read (" + err.Error() + "): this scrub reads all the data"
	}
	return note
}

// finished records a run that ended as the last one, keeps its report,
// counts it, notifies, and logs it.
func (s *Server) finished(req Request, trigger string, started time.Time, rep *repair.Report, err error) {
	last := &Last{Finished: time.Now(), Repair: req.Repair, Data: req.Data, DurationS: time.Since(started).Seconds(), Report: rep, Trigger: trigger}
	if rep != nil {
		last.ReportID = s.keep(rep)
	}
	switch {
	case rep != nil && rep.Interrupted:
		last.Status, last.Interrupted, last.Found, last.Repaired = "interrupted", true, rep.Found, rep.Repaired
	case err != nil:
		last.Status, last.Error = "failed", err.Error()
	default:
		last.Status, last.Found, last.Repaired = rep.Status, rep.Found, rep.Repaired
	}
	s.mu.Lock()
	s.last = last
	s.scrubs++
	s.ctl, s.repairing = nil, false
	s.mu.Unlock()
	if s.metrics != nil {
		s.metrics.observe(last)
	}
	if s.notify != nil && !last.Interrupted && (last.Error != "" || last.Found > 0 || last.Repaired > 0) {
		s.notify.send(Event{Version: 1, Event: "scrub", Time: time.Now().UTC(), UUID: s.uuid, Mountpoint: s.mountpoint,
			Image: s.opts.Image, Status: last.Status, Trigger: trigger, Report: rep, Error: last.Error})
	}
	s.log.Info("scrub finished", "status", last.Status, "found", last.Found, "repaired", last.Repaired,
		"background", req.Background, "took", time.Since(started), "err", last.Error)
}

// cursorEvery spaces the scrub cursor's updates.
const cursorEvery = 2 * time.Second

// runScrubFrom is runScrub resuming the data scrub of an interrupted run
// from its cursor (nil: from the start).
func (s *Server) runScrubFrom(ctx context.Context, req Request, ctl *repair.ScrubControl, trigger string, resume *engine.ScrubCursor) (*repair.Report, error) {
	defer s.end()
	if r, err := repair.ParseRate(req.Rate); err == nil {
		r.Activity = s.fsys.Activity
		ctl.SetRate(r)
	}
	started := time.Now()
	e := s.fsys.Engine()
	run := started.UnixNano()
	if resume != nil {
		run = resume.Run
	}
	var lastCP time.Time
	checkpoint := func(c engine.ScrubCursor) {
		// Into the running transaction, every 2 s: the next commit makes
		// it durable (a kill loses at most the files read since).
		if time.Since(lastCP) < cursorEvery {
			return
		}
		lastCP = time.Now()
		c.Run, c.Repair, c.Data = run, req.Repair, req.Data
		if err := e.Update(func(tx *engine.Tx) error { return tx.SetScrubCursor(c) }); err != nil && !errors.Is(err, engine.ErrNoCursorFormat) {
			s.log.Warn("scrub cursor not saved", "err", err)
		}
	}
	opts := repair.ScrubOptions{
		Repair: req.Repair, Data: req.Data, TempDir: s.opts.TempDir, Logger: s.log, Mode: "online", Control: ctl,
		Resume: resume, Since: req.Since,
	}
	scopeNote := s.scope(req, &opts)
	if req.Data && req.Since == 0 && !req.Incremental && !req.Errors {
		// Scoped runs are short and not resumed.
		opts.Checkpoint = checkpoint
	}
	rep, err := repair.Scrub(ctx, s.fsys, s.mountpoint, opts)
	if s.afterScrub != nil {
		s.afterScrub() // tests: the run held between its work and its record
	}
	if rep != nil && scopeNote != "" {
		rep.Notes = append(rep.Notes, scopeNote)
	}
	if req.Data && s.ctx.Err() == nil {
		// The run ended (or was cancelled on request): nothing to resume.
		// At shutdown the cursor stays, for the next mount.
		if _, ok, _ := e.ScrubCursor(); ok || resume != nil {
			if cerr := e.Update(func(tx *engine.Tx) error { return tx.ClearScrubCursor() }); cerr != nil {
				s.log.Warn("scrub cursor not cleared", "err", cerr)
			}
		}
	}
	s.finished(req, trigger, started, rep, err)
	return rep, err
}

// keep saves rep in the history and returns its id ("" if not kept: no
// history, or saving failed, which is logged).
func (s *Server) keep(rep *repair.Report) string {
	if s.opts.NoHistory {
		return ""
	}
	st, err := history.Open(s.opts.HistoryDir, rep.UUID)
	if err == nil {
		st.Keep, st.MaxAge = s.opts.HistoryKeep, s.opts.HistoryMaxAge
		var id string
		if id, err = st.Save(rep); err == nil {
			return id
		}
	}
	s.log.Warn("scrub report not kept in the history", "err", err)
	return ""
}

// control pauses, resumes or cancels the running scrub.
func (s *Server) control(req Request) Response {
	if req.Repair || req.Data || req.Background || req.Rate != "" || req.Since != 0 || req.Incremental || req.Errors ||
		req.Tree != "" || req.Kind != "" || req.Seed != 0 || req.Level != nil {
		return errResponse(CodeBadRequest, req.Op+" takes no arguments")
	}
	s.mu.Lock()
	ctl := s.ctl
	s.mu.Unlock()
	if ctl == nil {
		return errResponse(CodeIdle, "no scrub is running")
	}
	switch req.Op {
	case OpPause:
		if !ctl.Pause() {
			if ended, outcome := ctl.Ended(); ended {
				return errResponse(CodeIdle, alreadyFinished(outcome))
			}
			return errResponse(CodeIdle, "the scrub is paused already")
		}
	case OpResume:
		if !ctl.Resume() {
			if ended, outcome := ctl.Ended(); ended {
				return errResponse(CodeIdle, alreadyFinished(outcome))
			}
			return errResponse(CodeIdle, "the scrub is not paused")
		}
	case OpCancel:
		if !ctl.Cancel() {
			_, outcome := ctl.Ended()
			return errResponse(CodeIdle, alreadyFinished(outcome))
		}
	}
	s.log.Info("scrub "+req.Op, "by", "request")
	st := s.Status()
	return Response{Status: &st}
}

// alreadyFinished answers a pause, resume or cancel that came after the
// running scrub's work ended (it is making or recording its report): too
// late to hold or stop it, so the answer is that of an idle mount, with
// the run's outcome ("clean", "corrected", ..., "" while not yet known).
// Status's last_scrub shows the run once it is recorded.
func alreadyFinished(outcome string) string {
	if outcome == "" {
		return "the scrub already finished its work (its report is being made)"
	}
	return "the scrub already finished: " + outcome
}

func (s *Server) inject(req Request) Response {
	if req.Repair || req.Data || req.Rate != "" || req.Background || req.Since != 0 || req.Incremental || req.Errors {
		return errResponse(CodeBadRequest, "inject takes tree (or file and offset), kind, seed, level and copy only")
	}
	opts := inject.Options{Kind: req.Kind, Seed: req.Seed, Level: req.Level, File: req.File, Offset: req.Offset}
	switch {
	case req.File != "":
		if req.Tree != "" {
			return errResponse(CodeBadRequest, "inject: a file or a tree, not both")
		}
	case req.Tree == inject.Superblock:
		opts.Tree = format.OwnerSuper
	default:
		tree, ok := format.TreeByName(req.Tree)
		if !ok {
			return errResponse(CodeBadRequest, fmt.Sprintf("inject: unknown tree %q", req.Tree))
		}
		opts.Tree = tree
	}
	if req.Copy != nil {
		c := format.BlockNr(*req.Copy)
		opts.Copy = &c
	}
	if !slices.Contains(inject.Kinds, req.Kind) {
		return errResponse(CodeBadRequest, fmt.Sprintf("inject: unknown kind %q (kinds: %v)", req.Kind, inject.Kinds))
	}
	if err := s.begin(OpInject); err != nil {
		return errResponse(CodeBusy, err.Error())
	}
	defer s.end()
	res, err := inject.Online(s.fsys.Engine(), opts)
	if err != nil {
		return errResponse(CodeFailed, "inject: "+err.Error())
	}
	s.log.Warn("injected damage on request", "tree", res.Tree, "kind", res.Kind, "block", res.Block, "detail", res.Detail)
	return Response{Inject: res}
}

// Status describes the mount now.
func (s *Server) Status() Status {
	e := s.fsys.Engine()
	snap := e.Pin()
	gen := uint64(snap.Gen())
	uuid := snap.Super().FSID.String()
	snap.Release()
	es := e.Stats()
	fst := s.fsys.Stats()
	ro, aborted := e.ReadOnly()
	st := Status{
		Protocol: ProtocolVersion, PID: os.Getpid(), Image: s.opts.Image, Mountpoint: s.mountpoint, UUID: uuid,
		Started: s.started, Generation: gen, TotalBlocks: e.TotalBlocks(), FreeBlocks: es.FreeBlocks,
		Commits: es.Commits, RmapSick: e.RmapSick(), ReadOnly: ro,
		ReadErrors: es.ReadErrors, WriteErrors: es.WriteErrors, CsumErrors: es.CsumErrors,
		FsyncLogged: fst.FsyncLogged, FsyncFull: fst.FsyncFull, UnverifiedReads: fst.UnverifiedReads,
		CommitHoldMs: ms(es.CommitHold), CommitHoldMaxMs: ms(es.CommitHoldMax),
		CommitWriteMs: ms(es.CommitWrite), CommitWriteMaxMs: ms(es.CommitWriteMax),
		WriterHoldMaxMs: ms(es.WriterHoldMax),
	}
	for _, h := range e.Health() {
		sh := StructureHealth{Name: h.Structure.Name(), State: h.State.String(), Generation: uint64(h.Gen)}
		if h.State != engine.Unchecked {
			t := h.CheckedAt.UTC()
			sh.CheckedAt = &t
		}
		for _, id := range h.Findings {
			sh.Findings = append(sh.Findings, uint32(id))
		}
		st.Health = append(st.Health, sh)
	}
	if aborted != nil {
		st.Aborted = aborted.Error()
	}
	s.mu.Lock()
	st.Running = s.running
	st.State = "idle"
	if s.running == OpScrub {
		// Claimed and not yet started, or finished and not yet
		// released: not idle (a new scrub would be refused as busy).
		st.State = "running"
	}
	if s.ctl != nil {
		p := s.ctl.Progress()
		st.Progress = &p
		st.State = "running"
		if p.Paused {
			st.State = "paused"
		}
	}
	if s.last != nil {
		l := *s.last
		st.LastScrub = &l
	}
	st.Schedules, st.NextScrub = s.scheduleStatus()
	if s.notify != nil {
		ns := s.notify.stats()
		st.Notify = &ns
	}
	if s.auto != nil {
		s.auto.mu.Lock()
		n := s.auto.runs
		s.auto.mu.Unlock()
		st.AutoRepairs = &n
	}
	st.ScrubsServed = s.scrubs
	s.mu.Unlock()
	return st
}

// btoi is 1 for true.
func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
