package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/repair"
)

func versionString() string { return repair.VersionString() }

func newVersionCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print scrubd's version",
		Long: `Print scrubd's version, the source revision it was built from (when
known), and the version of the JSON report it writes.

EXIT STATUS
  0 printed; 2 usage error.`,
		Example: `  scrubd version
  scrubd version --json
  scrubd --version`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if asJSON {
				b := repair.Build()
				// The build's version goes in "scrubd_version": "version"
				// versions the document, as in every JSON scrubd prints.
				return printJSON(out, struct {
					Version       int    `json:"version"`
					ScrubdVersion string `json:"scrubd_version"`
					Revision      string `json:"revision,omitempty"`
					Modified      bool   `json:"modified,omitempty"`
					Go            string `json:"go"`
					ReportVersion int    `json:"report_version"`
				}{jsonVersion, b.Version, b.Revision, b.Modified, b.Go, repair.ReportVersion})
			}
			fmt.Fprintf(out, "scrubd %s\n", versionString())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return c
}
