package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/history"
	"github.com/scrubd/scrubd/repair"
)

// keepOffline saves the report of an offline run in the history; a
// failure only warns (the run itself succeeded).
func keepOffline(cmd *cobra.Command, rep *repair.Report) {
	if rep.UUID == "" {
		return
	}
	st, err := history.Open(global.stateDir, rep.UUID)
	if err == nil {
		_, err = st.Save(rep)
	}
	if err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "scrubd: warning: the report was not kept in the history:", err)
	}
}

// reportList is what report --list --json prints.
type reportList struct {
	Version int               `json:"version"`
	UUID    string            `json:"uuid"`
	Reports []history.Summary `json:"reports"`
	// Unreadable counts stored reports that did not parse.
	Unreadable int `json:"unreadable,omitempty"`
}

var uuidArg = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// targetUUID finds the filesystem UUID of a mountpoint a scrubd mount
// serves, an image, or a UUID given as is.
func targetUUID(cmd *cobra.Command, target string) (string, error) {
	if uuidArg.MatchString(target) {
		return target, nil
	}
	mnt, ok := daemon.Discover(target)
	if !ok {
		// An image a mount serves: ask the mount, not the live image.
		mnt, ok = daemon.MountedImage(target)
	}
	if ok {
		cl, err := daemon.Dial(mnt)
		if err != nil {
			return "", err
		}
		defer cl.Close()
		st, err := cl.Status(cmd.Context())
		if err != nil {
			return "", err
		}
		return st.UUID, nil
	}
	if fi, err := os.Stat(target); err == nil && fi.IsDir() {
		return "", fmt.Errorf("%s is a directory no scrubd mount serves: give its image, or the filesystem's UUID", target)
	}
	e, err := engine.OpenPath(target, engine.Options{ReadOnly: true})
	if err != nil {
		return "", fmt.Errorf("%w (an image too damaged to open: give the filesystem's UUID instead)", err)
	}
	defer e.Close()
	s := e.Pin()
	defer s.Release()
	return s.Super().FSID.String(), nil
}

// newReportCmd is "scrubd report".
func newReportCmd() *cobra.Command {
	var list, last, asJSON bool
	var id string
	c := &cobra.Command{
		Use:   "report TARGET [--list | --last | --id ID] [--json]",
		Short: "Show the reports of past scrub and fsck runs",
		Long: `Show the kept report of a past run on the filesystem of TARGET — a
mountpoint a scrubd mount serves, an image, or the filesystem's UUID (for
an image that no longer opens).

Every scrub a mount runs (asked for or scheduled) and every offline fsck
and scrub keeps its full report in the state directory (--state-dir; by
default $SCRUBD_STATE_DIR, /var/lib/scrubd for root, else
$XDG_STATE_HOME/scrubd), one file per run under the filesystem's UUID;
the mount rotates them by --history-keep and --history-max-age (by
default 100 runs and a year).

--last (the default) shows the newest run's report, --id ID another one,
--list one line per run, newest first (with --json:
{"version": 1, "uuid", "reports": [...]}).

EXIT STATUS
  0 shown; 1 failure (no such run, no run recorded, TARGET unreadable);
  2 usage error.`,
		Example: `  scrubd report /mnt/fs
  scrubd report fs.img --list
  scrubd report /mnt/fs --id 20261205T031500.123456789Z --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, b := range []bool{list, last, id != ""} {
				if b {
					n++
				}
			}
			if n > 1 {
				return usageError(errors.New("give one of --list, --last and --id"))
			}
			uuid, err := targetUUID(cmd, args[0])
			if err != nil {
				return err
			}
			st, err := history.Open(global.stateDir, uuid)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if list {
				sums, bad, err := st.List()
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(out, reportList{Version: jsonVersion, UUID: uuid, Reports: append([]history.Summary{}, sums...), Unreadable: bad})
				}
				printList(out, uuid, sums, bad)
				return nil
			}
			rep, rid, err := st.Get(id)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(out, rep)
			}
			fmt.Fprintf(out, "run %s\n", rid)
			rep.WriteSummary(out)
			return nil
		},
	}
	c.Flags().BoolVar(&list, "list", false, "list every kept run, newest first")
	c.Flags().BoolVar(&last, "last", false, "show the newest run's report (the default)")
	c.Flags().StringVar(&id, "id", "", "show the report of run ID (see --list)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// printList prints the runs for people.
func printList(w io.Writer, uuid string, sums []history.Summary, bad int) {
	if len(sums) == 0 {
		fmt.Fprintf(w, "no run recorded for filesystem %s\n", uuid)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(sums) > 0 {
		fmt.Fprintln(tw, "ID\tSTARTED\tMODE\tRUN\tSTATUS\tFOUND\tREPAIRED\tTOOK")
	}
	for _, s := range sums {
		run := "check"
		if s.Data {
			run += "+data"
		}
		if s.Repair {
			run += "+repair"
		}
		status := s.Status
		if s.Interrupted {
			status += " (interrupted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.ID, humanize.Time(s.Started), s.Mode, run, status, s.Found, s.Repaired,
			time.Duration(s.DurationS*float64(time.Second)).Round(time.Millisecond))
	}
	tw.Flush()
	if bad > 0 {
		fmt.Fprintf(w, "%d stored reports could not be read\n", bad)
	}
}
