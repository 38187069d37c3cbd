package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/history"
	"github.com/scrubd/scrubd/repair"
)

type scrubOptions struct {
	repair     bool
	data       bool
	asJSON     bool
	background bool
	// progressEvery spaces the progress lines when stderr is not a
	// terminal; noProgress shows none (fsck).
	progressEvery time.Duration
	noProgress    bool
	rate          string
	since         uint64
	incremental   bool
	errors        bool
}

// progress says whether the run shows its progress.
func (o scrubOptions) progress() bool { return !o.asJSON && !o.noProgress }

func newScrubCmd() *cobra.Command {
	var o scrubOptions
	c := &cobra.Command{
		Use:   "scrub TARGET [--repair] [--data] [--background] [--json]",
		Short: "Check (and repair) a mounted filesystem or an unmounted image",
		Long: `Check every structure of TARGET at its last committed generation, and with
--repair rebuild what is damaged and check again; the second check is what
the report calls left uncorrected.

TARGET is either a mountpoint served by "scrubd mount" — then the mount
process does the work online, through its control socket, while the
filesystem stays in use — or an unmounted image, which is opened (read-only
unless --repair) and checked offline. An image that a "scrubd mount" serves
is refused: scrub its mountpoint instead. An image too damaged to be
opened at all gets the read-only check fsck does, and a note saying so.

Only damage a repairer exists for is repaired (the ops table lists them:
today the superblock and the reverse-mapping, allocation, free-space and
file extent trees, and the cross-references they answer for); the rest is
reported, and the report says why each structure was not repaired.

--background (a mountpoint only) starts the scrub on the mount and returns
at once; "scrubd status" follows it, "scrubd pause", "resume" and "cancel"
control it, and its report becomes the status's last scrub.

--data also reads every file and verifies every block's checksum, naming
the file and offset of each bad one.

--since GEN, --incremental and --errors limit what --data reads: the data
written after generation GEN (every block carries the generation that
wrote it; extent-tree leaves written since name the data mapped since),
the data written since the last complete data scrub kept in the history
("scrubd report"), or only the blocks the last data scrub found bad
(zpool scrub -e). The metadata is always checked in full.

--rate limits the data reads of --data: a rate in bytes a second (200M,
1.5GiB), auto — read at full speed while no program writes to the mount,
at 8 MiB/s while they do (a scrub that runs under a constant write load
still finishes) — or both (auto,200M). Metadata checks are not limited.

While it runs, a progress bar on stderr shows the phase, the work done,
the rate and the time left when stderr is a terminal; otherwise a plain
progress line is printed every --progress-interval; with --json nothing
but the report is printed.

Interrupted (Ctrl-C), it prints what it checked until then, marked
incomplete ("complete": false, "interrupted": true in JSON).

` + fsckExitStatus,
		Example: `  scrubd scrub /mnt/fs
  scrubd scrub /mnt/fs --repair --data
  scrubd scrub fs.img --json > report.json
  scrubd scrub /mnt/fs --data --background && scrubd status /mnt/fs`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			target := args[0]
			if _, err := repair.ParseRate(o.rate); err != nil {
				return usageError(fmt.Errorf("--rate: %w", err))
			}
			n := 0
			for _, b := range []bool{o.since != 0, o.incremental, o.errors} {
				if b {
					n++
				}
			}
			if n > 1 || (n == 1 && !o.data) {
				return usageError(fmt.Errorf("--since, --incremental and --errors limit the data scrub: give one of them, with --data"))
			}
			var rep *repair.Report
			if o.background {
				mnt, ok := daemon.Discover(target)
				if !ok {
					return usageError(fmt.Errorf("--background needs a mountpoint a scrubd mount serves; %s is not one", target))
				}
				return withClient(cmd.Context(), mnt, func(ctx context.Context, cl *daemon.Client) (*daemon.Status, error) {
					return cl.StartScrub(ctx, o.request())
				}, func(w io.Writer, st *daemon.Status) {
					fmt.Fprintf(w, "%s: scrub started in the background; follow it with: scrubd status %s\n", st.Mountpoint, st.Mountpoint)
				}, o.asJSON, cmd.OutOrStdout())
			}
			if mnt, ok := daemon.Discover(target); ok {
				rep, err = scrubOnline(cmd.Context(), mnt, o)
			} else {
				rep, err = scrubImage(cmd.Context(), target, o, log)
			}
			return finishReport(cmd, rep, err, o.asJSON)
		},
	}
	c.Flags().BoolVar(&o.repair, "repair", false, "rebuild damaged structures, then check again")
	c.Flags().BoolVar(&o.data, "data", false, "also read every file and verify data checksums")
	c.Flags().BoolVar(&o.asJSON, "json", false, "print the versioned JSON report")
	c.Flags().BoolVar(&o.background, "background", false, "start the scrub on the mount and return at once (see scrubd status)")
	c.Flags().StringVar(&o.rate, "rate", "", "limit the data reads: a rate such as 200M (bytes a second), auto (back off while programs write), or auto,200M")
	c.Flags().Uint64Var(&o.since, "since", 0, "with --data, read only the data written after this generation")
	c.Flags().BoolVar(&o.incremental, "incremental", false, "with --data, read only the data written since the last complete data scrub")
	c.Flags().BoolVar(&o.errors, "errors", false, "with --data, re-read only the blocks the last data scrub found bad")
	c.Flags().DurationVar(&o.progressEvery, "progress-interval", 10*time.Second, "when stderr is not a terminal, print a progress line this often")
	return c
}

func scrubOnline(ctx context.Context, mnt string, o scrubOptions) (*repair.Report, error) {
	cl, err := daemon.Dial(mnt)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	if o.progress() {
		// A second connection follows the run while the first waits.
		if pcl, err := daemon.Dial(mnt); err == nil {
			defer pcl.Close()
			stop := showProgress(os.Stderr, o.progressEvery, func() (repair.ScrubProgress, bool) {
				st, err := pcl.Status(ctx)
				if err != nil || st.Progress == nil {
					return repair.ScrubProgress{}, false
				}
				return *st.Progress, true
			})
			defer stop()
		}
	}
	return cl.RunScrub(ctx, o.request())
}

// request is the control request of o.
func (o scrubOptions) request() daemon.Request {
	return daemon.Request{Repair: o.repair, Data: o.data, Rate: o.rate, Since: o.since, Incremental: o.incremental, Errors: o.errors}
}

// scrubImage checks an unmounted image through a private mount of it:
// read-only unless repairIt.
func scrubImage(ctx context.Context, img string, o scrubOptions, log *slog.Logger) (*repair.Report, error) {
	repairIt, data := o.repair, o.data
	if err := checkOffline(img); err != nil {
		return nil, err
	}
	// Nothing else reads the image: its walks read ahead.
	fsys, err := fs.OpenPath(img, fs.Options{ReadOnly: !repairIt, CommitInterval: -1, Logger: log, Engine: engine.Options{ReadAhead: true}})
	if errors.Is(err, format.ErrCorrupt) {
		// Damage the engine cannot mount past (today: the root or
		// free-space tree) is still damage to report, as fsck does.
		rep, cerr := repair.CheckOffline(ctx, img, repair.Options{Logger: log})
		if cerr != nil || rep.Found == 0 {
			return nil, err
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("the image could not be opened for scrub or repair (%v): this is the read-only check", err))
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	var ctl *repair.ScrubControl
	if o.progress() || o.rate != "" {
		ctl = repair.NewScrubControl(nil)
		r, err := repair.ParseRate(o.rate)
		if err != nil {
			return nil, usageError(fmt.Errorf("--rate: %w", err))
		}
		ctl.SetRate(r) // offline: nothing writes, so auto means no limit
	}
	if o.progress() {
		stop := showProgress(os.Stderr, o.progressEvery, func() (repair.ScrubProgress, bool) { return ctl.Progress(), true })
		defer stop()
	}
	sopts := repair.ScrubOptions{Repair: repairIt, Data: data, Logger: log, Mode: "offline", TempDir: global.tmpDir, Control: ctl, Since: o.since}
	var scopeNote string
	if o.incremental || o.errors {
		pin := fsys.Engine().Pin()
		uuid := pin.Super().FSID.String()
		pin.Release()
		hs, err := history.Open(global.stateDir, uuid)
		if err == nil {
			sopts.Since, sopts.Errors, sopts.OnlyErrors, scopeNote, err = hs.Scope(o.incremental, o.errors)
		}
		if err != nil {
			fsys.Close()
			return nil, fmt.Errorf("the run history: %w", err)
		}
	}
	rep, err := repair.Scrub(ctx, fsys, img, sopts)
	if rep != nil && scopeNote != "" {
		rep.Notes = append(rep.Notes, scopeNote)
	}
	if cerr := fsys.Close(); cerr != nil {
		return nil, errors.Join(err, fmt.Errorf("close %s: %w", img, cerr))
	}
	return rep, err
}

// checkOffline refuses targets an offline open must not touch: a
// directory (a mountpoint nobody serves) and an image a mount serves.
func checkOffline(target string) error {
	fi, err := os.Stat(target)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory, not an image, and no scrubd mount serves it (no live control socket at %s)", target, daemon.SocketPath(target))
	}
	if mnt, ok := daemon.MountedImage(target); ok {
		return fmt.Errorf("%s is mounted on %s by scrubd mount: use the mountpoint (a second open would race the mount)", target, mnt)
	}
	return nil
}

// printReport prints rep and returns its fsck(8) exit code as an error.
