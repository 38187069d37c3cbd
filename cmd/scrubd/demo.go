package main

import (
	"fmt"

	"github.com/scrubd/scrubd/demo"
	"github.com/spf13/cobra"
)

func newDemoCmd() *cobra.Command {
	var dir string
	var asJSON, keep bool
	c := &cobra.Command{
		Use:   "demo [--dir DIR] [--keep] [--json]",
		Short: "Run the product end to end on a default image",
		Long: `Run scrubd end to end on an embedded default: make an image, mount it
(FUSE where the machine allows, else the Go API), run a writer that writes and
fsyncs files through the mount, damage the reverse-mapping tree of the live
filesystem, scrub and find it, repair it online while the writer keeps
writing, verify every byte the writer fsync'd, unmount, check offline, and
print the repair's report. The image is left in DIR (created if missing);
without --dir a new temporary directory is used and removed at the end,
unless --keep.

EXIT STATUS
  0 every step held; 1 a step failed (it is named); 2 usage error.`,
		Example: `  scrubd demo
  scrubd demo --dir /tmp/scrubd-demo
  scrubd demo --keep --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var progress func(demo.Step)
			if !asJSON {
				progress = func(s demo.Step) {
					mark := "ok  "
					if !s.OK {
						mark = "FAIL"
					}
					fmt.Fprintf(out, "[%s] %-20s %6.2fs  %s\n", mark, s.Name, s.TookS, s.Detail)
				}
			}
			res, err := demo.Run(cmd.Context(), dir, demo.Options{Logger: log, Keep: keep}, progress)
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(out, res); err != nil {
					return err
				}
			} else {
				if res.Report != nil {
					fmt.Fprintln(out)
					res.Report.WriteSummary(out)
				}
				if res.Removed {
					fmt.Fprintf(out, "\nimage: %s (removed; --keep keeps it)\n", res.Image)
				} else {
					fmt.Fprintf(out, "\nimage: %s\n", res.Image)
				}
			}
			if !res.OK {
				return withCode(1, fmt.Errorf("demo failed"))
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory for the demo image, created if missing (default: a new temporary directory, removed at the end)")
	c.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory (and the image) a demo without --dir makes")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}
