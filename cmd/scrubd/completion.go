package main

import (
	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/inject"
)

// registerCompletions completes flag values in the shell completions
// ("scrubd completion bash|zsh|fish|powershell").
func registerCompletions(root *cobra.Command) {
	fixed := func(vals ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return vals, cobra.ShellCompDirectiveNoFileComp
		}
	}
	root.RegisterFlagCompletionFunc("log-level", fixed("debug", "info", "warn", "error"))
	root.RegisterFlagCompletionFunc("log-format", fixed("text", "json"))
	root.RegisterFlagCompletionFunc("tmpdir", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return nil, cobra.ShellCompDirectiveFilterDirs
	})
	var trees []string
	for _, id := range append(format.KnownTrees, format.TreeXattr, format.TreeLog) {
		trees = append(trees, id.String())
	}
	for _, c := range root.Commands() {
		switch c.Name() {
		case "inject":
			c.RegisterFlagCompletionFunc("tree", fixed(append(trees, inject.Superblock)...))
			c.RegisterFlagCompletionFunc("kind", fixed(inject.Kinds...))
			c.RegisterFlagCompletionFunc("level", fixed("0", "1", "2", "3"))
		case "mkfs":
			c.RegisterFlagCompletionFunc("size", fixed("256M", "1G", "4G", "16G", "64G"))
			c.RegisterFlagCompletionFunc("label", cobra.NoFileCompletions)
		case "demo":
			c.RegisterFlagCompletionFunc("dir", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				return nil, cobra.ShellCompDirectiveFilterDirs
			})
		}
	}
}
