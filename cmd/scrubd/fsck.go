package main

import (
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/repair"
)

type fsckOptions struct {
	asJSON bool
}

func newFsckCmd() *cobra.Command {
	var o fsckOptions
	c := &cobra.Command{
		Use:   "fsck IMAGE [--json]",
		Short: "Check an unmounted image offline",
		Long: `Check an unmounted image read-only: every superblock copy; every block of
every tree (checksum, magic, filesystem, block number, owner, level,
generation, layout); key order and parent/child key ranges; item counts; and
that the free-space, allocation and reverse-mapping trees agree exactly. Every
finding names the tree, the block and what is wrong.

EXIT STATUS (as fsck(8))
  0   no errors
  4   errors left uncorrected
  8   operational error (the image could not be opened or read)
  16  usage error`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return withCode(16, err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return withCode(16, err)
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
	return c
}
