package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/repair"
)

type fsckOptions struct {
	asJSON bool
	repair bool
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
		Use:   "fsck IMAGE [--repair] [--json]",
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
	return c
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
