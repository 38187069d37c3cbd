package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenerateCmd is "scrubd generate".
func newGenerateCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "generate DIR",
		Short: "Write the man pages and shell completions into DIR",
		Long: `Write a man page for every command into DIR/man1 (scrubd.1,
scrubd-mount.1, …) and the shell completions into DIR/completions
(scrubd.bash, _scrubd for zsh, scrubd.fish), from the commands' own help:
they cannot drift from the binary. DIR is created if needed.

EXIT STATUS
  0 written; 1 failure; 2 usage error.`,
		Example: `  scrubd generate /usr/local/share
  man -l /usr/local/share/man1/scrubd-mount.1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			man := filepath.Join(args[0], "man1")
			comp := filepath.Join(args[0], "completions")
			for _, d := range []string{man, comp} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			header := &doc.GenManHeader{Title: "SCRUBD", Section: "1", Source: "scrubd " + versionString(), Manual: "scrubd manual"}
			root.DisableAutoGenTag = true
			if err := doc.GenManTree(root, header, man); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			for name, gen := range map[string]func(string) error{
				"scrubd.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
				"_scrubd":     root.GenZshCompletionFile,
				"scrubd.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
			} {
				if err := gen(filepath.Join(comp, name)); err != nil {
					return fmt.Errorf("completion %s: %w", name, err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote man pages to %s and completions to %s\n", man, comp)
			return nil
		},
	}
	return c
}
