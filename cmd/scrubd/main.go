// Command scrubd makes, mounts, checks and repairs scrubd images.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/repair"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, err := newRootCmd().ExecuteContextC(ctx)
	os.Exit(finish(cmd, err, os.Stdout, os.Stderr))
}

// Exit codes. fsck and scrub exit as fsck(8); every other command 0 on
// success, 1 on failure, 2 for a usage error. docs/operations.md lists
// them all.
const (
	exitOK        = 0
	exitFailure   = 1
	exitUsage     = 2
	exitFsckUsage = 16 // fsck(8): usage or syntax error
	// exitCanceled is fsck(8)'s "checking canceled by user request": an
	// interrupted fsck or scrub, after its partial report.
	exitCanceled = 32
)

// exitError carries a command's exit code. A nil err with a code reports a
// result (fsck found damage) rather than a failure. A usage error's code
// depends on the command (16 for fsck and scrub, 2 for the others) and is
// chosen by finish.
type exitError struct {
	code  int
	usage bool
	err   error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// usageError marks err as a usage error: bad arguments, flags or values.
func usageError(err error) error { return &exitError{usage: true, err: err} }

// fsckLike says whether the command exits as fsck(8).
func fsckLike(cmd *cobra.Command) bool {
	return cmd != nil && (cmd.Name() == "fsck" || cmd.Name() == "scrub")
}

// exitCode maps a command's error to its exit code.
func exitCode(cmd *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	switch {
	case errors.As(err, &ee) && ee.usage:
		if fsckLike(cmd) {
			return exitFsckUsage
		}
		return exitUsage
	case errors.As(err, &ee):
		return ee.code
	case fsckLike(cmd):
		return repair.ExitOperational
	}
	return exitFailure
}

// errorDoc is what --json prints on stdout when a command fails.
type errorDoc struct {
	Version int    `json:"version"`
	Error   string `json:"error"`
	Code    int    `json:"code"`
	// Kind classifies the error: "usage", "not_a_filesystem",
	// "canceled" or "failed".
	Kind string `json:"kind"`
}

// finish prints the error (on stderr, and with --json as a JSON error
// object on stdout) and returns the exit code.
func finish(cmd *cobra.Command, err error, stdout, stderr io.Writer) int {
	code := exitCode(cmd, err)
	var ee *exitError
	if err == nil || (errors.As(err, &ee) && ee.err == nil) {
		return code // a result, already printed
	}
	fmt.Fprintln(stderr, "scrubd:", err)
	if wantsJSON(cmd) && !reported(err) {
		kind := "failed"
		switch {
		case errors.As(err, &ee) && ee.usage:
			kind = "usage"
		case errors.Is(err, format.ErrNotFilesystem):
			kind = "not_a_filesystem"
		case errors.Is(err, context.Canceled):
			kind = "canceled"
		}
		printJSON(stdout, errorDoc{Version: jsonVersion, Error: err.Error(), Code: code, Kind: kind})
	}
	return code
}

// jsonVersion versions the JSON documents the CLI prints itself (error
// objects, version); reports and info carry their own.
const jsonVersion = 1

// wantsJSON says whether the command was asked for JSON output.
func wantsJSON(cmd *cobra.Command) bool {
	if cmd != nil {
		if f := cmd.Flags().Lookup("json"); f != nil && f.Value.String() == "true" {
			return true
		}
	}
	// Flags after a bad one are never parsed: look for it by hand.
	for _, a := range os.Args[1:] {
		if a == "--" {
			break
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

// reportedError is an error whose command already printed a JSON
// document describing it (a partial report): finish prints no error
// object on top.
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

func reported(err error) bool {
	var re *reportedError
	return errors.As(err, &re)
}
