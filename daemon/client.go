package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/scrubd/scrubd/inject"
	"github.com/scrubd/scrubd/repair"
)

// ErrNotServed is wrapped by Dial's error when no live control socket
// serves the mountpoint.
var ErrNotServed = errors.New("not served by scrubd mount")

// Client talks to the control server of one mount. Its methods are safe
// for concurrent use; requests on one client are answered one after
// another.
type Client struct {
	mu     sync.Mutex
	c      net.Conn
	br     *bufio.Reader
	path   string
	broken error // set when a cancelled or failed call left the stream unusable
}

// Dial connects to the control socket of the mount on mountpoint (tried as
// given, then with symlinks resolved).
func Dial(mountpoint string) (*Client, error) {
	var errs []error
	for _, p := range candidates(mountpoint) {
		path := SocketPath(p)
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err == nil {
			return &Client{c: c, br: bufio.NewReaderSize(c, 64<<10), path: path}, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%s: %w: %w", mountpoint, ErrNotServed, errors.Join(errs...))
}

// SocketPath returns the socket the client is connected to.
func (c *Client) SocketPath() string { return c.path }

// Close closes the connection; a request still running on the server is
// cancelled.
func (c *Client) Close() error { return c.c.Close() }

// Status asks what the mount is doing.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	r, err := c.call(ctx, Request{Op: OpStatus})
	if err != nil {
		return nil, err
	}
	if r.Status == nil {
		return nil, fmt.Errorf("control socket %s: status answer without a status", c.path)
	}
	return r.Status, nil
}

// Scrub checks the mount (and repairs it with repairIt; with data it also
// reads and verifies every file) and returns the report. Cancelling ctx
// cancels the scrub on the server and makes the client unusable.
func (c *Client) Scrub(ctx context.Context, repairIt, data bool) (*repair.Report, error) {
	r, err := c.call(ctx, Request{Op: OpScrub, Repair: repairIt, Data: data})
	if err != nil {
		return nil, err
	}
	if r.Report == nil {
		return nil, fmt.Errorf("control socket %s: scrub answer without a report", c.path)
	}
	return r.Report, nil
}

// RunScrub runs the scrub req describes (Op is set to scrub; Background
// must be false) and returns its report.
func (c *Client) RunScrub(ctx context.Context, req Request) (*repair.Report, error) {
	req.Op, req.Background = OpScrub, false
	r, err := c.call(ctx, req)
	if err != nil {
		return nil, err
	}
	if r.Report == nil {
		return nil, fmt.Errorf("control socket %s: scrub answer without a report", c.path)
	}
	return r.Report, nil
}

// StartScrub starts the scrub req describes in the background (see
// ScrubBackground).
func (c *Client) StartScrub(ctx context.Context, req Request) (*Status, error) {
	req.Op, req.Background = OpScrub, true
	return c.statusCall(ctx, req)
}

// ScrubBackground starts a scrub that runs on after the call returns
// (until it ends, is cancelled, or the mount stops) and returns the
// status just after it started.
func (c *Client) ScrubBackground(ctx context.Context, repairIt, data bool) (*Status, error) {
	return c.statusCall(ctx, Request{Op: OpScrub, Repair: repairIt, Data: data, Background: true})
}

// Pause pauses the running scrub; Resume resumes it; Cancel stops it.
// Each returns the status after it; with no scrub running (or, for
// Resume, none paused) the error is a *RemoteError with code CodeIdle.
func (c *Client) Pause(ctx context.Context) (*Status, error) {
	return c.statusCall(ctx, Request{Op: OpPause})
}

// Resume resumes a paused scrub (see Pause).
func (c *Client) Resume(ctx context.Context) (*Status, error) {
	return c.statusCall(ctx, Request{Op: OpResume})
}

// Cancel stops the running scrub (see Pause); its partial report becomes
// the status's last scrub.
func (c *Client) Cancel(ctx context.Context) (*Status, error) {
	return c.statusCall(ctx, Request{Op: OpCancel})
}

func (c *Client) statusCall(ctx context.Context, req Request) (*Status, error) {
	r, err := c.call(ctx, req)
	if err != nil {
		return nil, err
	}
	if r.Status == nil {
		return nil, fmt.Errorf("control socket %s: %s answer without a status", c.path, req.Op)
	}
	return r.Status, nil
}

// Inject damages one block of the mount's committed tree (see
// inject.Online).
func (c *Client) Inject(ctx context.Context, tree, kind string, seed uint64) (*inject.Result, error) {
	return c.InjectLevel(ctx, tree, kind, seed, nil)
}

// InjectLevel is Inject restricted to the nodes of one level (nil: any).
func (c *Client) InjectLevel(ctx context.Context, tree, kind string, seed uint64, level *int) (*inject.Result, error) {
	r, err := c.call(ctx, Request{Op: OpInject, Tree: tree, Kind: kind, Seed: seed, Level: level})
	if err != nil {
		return nil, err
	}
	if r.Inject == nil {
		return nil, fmt.Errorf("control socket %s: inject answer without a result", c.path)
	}
	return r.Inject, nil
}

// InjectRequest sends an inject request with every field (a superblock
// copy, a file's data block): see inject.Online.
func (c *Client) InjectRequest(ctx context.Context, req Request) (*inject.Result, error) {
	req.Op = OpInject
	r, err := c.call(ctx, req)
	if err != nil {
		return nil, err
	}
	if r.Inject == nil {
		return nil, fmt.Errorf("control socket %s: inject answer without a result", c.path)
	}
	return r.Inject, nil
}

// Call sends one request and returns the response; an error response is
// returned as a *RemoteError.
func (c *Client) Call(ctx context.Context, req Request) (*Response, error) { return c.call(ctx, req) }

func (c *Client) call(ctx context.Context, req Request) (*Response, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRequest {
		return nil, fmt.Errorf("request of %d bytes: longer than %d", len(b), MaxRequest)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A cancelled ctx unblocks the write or read below by expiring the
	// connection's deadline; the server then sees the connection go away.
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, err := c.roundTrip(b)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		}
		c.broken = fmt.Errorf("control socket %s: connection unusable after an earlier failure: %w", c.path, err)
		c.c.Close()
		return nil, err
	}
	if resp.Error != "" {
		return nil, &RemoteError{Msg: resp.Error, Code: resp.Code}
	}
	return resp, nil
}

func (c *Client) roundTrip(b []byte) (*Response, error) {
	if _, werr := c.c.Write(append(b, '\n')); werr != nil {
		// A server that refuses a connection (too many, another uid)
		// answers and closes before reading: its answer says more than
		// the broken pipe.
		if line, err := readLine(c.br, maxResponse); err == nil {
			var resp Response
			if json.Unmarshal(line, &resp) == nil && resp.Error != "" {
				return &resp, nil
			}
		}
		return nil, fmt.Errorf("control socket %s: %w", c.path, werr)
	}
	line, err := readLine(c.br, maxResponse)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", c.path, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("control socket %s: bad response: %w", c.path, err)
	}
	return &resp, nil
}
