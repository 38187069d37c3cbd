package daemon

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"

	sfs "github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/engine/fuse"
)

// MountOptions are what the mount process composes: the filesystem, its
// FUSE mount, and the control server with its scheduler, metrics,
// notifications and history.
type MountOptions struct {
	Image, Mountpoint string
	// FS opens the image (its Logger defaults to Logger).
	FS sfs.Options
	// AllowOther, Debug and ReadAheadKiB go to the FUSE mount.
	AllowOther, Debug bool
	ReadAheadKiB      int
	// Server configures the control server (Image is set from Image).
	Server Options
	Logger *slog.Logger
	// Ready, if set, is called once the mount serves and the control
	// socket is up.
	Ready func()
}

// Mount opens the image, mounts it through FUSE on the mountpoint and
// serves its control socket, until ctx ends (a signal) or the mount is
// unmounted from outside; then it stops the control server (cancelling a
// running scrub), unmounts and commits. Without a control socket the mount
// still serves files, so a failure to start it only warns — unless
// schedules, metrics, notifications or auto-repair were asked for, which
// need it: then Mount unmounts and fails.
func Mount(ctx context.Context, o MountOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.FS.Logger == nil {
		o.FS.Logger = log
	}
	fsys, err := sfs.OpenPath(o.Image, o.FS)
	if err != nil {
		return err
	}
	source := o.Image
	if abs, err := filepath.Abs(o.Image); err == nil {
		source = abs
	}
	srv, err := fuse.Mount(fsys, o.Mountpoint, fuse.Options{AllowOther: o.AllowOther, FsName: source, Debug: o.Debug, Logger: log, ReadAheadKiB: o.ReadAheadKiB})
	if err != nil {
		return errors.Join(err, fsys.Close())
	}
	so := o.Server
	so.Image = source
	if so.Logger == nil {
		so.Logger = log
	}
	ctl, cerr := Serve(ctx, fsys, o.Mountpoint, so)
	if cerr != nil && (so.MetricsAddr != "" || so.AutoRepair || len(so.Schedules) > 0 || so.Notify.Exec != "" || so.Notify.Webhook != "") {
		uerr := srv.Unmount()
		srv.Wait()
		return errors.Join(cerr, uerr, fsys.Close())
	}
	if cerr != nil {
		log.Warn("no control socket: scrub and inject cannot reach this mount", "err", cerr)
	}
	if o.Ready != nil {
		o.Ready()
	}
	runErr := srv.Run(ctx)
	if ctl != nil {
		if err := ctl.Close(); err != nil {
			log.Warn("closing the control socket", "err", err)
		}
	}
	return errors.Join(runErr, fsys.Close())
}
