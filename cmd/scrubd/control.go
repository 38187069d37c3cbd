package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
)

// statusDoc is what status, pause, resume, cancel and scrub --background
// print with --json: the mount's status, versioned.
type statusDoc struct {
	Version int `json:"version"`
	*daemon.Status
}

const controlExitStatus = `EXIT STATUS
  0 done; 1 failure (no scrubd mount serves MOUNTPOINT, or, for pause,
  resume and cancel, no scrub is running — or none paused, for resume;
  or the scrub already finished its work and is being recorded: too late
  to pause or cancel it, the message names its outcome, "scrubd status"
  shows it as the last scrub once recorded); 2 usage error.`

// newStatusCmd is "scrubd status".
func newStatusCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status MOUNTPOINT [--json]",
		Short: "Show what a mount's daemon is doing: its scrub, last run and health",
		Long: `Ask the scrubd mount serving MOUNTPOINT what it is doing: whether a scrub
runs (state idle, running or paused), its phase and progress — work done of
the total (metadata items checked plus 4 KiB blocks of file data read),
percent, rate and estimated time left — the last run's summary, and every
structure's health (healthy, sick or unchecked, with the generation and
time of its last check).

The percentage covers the run's first pass over the filesystem (the check,
and with --data the data scrub); repairs and the checks after them show as
phases after 100%. It never goes backwards and never passes 100.

` + controlExitStatus,
		Example: `  scrubd status /mnt/fs
  scrubd status /mnt/fs --json | jq .progress.percent`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd.Context(), args[0], func(ctx context.Context, cl *daemon.Client) (*daemon.Status, error) {
				return cl.Status(ctx)
			}, func(w io.Writer, st *daemon.Status) { printStatus(w, st) }, asJSON, cmd.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return c
}

// newControlCmd is "scrubd pause", "resume" or "cancel".
func newControlCmd(name, short, long string, op func(*daemon.Client, context.Context) (*daemon.Status, error)) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     name + " MOUNTPOINT [--json]",
		Short:   short,
		Long:    long + "\n\n" + controlExitStatus,
		Example: fmt.Sprintf("  scrubd %s /mnt/fs", name),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd.Context(), args[0], func(ctx context.Context, cl *daemon.Client) (*daemon.Status, error) {
				return op(cl, ctx)
			}, func(w io.Writer, st *daemon.Status) {
				fmt.Fprintf(w, "%s: scrub %s\n", st.Mountpoint, scrubState(st))
			}, asJSON, cmd.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status after it as JSON")
	return c
}

func newPauseCmd() *cobra.Command {
	return newControlCmd("pause", "Pause the scrub a mount is running",
		`Pause the scrub the scrubd mount serving MOUNTPOINT is running, at its next
unit of work, its next phase (each repair is one) or the end of its first
pass; "scrubd resume" lets it go on. A repair that has started runs to its
end; a paused scrub does not finish until resumed. A paused scrub keeps
the generation it checks pinned (its blocks are not reused until it
ends).`, (*daemon.Client).Pause)
}

func newResumeCmd() *cobra.Command {
	return newControlCmd("resume", "Resume a paused scrub",
		`Resume the scrub paused on the scrubd mount serving MOUNTPOINT.`, (*daemon.Client).Resume)
}

func newCancelCmd() *cobra.Command {
	return newControlCmd("cancel", "Stop the scrub a mount is running",
		`Stop the scrub the scrubd mount serving MOUNTPOINT is running (paused or
not). What it checked until then is kept as the last run's report, marked
interrupted ("scrubd status MOUNTPOINT --json" shows it under last_scrub).`, (*daemon.Client).Cancel)
}

// withClient dials the mount at target, runs call and prints its status
// (as JSON, or with human).
func withClient(ctx context.Context, target string, call func(context.Context, *daemon.Client) (*daemon.Status, error),
	human func(io.Writer, *daemon.Status), asJSON bool, w io.Writer) error {
	cl, err := daemon.Dial(target)
	if err != nil {
		return err
	}
	defer cl.Close()
	st, err := call(ctx, cl)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(w, statusDoc{Version: jsonVersion, Status: st})
	}
	human(w, st)
	return nil
}

// scrubState describes the scrub in one line.
func scrubState(st *daemon.Status) string {
	p := st.Progress
	if p == nil {
		// Idle, or a run starting or making its report.
		if st.State == "" {
			return "idle"
		}
		return st.State
	}
	s := fmt.Sprintf("%s: %s, %.1f%% (%s of %s)", st.State, p.Phase, p.Percent, humanize.Comma(int64(p.Done)), humanize.Comma(int64(p.Total)))
	if p.RateBytesS > 0 {
		s += ", " + humanize.IBytes(uint64(p.RateBytesS)) + "/s"
	}
	if p.ETAS >= 0 && p.Percent < 100 {
		s += ", about " + (time.Duration(p.ETAS * float64(time.Second))).Round(time.Second).String() + " left"
	}
	return s
}

// printStatus prints a mount's status for people.
func printStatus(w io.Writer, st *daemon.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "mount\t%s (image %s, pid %d, up %s)\n", st.Mountpoint, st.Image, st.PID, time.Since(st.Started).Round(time.Second))
	fmt.Fprintf(tw, "generation\t%d\n", st.Generation)
	mode := "read-write"
	if st.ReadOnly {
		mode = "read-only"
		if st.Aborted != "" {
			mode += " (" + st.Aborted + ")"
		}
	}
	fmt.Fprintf(tw, "mode\t%s\n", mode)
	fmt.Fprintf(tw, "scrub\t%s\n", scrubState(st))
	if l := st.LastScrub; l != nil {
		what := "metadata"
		if l.Data {
			what += " and data"
		}
		if l.Repair {
			what += ", repair"
		}
		line := fmt.Sprintf("%s (%s): %d found, %d repaired, took %s, %s", l.Status, what, l.Found, l.Repaired,
			time.Duration(l.DurationS*float64(time.Second)).Round(time.Millisecond), humanize.Time(l.Finished))
		if l.Error != "" {
			line += ": " + l.Error
		}
		fmt.Fprintf(tw, "last scrub\t%s\n", line)
	} else {
		fmt.Fprintf(tw, "last scrub\tnone since mount\n")
	}
	for _, sc := range st.Schedules {
		what := "metadata"
		if sc.Data {
			what += " and data"
		}
		if sc.Repair {
			what += ", repair"
		}
		line := fmt.Sprintf("%q (%s): next %s (%s)", sc.Spec, what, sc.Next.Local().Format("Mon 2006-01-02 15:04 MST"), humanize.Time(sc.Next))
		if sc.Skipped > 0 {
			line += fmt.Sprintf(", %d runs skipped (another was running)", sc.Skipped)
		}
		fmt.Fprintf(tw, "schedule\t%s\n", line)
	}
	tw.Flush()
	fmt.Fprintln(w)
	printHealthTable(w, st.Health)
}
