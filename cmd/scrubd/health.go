package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/history"
)

// healthDoc is what health --json prints.
type healthDoc struct {
	Version int    `json:"version"`
	UUID    string `json:"uuid"`
	// Source says where the states come from: "mount" (the live mount's
	// health, kept current by its scrubs and by damage met in use) or
	// "report" (the newest kept report of an unmounted filesystem).
	Source string `json:"source"`
	// ReportID names that report (source "report").
	ReportID   string                   `json:"report_id,omitempty"`
	Structures []daemon.StructureHealth `json:"structures"`
}

// newHealthCmd is "scrubd health".
func newHealthCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "health TARGET [--json]",
		Short: "Show every structure's health: healthy, sick or unchecked",
		Long: `List each structure of the filesystem of TARGET with its state (healthy,
sick or unchecked), the generation and time of its last check, and the
findings that made it sick.

For a mountpoint a scrubd mount serves, the states are the mount's: kept
current by every scrub and by damage met in normal I/O. For an image (or
a filesystem UUID), they come from the newest kept report of a run on it
("scrubd report"): a structure with findings left is sick; without a
kept report every structure is unchecked.

EXIT STATUS
  0 every structure healthy or unchecked; 4 a structure is sick; 1
  failure; 2 usage error.`,
		Example: `  scrubd health /mnt/fs
  scrubd health fs.img --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc := healthDoc{Version: jsonVersion}
			mnt, ok := daemon.Discover(args[0])
			if !ok {
				mnt, ok = daemon.MountedImage(args[0])
			}
			if ok {
				cl, err := daemon.Dial(mnt)
				if err != nil {
					return err
				}
				defer cl.Close()
				st, err := cl.Status(cmd.Context())
				if err != nil {
					return err
				}
				doc.UUID, doc.Source, doc.Structures = st.UUID, "mount", st.Health
			} else {
				uuid, err := targetUUID(cmd, args[0])
				if err != nil {
					return err
				}
				doc.UUID, doc.Source = uuid, "report"
				hs, err := history.Open(global.stateDir, uuid)
				if err != nil {
					return err
				}
				rep, id, err := hs.Get("")
				if err == nil {
					doc.ReportID = id
					at := rep.Started.UTC()
					for _, s := range rep.Structures {
						h := daemon.StructureHealth{Name: s.Name, State: "healthy", Generation: rep.Generation, CheckedAt: &at}
						for _, f := range s.Findings {
							if !f.Repaired {
								h.State = "sick"
								h.Findings = append(h.Findings, f.ID)
							}
						}
						doc.Structures = append(doc.Structures, h)
					}
				}
			}
			sick := false
			for _, h := range doc.Structures {
				sick = sick || h.State == "sick"
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if doc.Structures == nil {
					doc.Structures = []daemon.StructureHealth{}
				}
				if err := printJSON(out, doc); err != nil {
					return err
				}
			} else {
				printHealth(out, doc)
			}
			if sick {
				return withCode(4, nil)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func printHealth(w io.Writer, doc healthDoc) {
	switch {
	case doc.Source == "report" && doc.ReportID == "":
		fmt.Fprintf(w, "filesystem %s: no run kept; every structure unchecked (run scrubd fsck or scrub)\n", doc.UUID)
		return
	case doc.Source == "report":
		fmt.Fprintf(w, "filesystem %s, from the report of run %s\n", doc.UUID, doc.ReportID)
	default:
		fmt.Fprintf(w, "filesystem %s, as the mount sees it\n", doc.UUID)
	}
	printHealthTable(w, doc.Structures)
}

// printHealthTable prints one line per structure: its state, the last
// check and the findings that made it sick.
func printHealthTable(w io.Writer, hs []daemon.StructureHealth) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STRUCTURE\tSTATE\tCHECKED\tFINDINGS")
	for _, h := range hs {
		checked := "-"
		if h.CheckedAt != nil {
			checked = fmt.Sprintf("gen %d, %s", h.Generation, humanize.Time(h.CheckedAt.In(time.Local)))
		}
		var ids []string
		for _, id := range h.Findings {
			ids = append(ids, engine.ErrorID(id).Name())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", h.Name, h.State, checked, strings.Join(ids, " "))
	}
	tw.Flush()
}
