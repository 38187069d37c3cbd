package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/repair"
)

// Notifications: a scrub that found damage, repaired some or failed, and
// a structure going sick (damage met in normal I/O, or a scrub's
// finding), are told to a command (run with /bin/sh -c, the event's JSON
// on its standard input) and to a webhook (the JSON POSTed, retried with
// backoff on a network error or a 5xx answer). Events wait in a bounded
// queue and are delivered one at a time by one goroutine, so a slow
// receiver never holds up the mount; when the queue is full an event is
// dropped and the drop is logged.

// NotifyOptions say where notifications go.
type NotifyOptions struct {
	Exec    string        // shell command ("": none)
	Webhook string        // URL ("": none)
	Timeout time.Duration // per delivery attempt (0: 10 s)
	// Retries is how many times a failed webhook delivery is retried
	// (0: 3), after 1 s, 2 s, 4 s…
	Retries int
	// Backoff is the first retry's wait (0: 1 s); tests shorten it.
	Backoff time.Duration
}

// Event is what a notification says, as JSON.
type Event struct {
	Version    int       `json:"version"`
	Event      string    `json:"event"` // "scrub" or "sick"
	Time       time.Time `json:"time"`
	UUID       string    `json:"uuid"`
	Mountpoint string    `json:"mountpoint"`
	Image      string    `json:"image"`
	// scrub: the run's status ("clean", "corrected", "uncorrected",
	// "failed"), what started it, the report (absent if it failed first)
	// and the error.
	Status  string         `json:"status,omitempty"`
	Trigger string         `json:"trigger,omitempty"`
	Report  *repair.Report `json:"report,omitempty"`
	Error   string         `json:"error,omitempty"`
	// sick: the structure, the generation and the findings.
	Structure  string   `json:"structure,omitempty"`
	Generation uint64   `json:"generation,omitempty"`
	Findings   []string `json:"findings,omitempty"`
}

const notifyQueue = 64

type notifier struct {
	opts NotifyOptions
	log  *slog.Logger
	q    chan Event
	wg   sync.WaitGroup
	http *http.Client

	mu        sync.Mutex
	delivered uint64
	failed    uint64
	dropped   uint64
}

func newNotifier(opts NotifyOptions, log *slog.Logger) *notifier {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Retries <= 0 {
		opts.Retries = 3
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	n := &notifier{opts: opts, log: log, q: make(chan Event, notifyQueue), http: &http.Client{Timeout: opts.Timeout}}
	return n
}

// start runs the delivery loop until ctx ends (then what is queued is
// dropped: the mount is going away).
func (n *notifier) start(ctx context.Context) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-n.q:
				n.deliver(ctx, ev)
			}
		}
	}()
}

// send queues ev without blocking.
func (n *notifier) send(ev Event) {
	select {
	case n.q <- ev:
	default:
		n.mu.Lock()
		n.dropped++
		n.mu.Unlock()
		n.log.Warn("notification dropped: the queue is full", "event", ev.Event)
	}
}

func (n *notifier) deliver(ctx context.Context, ev Event) {
	b, err := json.Marshal(ev)
	if err != nil {
		n.log.Error("notification not encoded", "err", err)
		return
	}
	ok := true
	if n.opts.Exec != "" {
		if err := n.runExec(ctx, b, ev.Event); err != nil {
			ok = false
			n.log.Warn("notify command failed", "event", ev.Event, "err", err)
		}
	}
	if n.opts.Webhook != "" {
		if err := n.post(ctx, b); err != nil {
			ok = false
			n.log.Warn("notify webhook failed", "event", ev.Event, "url", n.opts.Webhook, "err", err)
		}
	}
	n.mu.Lock()
	if ok {
		n.delivered++
	} else {
		n.failed++
	}
	n.mu.Unlock()
}

func (n *notifier) runExec(ctx context.Context, payload []byte, event string) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", n.opts.Exec)
	cmd.Stdin = bytes.NewReader(payload)
	cmd.Env = append(os.Environ(), "SCRUBD_EVENT="+event)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func (n *notifier) post(ctx context.Context, payload []byte) error {
	wait := n.opts.Backoff
	var last error
	for attempt := 0; attempt <= n.opts.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.opts.Webhook, bytes.NewReader(payload))
		if err != nil {
			return err // a bad URL: retrying will not help
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "scrubd/"+repair.Version)
		resp, err := n.http.Do(req)
		if err != nil {
			last = err
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		switch {
		case resp.StatusCode < 300:
			return nil
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			last = fmt.Errorf("HTTP %s", resp.Status)
		default:
			return fmt.Errorf("HTTP %s (not retried)", resp.Status)
		}
	}
	return fmt.Errorf("gave up after %d attempts: %w", n.opts.Retries+1, last)
}

// NotifyStats counts notifications in Status.
type NotifyStats struct {
	Delivered uint64 `json:"delivered"`
	Failed    uint64 `json:"failed"`
	Dropped   uint64 `json:"dropped"`
}

func (n *notifier) stats() NotifyStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return NotifyStats{Delivered: n.delivered, Failed: n.failed, Dropped: n.dropped}
}

// findingNames names finding ids.
func findingNames(ids []engine.ErrorID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.Name()
	}
	return out
}
