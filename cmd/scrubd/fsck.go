package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
	"github.com/scrubd/scrubd/repair"
)

type fsckOptions struct {
	asJSON    bool
	repair    bool
	passes    []string
	silence   []string
	unsilence []string
}

// fsckExitStatus is the EXIT STATUS section of fsck and scrub.
const fsckExitStatus = `EXIT STATUS (as fsck(8))
  0   no errors
  1   errors corrected (any repair that changed the image)
  4   errors left uncorrected
  8   operational error: TARGET could not be opened, reached or read, or
      holds no scrubd filesystem ("not a scrubd filesystem")
  16  usage error
  32  canceled by the user (SIGINT/SIGTERM), after the partial report`

func newFsckCmd() *cobra.Command {
	var o fsckOptions
	c := &cobra.Command{
		Use:   "fsck IMAGE [--repair] [--json] [--pass NAME] [--silence ID,...] [--unsilence ID,...]",
		Short: "Check (and repair) an unmounted image offline",
		Long: `Check an unmounted image read-only: every superblock copy; every block of
every tree (checksum, magic, filesystem, block number, owner, level,
generation, layout); key order and parent/child key ranges; item counts; and
that the free-space, allocation and reverse-mapping trees agree exactly. Every
finding names the tree, the block and what is wrong.

With --repair the image is opened read-write instead (its log replayed, as
a mount would) and checked, damaged structures are rebuilt by the same
repairers an online scrub uses, and everything is checked again; the
second check is what the report calls left uncorrected. An image a
"scrubd mount" serves is refused: scrub its mountpoint instead.

Interrupted (Ctrl-C), it prints what it checked until then, marked
incomplete ("complete": false, "interrupted": true in JSON).

--pass NAME runs a recovery pass explicitly (opening the image read-write
first, as a mount does), before the check: check_allocations, replay_log,
logged_ops, deleted_inodes or rmap_maps (the markers free_untrusted,
alloc_untrusted, rmap_untrusted and csum_untrusted are state, not work:
refused). A pass that fails exits 8; an unknown name is a usage error that
lists the names.

--silence ID[,ID] and --unsilence ID[,ID] add error ids (names as in the
report, e.g. node_bad_checksum, or numbers) to the superblock's
errors_silent or remove them, before the check: damage of a silenced id is
still counted and repaired, but logged at info level, not error level.

` + fsckExitStatus,
		Example: `  scrubd fsck fs.img
  scrubd fsck fs.img --repair
  scrubd fsck fs.img --json | jq '.structures[] | select(.found > 0)'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			if err := o.tune(cmd, args[0], log); err != nil {
				return err
			}
			var rep *repair.Report
			if o.repair {
				rep, err = scrubImage(cmd.Context(), args[0], scrubOptions{repair: true, noProgress: true}, log)
			} else if err = checkOffline(args[0]); err == nil {
				rep, err = repair.CheckOffline(cmd.Context(), args[0], repair.Options{Logger: log})
			}
			return finishReport(cmd, rep, err, o.asJSON)
		},
	}
	c.Flags().BoolVar(&o.asJSON, "json", false, "print the versioned JSON report")
	c.Flags().BoolVar(&o.repair, "repair", false, "open read-write, rebuild damaged structures, then check again")
	c.Flags().StringSliceVar(&o.passes, "pass", nil, "run this recovery pass first (repeatable): "+strings.Join(engine.PassNames(), ", "))
	c.Flags().StringSliceVar(&o.silence, "silence", nil, "add these error ids (names or numbers) to errors_silent: logged at info level, still counted")
	c.Flags().StringSliceVar(&o.unsilence, "unsilence", nil, "remove these error ids from errors_silent")
	return c
}

// tune runs the passes --pass names and changes errors_silent, opening
// the image read-write (as a mount would); nothing to do without them.
// Bad names are usage errors, found before the image is opened.
func (o *fsckOptions) tune(cmd *cobra.Command, img string, log *slog.Logger) error {
	if len(o.passes)+len(o.silence)+len(o.unsilence) == 0 {
		return nil
	}
	for _, p := range o.passes {
		if _, err := engine.PassByName(p); err != nil {
			return usageError(fmt.Errorf("--pass: %w", err))
		}
	}
	ids := func(flag string, names []string) ([]engine.ErrorID, error) {
		var out []engine.ErrorID
		for _, n := range names {
			id, ok := engine.ErrorIDByName(n)
			if !ok {
				return nil, usageError(fmt.Errorf("%s %q: no such error id (see the names in a report, or \"scrubd info\")", flag, n))
			}
			out = append(out, id)
		}
		return out, nil
	}
	silence, err := ids("--silence", o.silence)
	if err != nil {
		return err
	}
	unsilence, err := ids("--unsilence", o.unsilence)
	if err != nil {
		return err
	}
	if err := checkOffline(img); err != nil {
		return withCode(repair.ExitOperational, err)
	}
	f, err := fs.OpenPath(img, fs.Options{CommitInterval: -1, Logger: log, Engine: engine.Options{VersionUpgrade: engine.UpgradeNone}})
	if err != nil {
		return withCode(repair.ExitOperational, err)
	}
	e := f.Engine()
	err = func() error {
		if len(unsilence) > 0 {
			if err := e.SetErrorsSilent(false, unsilence...); err != nil {
				return err
			}
		}
		if len(silence) > 0 {
			if err := e.SetErrorsSilent(true, silence...); err != nil {
				return err
			}
		}
		for _, p := range o.passes {
			if err := e.RunPass(cmd.Context(), p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "ran recovery pass %s\n", p)
		}
		return nil
	}()
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", img, cerr)
	}
	if err != nil {
		return withCode(repair.ExitOperational, err)
	}
	return nil
}

// finishReport prints a check's report and turns its outcome into the
// fsck(8) exit code. A canceled run's partial report is printed too.
func finishReport(cmd *cobra.Command, rep *repair.Report, err error, asJSON bool) error {
	if err != nil && (rep == nil || !errors.Is(err, context.Canceled)) {
		return withCode(repair.ExitOperational, err)
	}
	if rep.Mode == "offline" {
		keepOffline(cmd, rep) // online runs are kept by the mount
	}
	out := cmd.OutOrStdout()
	if asJSON {
		if perr := printJSON(out, rep); perr != nil {
			return withCode(repair.ExitOperational, perr)
		}
	} else {
		rep.WriteSummary(out)
	}
	if err != nil {
		return &reportedError{withCode(exitCanceled, fmt.Errorf("interrupted: %w", err))}
	}
	if code := rep.ExitCode(); code != 0 {
		return withCode(code, nil)
	}
	return nil
}
