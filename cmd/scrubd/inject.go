package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/daemon"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/inject"
)

type injectOptions struct {
	tree   string
	kind   string
	seed   uint64
	level  int
	asJSON bool
}

func newInjectCmd() *cobra.Command {
	var o injectOptions
	c := &cobra.Command{
		Use:   "inject TARGET --tree NAME [--kind KIND] [--seed N] [--level N] [--json]",
		Short: "Damage one metadata block on purpose, to rehearse scrub and repair",
		Long: `Damage one block of tree NAME in TARGET's last committed generation, so
that scrub has something to find and repair something to fix. This destroys
metadata: use it on test images and rehearsals only.

TARGET is a mountpoint served by "scrubd mount" (the mount process writes
the damage and drops its cached copy of the block) or an unmounted image.
An image a "scrubd mount" serves is refused: inject through its mountpoint.
On a busy mount the next commit may copy-on-write the damaged block away
(writing the intact copy it already holds in memory), and then there is
rightly nothing left for scrub to find.

Kinds: ` + strings.Join(inject.Kinds, ", ") + `.
  bitflip      flip a few bits after the header (a checksum mismatch)
  zero         zero the whole block
  drop-record  remove one record of a leaf, checksum kept valid
  drop-record  remove one record of a leaf, or one pointer of an interior
               node (and with it the subtree below), checksum kept valid
  wrong-owner  another owner: of one record in an rmap or file extent leaf,
               of the block itself (its header) anywhere else
  stale-gen    make the block claim an older generation
The block is chosen by --seed: the same seed on the same image picks the
same block and the same damage. --level N picks among the nodes of level N
only (0: leaves, 1: the interior nodes above them, ...).

EXIT STATUS
  0 the damage was done (it is described); 1 it could not be (the reason is
  printed); 2 usage error.`,
		Example: `  scrubd inject fs.img --tree rmap --kind bitflip
  scrubd inject /mnt/fs --tree alloc --kind drop-record --level 1 --seed 7
  scrubd inject fs.img --tree extent --kind wrong-owner --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := logger(); err != nil {
				return err
			}
			if o.tree == "" {
				return usageError(fmt.Errorf("--tree is required (e.g. --tree rmap)"))
			}
			tree, ok := format.TreeByName(o.tree)
			if !ok {
				return usageError(fmt.Errorf("--tree %q: no such tree", o.tree))
			}
			if !slices.Contains(inject.Kinds, o.kind) {
				return usageError(fmt.Errorf("--kind %q: want one of %s", o.kind, strings.Join(inject.Kinds, ", ")))
			}
			var level *int
			if cmd.Flags().Changed("level") {
				if o.level < 0 || o.level > format.MaxLevel {
					return usageError(fmt.Errorf("--level %d: want 0 (a leaf) to %d", o.level, format.MaxLevel))
				}
				level = &o.level
			}
			target := args[0]
			var res *inject.Result
			var err error
			if mnt, served := daemon.Discover(target); served {
				var cl *daemon.Client
				if cl, err = daemon.Dial(mnt); err == nil {
					res, err = cl.InjectLevel(cmd.Context(), o.tree, o.kind, o.seed, level)
					cl.Close()
				}
			} else if err = checkOffline(target); err == nil {
				res, err = inject.Offline(target, inject.Options{Tree: tree, Kind: o.kind, Seed: o.seed, Level: level})
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.asJSON {
				if err := printJSON(out, res); err != nil {
					return withCode(1, err)
				}
				return nil
			}
			fmt.Fprintf(out, "injected %s into %s block %d (level %d, generation %d): %s\n",
				res.Kind, res.Tree, res.Block, res.Level, res.Generation, res.Detail)
			return nil
		},
	}
	c.Flags().StringVar(&o.tree, "tree", "", "tree to damage: rmap, alloc, inode, … (see scrubd info)")
	c.Flags().StringVar(&o.kind, "kind", inject.Bitflip, "kind of damage")
	c.Flags().Uint64Var(&o.seed, "seed", 1, "seed choosing the block and the damage")
	c.Flags().IntVar(&o.level, "level", 0, "damage a node of this level only (0: a leaf; default: any level)")
	c.Flags().BoolVar(&o.asJSON, "json", false, "print what was done as JSON")
	return c
}
