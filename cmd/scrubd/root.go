package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

type globalOptions struct {
	logLevel  string
	logFormat string
	tmpDir    string
	stateDir  string
}

var global globalOptions

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "scrubd",
		Short: "Make, mount, scrub and repair scrubd filesystem images",
		Long: `scrubd keeps a filesystem image healthy: it makes images, mounts them
through FUSE, checks every structure while they are in use or offline, and
rebuilds damaged metadata online.

EXIT STATUS
  fsck and scrub exit as fsck(8): 0 no errors, 1 errors corrected, 4 errors
  left uncorrected, 8 operational error (including "not a scrubd
  filesystem"), 16 usage error, 32 canceled by the user (after printing the
  partial report). Every other command exits 0 on success, 1 on failure
  and 2 for a usage error. With --json, a failure prints a JSON object
  {"version", "error", "code", "kind"} on stdout.`,
		Example: `  scrubd mkfs fs.img --size 1G
  scrubd mount fs.img /mnt/fs &
  scrubd scrub /mnt/fs --repair --json
  scrubd fsck fs.img`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("scrubd {{.Version}}\n")
	root.Args = cobra.ArbitraryArgs
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError(fmt.Errorf("unknown command %q\nSee 'scrubd --help'.", args[0]))
		}
		return cmd.Help()
	}
	root.PersistentFlags().StringVar(&global.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&global.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&global.tmpDir, "tmpdir", "", "directory for repairs' temporary files (default: anonymous memory, swappable)")
	root.PersistentFlags().StringVar(&global.stateDir, "state-dir", "", "where run reports are kept (default: $SCRUBD_STATE_DIR, /var/lib/scrubd for root, else $XDG_STATE_HOME/scrubd)")
	root.AddCommand(newMkfsCmd(), newInfoCmd(), newFsckCmd(), newDemoCmd(), newMountCmd(), newScrubCmd(), newInjectCmd(), newVersionCmd(),
		newStatusCmd(), newPauseCmd(), newResumeCmd(), newCancelCmd(), newReportCmd(), newHealthCmd(), newGenerateCmd(), newUpgradeCmd(), newSubvolCmd())
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			// "completion nosuch" is a usage error, not its help.
			c.Args = cobra.NoArgs
			c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
			c.Example = `  scrubd completion bash > /etc/bash_completion.d/scrubd
  scrubd completion zsh > "${fpath[1]}/_scrubd"
  scrubd completion fish > ~/.config/fish/completions/scrubd.fish`
		}
		usageErrors(c)
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError(fmt.Errorf("%w\nSee '%s --help'.", err, cmd.CommandPath()))
	})
	registerCompletions(root)
	return root
}

// usageErrors makes bad arguments and bad flags of c usage errors (exit 2,
// or 16 for fsck and scrub).
func usageErrors(c *cobra.Command) {
	args := c.Args
	if args == nil {
		args = cobra.ArbitraryArgs
		if c.HasSubCommands() {
			args = cobra.NoArgs
		}
	}
	c.Args = func(cmd *cobra.Command, a []string) error {
		if err := args(cmd, a); err != nil {
			var ee *exitError
			if errors.As(err, &ee) {
				return err
			}
			return usageError(fmt.Errorf("%w\nSee '%s --help'.", err, cmd.CommandPath()))
		}
		return nil
	}
	c.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError(fmt.Errorf("%w\nSee '%s --help'.", err, cmd.CommandPath()))
	})
}

// logger builds the logger the global flags ask for, on stderr.
func logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(global.logLevel)); err != nil {
		return nil, usageError(fmt.Errorf("--log-level: %w", err))
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch global.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, usageError(fmt.Errorf("--log-format %q: want text or json", global.logFormat))
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseSize reads sizes like 4096, 256M, 4G, 1.5T, 64MiB (powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || f*float64(mult) > 1<<60 {
		return 0, fmt.Errorf("invalid size %q: want a positive number with an optional K, M, G, T or P suffix", s)
	}
	return int64(f * float64(mult)), nil
}
