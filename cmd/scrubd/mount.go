package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/history"
	"github.com/scrubd/scrubd/repair"
)

type mountOptions struct {
	noTreeLog      bool
	noDelalloc     bool
	commitInterval time.Duration
	allowOther     bool
	debug          bool
	schedule       []string
	scheduleData   []string
	repair         bool
	historyKeep    int
	historyMaxAge  time.Duration
	notifyExec     string
	notifyWebhook  string
	metrics        string
	autoRepair     bool
	config         string
	rate           string
	readOnly       bool
	rescue         []string
	versionUpgrade string
	readAhead      string
}

// readAheadKiB turns --readahead into the mount's option: 0 becomes
// negative (the kernel's default), anything else whole KiB.
func (o *mountOptions) readAheadKiB() (int, error) {
	if o.readAhead == "0" {
		return -1, nil
	}
	n, err := parseSize(o.readAhead)
	if err != nil {
		return 0, usageError(fmt.Errorf("--readahead: %w", err))
	}
	if n < 4<<10 || n > 64<<20 {
		return 0, usageError(fmt.Errorf("--readahead %s: must be 0 or between 4K and 64M", o.readAhead))
	}
	return int(n >> 10), nil
}

// rescues are the --rescue options (btrfs's rescue= mount options).
var rescues = []string{"ignorebadroots"}

// fsOptions turns the flags into the filesystem's options; --rescue
// implies --read-only, and a read-only mount cannot repair.
func (o *mountOptions) fsOptions() (fs.Options, error) {
	fo := fs.Options{NoTreeLog: o.noTreeLog, NoDelayedAlloc: o.noDelalloc, CommitInterval: o.commitInterval, ReadOnly: o.readOnly}
	if o.versionUpgrade != "" {
		u, err := engine.ParseVersionUpgrade(o.versionUpgrade)
		if err != nil {
			return fo, usageError(fmt.Errorf("--version-upgrade: %w", err))
		}
		fo.Engine.VersionUpgrade = u
	}
	for _, r := range o.rescue {
		switch r {
		case "ignorebadroots":
			fo.Engine.IgnoreBadRoots = true
		default:
			return fo, usageError(fmt.Errorf("--rescue %q: unknown (known: %s)", r, strings.Join(rescues, ", ")))
		}
		fo.ReadOnly = true
	}
	if fo.ReadOnly && (o.repair || o.autoRepair) {
		return fo, usageError(errors.New("a read-only mount cannot repair: drop --repair and --auto-repair, or --read-only and --rescue"))
	}
	return fo, nil
}

// schedules turns the schedule flags into the daemon's schedules; a bad
// expression is a usage error naming the flag.
func (o *mountOptions) schedules() ([]daemon.Schedule, error) {
	var out []daemon.Schedule
	for _, f := range []struct {
		name  string
		specs []string
		data  bool
	}{{"--schedule", o.schedule, false}, {"--schedule-data", o.scheduleData, true}} {
		for _, spec := range f.specs {
			if _, err := daemon.ParseSchedule(spec); err != nil {
				return nil, usageError(fmt.Errorf("%s: %w", f.name, err))
			}
			out = append(out, daemon.Schedule{Spec: spec, Data: f.data, Repair: o.repair})
		}
	}
	if _, err := repair.ParseRate(o.rate); err != nil {
		return nil, usageError(fmt.Errorf("--rate: %w", err))
	}
	if o.historyKeep < 1 {
		return nil, usageError(fmt.Errorf("--history-keep %d: keep at least 1", o.historyKeep))
	}
	if o.historyMaxAge <= 0 {
		return nil, usageError(fmt.Errorf("--history-max-age %v: must be positive", o.historyMaxAge))
	}
	if o.notifyWebhook != "" {
		u, err := url.Parse(o.notifyWebhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usageError(fmt.Errorf("--notify-webhook %q: want an http:// or https:// URL", o.notifyWebhook))
		}
	}
	if o.repair && len(out) == 0 {
		return nil, usageError(errors.New("--repair applies to scheduled scrubs: give --schedule or --schedule-data"))
	}
	return out, nil
}

func newMountCmd() *cobra.Command {
	var o mountOptions
	c := &cobra.Command{
		Use:   "mount IMAGE MOUNTPOINT [--config FILE] [--schedule SPEC] [--schedule-data SPEC] [--repair] [--read-only] [--rescue ignorebadroots] [--notreelog] [--no-delalloc]",
		Short: "Serve an image through FUSE until it is unmounted",
		Long: `Mount IMAGE on MOUNTPOINT through FUSE and serve it in the foreground, so
any program can use it. "mounted IMAGE on MOUNTPOINT" is printed once the
mount is ready.

It runs until SIGINT or SIGTERM, or until the mount is unmounted from
outside (umount MOUNTPOINT, fusermount3 -u MOUNTPOINT); then it unmounts,
commits everything, and exits. If files are still open at a signal, the
mount is detached lazily (as umount -l) and those files are served until
they are closed. fsync(2) on the mount is durable: a crash, even kill -9,
loses nothing that was fsync'd; the next mount replays the log.

--read-only serves the image without writing to it: writes fail with
EROFS, no recovery pass runs (so data fsync'd since the last commit is not
visible until a read-write mount replays it), and scrubs check but do not
repair. It mounts images a read-write mount refuses (a damaged tree that a
recovery pass must read). --rescue ignorebadroots also serves an image
whose root tree cannot be read and that has no root backup (format 1.2 and
older): the trees that cannot be located are lost, the rest is served so
it can be copied off; it implies --read-only.

--version-upgrade none|compatible|incompatible says what a read-write
mount does with an image of an older format version (scrubd info shows
it): none never changes it; compatible (the default) upgrades it as far as
an older build of the same major version still mounts it (features that
set only compat or ro-compat bits); incompatible upgrades it to this
build's newest version, which older builds refuse. "scrubd upgrade" does
the same offline, and also downgrades.

--notify-exec CMD and --notify-webhook URL tell of a scrub that found
damage, repaired some or failed, and of a structure going sick (damage met
in use, or found by a scrub): CMD runs with /bin/sh -c, the event's JSON
on its standard input and its kind in $SCRUBD_EVENT ("scrub" or "sick");
the webhook receives the JSON in a POST, retried with backoff on a network
error or a 5xx answer. Delivery never holds up the mount.

--config FILE reads the settings from a YAML file whose keys are this
command's flags without the dashes (and the global ones: log-level,
state-dir, …), plus image and mountpoint; a flag on the command line wins
over the file; an unknown key or a bad value is an error naming the key
and its line. For example:

    image: /srv/images/data.img
    mountpoint: /mnt/data
    schedule: ["@daily"]
    schedule-data: ["0 3 * * 0"]
    repair: true
    auto-repair: true
    metrics: 127.0.0.1:9417
    history-keep: 200
    log-level: info

--rate limits the data reads of the scrubs the mount starts itself
(scheduled and auto-repair): auto (the default) reads at full speed while
no program writes and at 8 MiB/s while they do; a rate such as 200M caps
it; auto,200M does both. A scrub asked for with "scrubd scrub --rate"
uses its own.

--auto-repair runs a scrub with repair as soon as a structure goes sick:
damage met by normal I/O, or found by a scrub that does not repair. It
waits for a running scrub to end; a structure that stays sick after the
repair is not retried in a loop.

--metrics ADDR serves Prometheus metrics at http://ADDR/metrics: scrub
runs by result, findings and repairs by structure, bytes and items
checked, run durations, progress, every structure's health, commit,
fsync and delayed-ref counters and the superblock's error counters.

Every scrub the mount runs (asked for or scheduled) is kept in the report
history ("scrubd report"), rotated by --history-keep and
--history-max-age.

While mounted, the process serves a control socket (owner-only, under
$XDG_RUNTIME_DIR/scrubd or /run/scrubd) through which "scrubd scrub
MOUNTPOINT", "scrubd status MOUNTPOINT" and the other control verbs work
on the mounted image.

--schedule SPEC runs a background scrub of the metadata at the times of a
cron expression (five fields: minute hour day-of-month month day-of-week,
e.g. "0 3 * * 0" for Sundays at 03:00 local time; or @hourly, @daily,
@weekly, @monthly, @every 6h); --schedule-data SPEC one that also
verifies every file's data. Both may be given, each more than once. With
--repair, scheduled runs repair what they find. A run due while another
scrub runs is skipped (status counts it). "scrubd status" shows the next
run.

Mounting needs FUSE: the fuse3 package (fusermount3), /dev/fuse, and root
or an unprivileged-FUSE setup (user_allow_other in /etc/fuse.conf for
--allow-other).

EXIT STATUS
  0 unmounted and committed; 1 the image could not be mounted, served or
  committed (the reason is printed); 2 usage error.`,
		Example: `  scrubd mount fs.img /mnt/fs
  scrubd mount fs.img /mnt/fs --commit-interval 5s --allow-other &
  scrubd mount fs.img /mnt/fs --schedule @daily --schedule-data "0 3 * * 0" --repair &
  umount /mnt/fs    # or Ctrl-C: unmounts and commits`,
		Args: cobra.RangeArgs(0, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var img, mountpoint string
			if o.config != "" {
				var err error
				if img, mountpoint, err = applyConfig(cmd, o.config); err != nil {
					return err
				}
			}
			if len(args) > 0 {
				img = args[0]
			}
			if len(args) > 1 {
				mountpoint = args[1]
			}
			if img == "" || mountpoint == "" {
				return usageError(fmt.Errorf("mount needs IMAGE and MOUNTPOINT, as arguments or as image and mountpoint in --config"))
			}
			schedules, err := o.schedules()
			if err != nil {
				return err
			}
			if o.debug && !cmd.Flag("log-level").Changed {
				global.logLevel = "debug"
			}
			log, err := logger()
			if err != nil {
				return err
			}
			fo, err := o.fsOptions()
			if err != nil {
				return err
			}
			ra, err := o.readAheadKiB()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			err = daemon.Mount(cmd.Context(), daemon.MountOptions{
				Image: img, Mountpoint: mountpoint, Logger: log,
				FS:         fo,
				AllowOther: o.allowOther, Debug: o.debug, ReadAheadKiB: ra,
				Server: daemon.Options{TempDir: global.tmpDir, Schedules: schedules,
					HistoryDir: global.stateDir, HistoryKeep: o.historyKeep, HistoryMaxAge: o.historyMaxAge,
					Notify:      daemon.NotifyOptions{Exec: o.notifyExec, Webhook: o.notifyWebhook},
					MetricsAddr: o.metrics, AutoRepair: o.autoRepair, ScheduleRate: o.rate},
				Ready: func() { fmt.Fprintf(out, "mounted %s on %s\n", img, mountpoint) },
			})
			if err != nil {
				return err
			}
			if fo.ReadOnly {
				fmt.Fprintf(out, "unmounted %s; %s was not written\n", mountpoint, img)
				return nil
			}
			fmt.Fprintf(out, "unmounted %s; committed %s\n", mountpoint, img)
			return nil
		},
	}
	c.Flags().BoolVar(&o.noTreeLog, "notreelog", false, "make every fsync a full commit instead of a log write")
	c.Flags().BoolVar(&o.noDelalloc, "no-delalloc", false, "allocate every write's blocks at once instead of gathering them until the commit or fsync (delayed allocation)")
	c.Flags().DurationVar(&o.commitInterval, "commit-interval", 0, "commit this often (0: every 5s, negative: never on a timer); sync(1) and syncfs(2) do not reach a FUSE mount, so a change is durable after an fsync of it (and of its directory), after the next periodic commit, or at unmount")
	c.Flags().StringVar(&o.readAhead, "readahead", "1M", "the kernel's read-ahead window for the mount's files (at most 64M; 0: the kernel's default, 128K); needs root, otherwise the default stays")
	c.Flags().BoolVar(&o.allowOther, "allow-other", false, "let other users use the mount (non-root needs user_allow_other in /etc/fuse.conf)")
	c.Flags().BoolVar(&o.debug, "debug", false, "log every FUSE request (implies --log-level debug)")
	c.Flags().StringArrayVar(&o.schedule, "schedule", nil, "scrub the metadata on this cron schedule (e.g. \"0 3 * * 0\", @daily)")
	c.Flags().StringArrayVar(&o.scheduleData, "schedule-data", nil, "scrub metadata and file data on this cron schedule")
	c.Flags().BoolVar(&o.repair, "repair", false, "scheduled scrubs repair what they find")
	c.Flags().StringVar(&o.notifyExec, "notify-exec", "", "run this shell command on findings, repairs, failed runs and structures going sick (event JSON on stdin, $SCRUBD_EVENT)")
	c.Flags().StringVar(&o.notifyWebhook, "notify-webhook", "", "POST the event JSON to this URL on the same events (retried with backoff)")
	c.Flags().StringVar(&o.config, "config", "", "read settings from this YAML file (keys: the flags' names, image, mountpoint; the command line wins)")
	c.Flags().StringVar(&o.rate, "rate", "auto", "limit the data reads of scheduled and auto-repair scrubs: auto, a rate such as 200M, or auto,200M")
	c.Flags().BoolVar(&o.autoRepair, "auto-repair", false, "repair at once when a structure goes sick (damage met in use, or found by a scrub that does not repair)")
	c.Flags().StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics on this address at /metrics (e.g. 127.0.0.1:9417)")
	c.Flags().BoolVar(&o.readOnly, "read-only", false, "serve the image without writing to it (writes get EROFS; fsync'd data not yet committed is not replayed)")
	c.Flags().StringVar(&o.versionUpgrade, "version-upgrade", "compatible", "upgrade an older format version at a read-write mount: none, compatible (only features older builds still read) or incompatible (to this build's newest)")
	c.Flags().StringSliceVar(&o.rescue, "rescue", nil, "serve what can still be read of a damaged image, read-only: ignorebadroots (trees that cannot be located are lost, the rest is served)")
	c.Flags().IntVar(&o.historyKeep, "history-keep", history.DefaultKeep, "keep at most this many run reports (scrubd report)")
	c.Flags().DurationVar(&o.historyMaxAge, "history-max-age", history.DefaultMaxAge, "remove run reports older than this")
	return c
}
