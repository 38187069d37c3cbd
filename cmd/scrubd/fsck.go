package main

import (
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/repair"
)

type fsckOptions struct {
	asJSON bool
	repair bool
}

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

EXIT STATUS (as fsck(8))
  0   no errors
  1   errors corrected (--repair)
  4   errors left uncorrected
  8   operational error (the image could not be opened or read)
  16  usage error`,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return withCode(16, err)
			}
			if o.repair {
				rep, err := scrubImage(cmd.Context(), args[0], true, false, log)
				if err != nil {
					return withCode(repair.ExitOperational, err)
				}
				return printReport(cmd, rep, o.asJSON)
			}
			rep, err := repair.CheckOffline(cmd.Context(), args[0], repair.Options{Logger: log})
			if err != nil {
				return withCode(repair.ExitOperational, err)
			}
			out := cmd.OutOrStdout()
			if o.asJSON {
				if err := printJSON(out, rep); err != nil {
					return withCode(repair.ExitOperational, err)
				}
			} else {
				rep.WriteSummary(out)
			}
			if code := rep.ExitCode(); code != 0 {
				return withCode(code, nil)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&o.asJSON, "json", false, "print the versioned JSON report")
	c.Flags().BoolVar(&o.repair, "repair", false, "open read-write, rebuild damaged structures, then check again")
	fsckUsage(c)
	return c
}
