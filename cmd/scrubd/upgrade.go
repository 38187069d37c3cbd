package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// upgradeDoc is what "scrubd upgrade --json" prints.
type upgradeDoc struct {
	Version int    `json:"version"`
	Image   string `json:"image"`
	From    string `json:"from"`
	To      string `json:"to"`
	Changed bool   `json:"changed"`
	// Added and Dropped name the features of the version table the
	// change added or dropped; Passes the recovery passes it ran.
	Added   []string `json:"added"`
	Dropped []string `json:"dropped"`
	Passes  []string `json:"passes"`
}

func newUpgradeCmd() *cobra.Command {
	var (
		to     string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "upgrade IMAGE [--to MAJOR.MINOR] [--json]",
		Short: "Change an unmounted image's format version (upgrade or downgrade)",
		Long: `Change the format version of an unmounted image, offline. Each minor
version adds one feature (scrubd info lists those an image uses):

  1.0  base
  1.1  log_chain     the fsync log is one chain that outlives commits
  1.2  rmap_maps     file data's reverse mappings record the ranges they map
  1.3  root_backups  the superblock keeps the last generations' tree roots
  1.4  xattr         extended attributes and POSIX ACLs (ro-compat: an older
                     build mounts the image read-only)
  1.5  long_symlinks symlink targets up to 4095 bytes

Without --to the image is upgraded to this build's newest version. An
upgrade sets the new features and the recovery passes they need (1.2:
rmap_maps, which rewrites every file's reverse mappings) in one commit,
then runs the passes; interrupted, the next mount runs them again.

A --to older than the image's version downgrades it, so that a build of
that version mounts it: only when no feature past it is in use, else it is
refused naming the feature (rmap_maps is in use once the image holds file
data, xattr once the image has an attribute tree, long_symlinks once a
target is longer than 900 bytes). root_backups and log_chain can always
be dropped.

"scrubd mount --version-upgrade" chooses what a mount does.

EXIT STATUS
  0 the image is at the version asked (changed or already there); 1 the
  image could not be opened or changed, or a feature in use refuses the
  downgrade (the error names it); 2 usage error (a version this build does
  not know).`,
		Example: `  scrubd upgrade fs.img
  scrubd upgrade fs.img --to 1.2
  scrubd upgrade fs.img --to 1.1 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			target := engine.NewestMinor()
			if to != "" {
				if target, err = engine.ParseFormatVersion(to); err != nil {
					return usageError(fmt.Errorf("--to: %w", err))
				}
			}
			if err := checkOffline(args[0]); err != nil {
				return err
			}
			f, err := fs.OpenPath(args[0], fs.Options{CommitInterval: -1, Logger: log,
				Engine: engine.Options{VersionUpgrade: engine.UpgradeNone}})
			if err != nil {
				return err
			}
			ch, err := f.Engine().SetFormatVersion(cmd.Context(), target)
			if cerr := f.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("close %s: %w", args[0], cerr)
			}
			if err != nil {
				if errors.Is(err, engine.ErrFeatureInUse) {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				return err
			}
			v := func(m uint16) string { return fmt.Sprintf("%d.%d", format.VersionMajor, m) }
			doc := upgradeDoc{Version: jsonVersion, Image: args[0], From: v(ch.From), To: v(ch.To), Changed: ch.From != ch.To,
				Added: ch.Added, Dropped: ch.Dropped, Passes: ch.Passes}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, doc)
			}
			switch {
			case !doc.Changed:
				fmt.Fprintf(out, "%s is at version %s already\n", args[0], doc.To)
			case ch.To > ch.From:
				fmt.Fprintf(out, "upgraded %s from %s to %s: added %s", args[0], doc.From, doc.To, strings.Join(ch.Added, ", "))
				if len(ch.Passes) > 0 {
					fmt.Fprintf(out, "; ran %s", strings.Join(ch.Passes, ", "))
				}
				fmt.Fprintln(out)
			default:
				fmt.Fprintf(out, "downgraded %s from %s to %s: dropped %s\n", args[0], doc.From, doc.To, strings.Join(ch.Dropped, ", "))
			}
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "the version to bring the image to, MAJOR.MINOR (default: this build's newest)")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return c
}
