package fuse

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/scrubd/scrubd/engine/fs"
)

// Options configure a mount.
type Options struct {
	// EntryTimeout and AttrTimeout are how long the kernel may cache a
	// name and an inode's attributes (0: one second, negative: not at all).
	EntryTimeout time.Duration
	AttrTimeout  time.Duration
	// NegativeTimeout is how long the kernel may cache that a name does
	// not exist (0 or negative: not at all). Leave it 0 where online
	// repairs run: a repair may bring a name back (a rebuilt directory,
	// lost+found), and the kernel's failed lookups cannot be dropped, as
	// nothing records which names they were (notify.go).
	NegativeTimeout time.Duration
	// AllowOther lets users other than the one mounting use the mount
	// (for a non-root user it needs user_allow_other in /etc/fuse.conf).
	AllowOther bool
	// FsName is the source the mount table shows (default "scrubd").
	FsName string
	// Debug logs every FUSE request and reply at debug level.
	Debug bool
	// Logger receives operational errors (default: discard).
	Logger *slog.Logger
	// ReadAheadKiB is the kernel's read-ahead window for the mount's
	// files, KiB (0: DefaultReadAheadKiB; negative: the kernel's own,
	// 128 KiB). See readahead.go.
	ReadAheadKiB int

	// maxWrite overrides the largest WRITE request (benchmarks compare).
	maxWrite int
}

// maxWrite is the largest WRITE (and READ) request: 1 MiB, 256 pages, the
// most a Linux kernel (4.20 and later: max_pages) accepts; go-fuse asks
// the kernel for that many pages at INIT. An older kernel caps it at 128
// KiB on its own.
const maxWrite = 1 << 20

// Server is a mounted filesystem being served.
type Server struct {
	b          *bridge
	srv        *gofuse.Server
	mountpoint string
	log        *slog.Logger
	done       chan struct{} // closed when the serve loop has ended
}

const defaultTimeout = time.Second

func timeout(d time.Duration) *time.Duration {
	switch {
	case d == 0:
		d = defaultTimeout
	case d < 0:
		d = 0
	}
	return &d
}

// Mount mounts fsys on mountpoint and serves it until it is unmounted. The
// caller keeps ownership of fsys: close it after Wait or Run returns.
func Mount(fsys *fs.FS, mountpoint string, opts Options) (*Server, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	root, err := fsys.GetAttr(fs.RootIno)
	if errors.Is(err, syscall.EIO) {
		// Damage hides the root directory's inode item: serve it with
		// stand-in attributes (rootStandIn) until the inode repair,
		// rather than refuse the mount.
		logger.Warn("the root directory's inode cannot be read: serving it as a directory of mode 0700 owned by root until it is repaired", "err", err)
		root, err = rootStandIn(root, err)
	}
	if err != nil {
		return nil, fmt.Errorf("mount %s: root directory: %w", mountpoint, err)
	}
	b := &bridge{fsys: fsys, log: logger, attrTimeout: *timeout(opts.AttrTimeout)}
	fsName := opts.FsName
	if fsName == "" {
		fsName = "scrubd"
	}
	// The mount option string is comma-separated.
	fsName = strings.ReplaceAll(fsName, ",", "_")
	// go-fuse prints request traces (Debug) and the rare diagnostic it
	// cannot return as an error (a recovered panic) through a log.Logger.
	lvl := slog.LevelError
	if opts.Debug {
		lvl = slog.LevelDebug
	}
	stdlog := slog.NewLogLogger(logger.Handler(), lvl)
	neg := max(opts.NegativeTimeout, 0)
	gopts := &gofs.Options{
		MountOptions: gofuse.MountOptions{
			AllowOther: opts.AllowOther,
			// The kernel checks permissions against the attributes.
			Options:       []string{"default_permissions"},
			MaxBackground: 12,
			MaxWrite:      cmp.Or(opts.maxWrite, maxWrite),
			MaxReadAhead:  cmp.Or(opts.maxWrite, maxWrite),
			// A READ's reply is bytes the mount has verified in its
			// own memory, never a file descriptor to splice from; left
			// on, go-fuse first tries a splice of every reply through a
			// pipe and falls back (about 5% of a reader's CPU).
			DisableSplice: true,
			FsName:        fsName,
			Name:          "scrubd",
			// mount(2) when root; fusermount3 otherwise.
			DirectMount:   true,
			DisableXAttrs: false, // xattr.go
			// The mount, not the kernel, drops set-ID bits and
			// capabilities on write, truncate and chown (killpriv.go),
			// and applies the umask or the default ACL to new inodes
			// (engine/fs/aclcreate.go) while the kernel enforces ACLs.
			ExtraCapabilities: gofuse.CAP_HANDLE_KILLPRIV_V2 | gofuse.CAP_DONT_MASK,
			EnableAcl:         true,
			Debug:             opts.Debug,
			Logger:            stdlog,
		},
		EntryTimeout:    timeout(opts.EntryTimeout),
		AttrTimeout:     timeout(opts.AttrTimeout),
		NegativeTimeout: &neg,
		NullPermissions: true, // mode 000 is mode 000
		RootStableAttr:  &gofs.StableAttr{Ino: fs.RootIno, Gen: root.Generation},
		Logger:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if neg == 0 {
		gopts.NegativeTimeout = nil
	}
	if ro, _ := fsys.Engine().ReadOnly(); ro {
		// A read-only filesystem: the kernel refuses writes itself
		// (EROFS) and says "ro" in the mount table.
		gopts.MountOptions.Options = append(gopts.MountOptions.Options, "ro")
	}
	b.root = &node{b: b}
	raw := noteRaw{RawFileSystem: gofs.NewNodeFS(b.root, gopts), notes: &b.notes}
	srv, err := gofuse.NewServer(raw, mountpoint, &gopts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s := &Server{b: b, srv: srv, mountpoint: mountpoint, log: logger, done: make(chan struct{})}
	unwatch := b.watchChanges() // notify.go
	go func() {
		srv.Serve()
		unwatch()
		close(s.done)
	}()
	if err := srv.WaitMount(); err != nil {
		if uerr := s.Unmount(); uerr != nil {
			s.detach()
		}
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s.setReadAhead(opts.ReadAheadKiB) // readahead.go
	return s, nil
}

// Mountpoint returns where the filesystem is mounted.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Wait blocks until the filesystem is unmounted (by Unmount or from
// outside, by umount(8) or fusermount3 -u) and every request is answered.
func (s *Server) Wait() { <-s.done }

// Done is closed when the filesystem has been unmounted and every request
// answered.
func (s *Server) Done() <-chan struct{} { return s.done }

func (s *Server) unmounted() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Unmount unmounts the filesystem and waits until every request is
// answered. It fails (EBUSY) while files are open on the mount, and
// succeeds at once if the filesystem was already unmounted.
func (s *Server) Unmount() error {
	if s.unmounted() {
		return nil
	}
	if err := s.srv.Unmount(); err != nil {
		if s.unmounted() {
			return nil // unmounted from outside meanwhile
		}
		return fmt.Errorf("unmount %s: %w", s.mountpoint, err)
	}
	<-s.done
	return nil
}

// Run serves until the filesystem is unmounted from outside, or ctx ends;
// then it unmounts, and if the mount is busy detaches it lazily (as umount
// -l) and keeps serving the files still open until the last one closes.
// It returns when nothing is served any more, so the caller can close the
// filesystem; an error if it could not unmount, or if the engine aborted
// its running transaction while serving (then changes since the last
// commit are lost, and fs.Close does not say so).
func (s *Server) Run(ctx context.Context) error {
	if err := s.run(ctx); err != nil {
		return err
	}
	if _, err := s.b.fsys.Engine().ReadOnly(); err != nil {
		return fmt.Errorf("served %s, but the engine aborted a transaction (changes since the last commit are lost): %w", s.mountpoint, err)
	}
	return nil
}

func (s *Server) run(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
	}
	err := s.Unmount()
	if err == nil {
		return nil
	}
	s.log.Warn("mount busy: detaching it lazily, serving open files until they close",
		"mountpoint", s.mountpoint, "err", err)
	if derr := s.detach(); derr != nil {
		if s.unmounted() {
			return nil
		}
		return errors.Join(err, derr)
	}
	<-s.done
	return nil
}

// detach unmounts lazily: mount(2) as root, else fusermount3 -uz.
func (s *Server) detach() error {
	err := syscall.Unmount(s.mountpoint, syscall.MNT_DETACH)
	if err == nil {
		return nil
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		path, lerr := exec.LookPath(bin)
		if lerr != nil {
			continue
		}
		out, ferr := exec.Command(path, "-u", "-z", s.mountpoint).CombinedOutput()
		if ferr == nil {
			return nil
		}
		return fmt.Errorf("detach %s: %s: %w", s.mountpoint, strings.TrimSpace(string(out)), ferr)
	}
	return fmt.Errorf("detach %s: %w", s.mountpoint, err)
}
