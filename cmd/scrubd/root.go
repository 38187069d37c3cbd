package main

import (
	"encoding/json"
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
}

var global globalOptions

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "scrubd",
		Short: "Make, mount, scrub and repair scrubd filesystem images",
		Long: `scrubd keeps a filesystem image healthy: it makes images, checks them
offline, and (in later commands) mounts them, scrubs them on a schedule while
they are in use, and rebuilds damaged metadata online.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&global.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&global.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&global.tmpDir, "tmpdir", "", "directory for repairs' temporary files (default: anonymous memory, swappable)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(2, fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath()))
	})
	root.AddCommand(newMkfsCmd(), newInfoCmd(), newFsckCmd(), newDemoCmd(), newMountCmd(), newScrubCmd(), newInjectCmd())
	return root
}

// logger builds the logger the global flags ask for, on stderr.
func logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(global.logLevel)); err != nil {
		return nil, withCode(2, fmt.Errorf("--log-level: %w", err))
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch global.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, withCode(2, fmt.Errorf("--log-format %q: want text or json", global.logFormat))
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

// fsckUsage makes a command that takes one TARGET report usage errors with
// fsck(8)'s exit code 16 (bad arguments and bad flags alike).
func fsckUsage(c *cobra.Command) {
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(1)(cmd, args); err != nil {
			return withCode(16, err)
		}
		return nil
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(16, fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath()))
	})
}
