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
	copyAt uint64
	file   string
	offset uint64
	asJSON bool
}

func newInjectCmd() *cobra.Command {
	var o injectOptions
	c := &cobra.Command{
		Use:   "inject TARGET (--tree NAME [--level N] | --tree superblock [--copy N] | --file PATH [--offset N]) [--kind KIND] [--seed N] [--json]",
		Short: "Damage one metadata block, superblock copy or file data block on purpose, to rehearse scrub and repair",
		Long: `Damage one block of TARGET's last committed generation, so that scrub has
something to find and repair something to fix: a block of tree NAME, one
superblock copy (--tree superblock) or the data block holding byte N of a
file (--file PATH --offset N). This destroys data: use it on test images and
rehearsals only.

TARGET is a mountpoint served by "scrubd mount" (the mount process writes
the damage and drops its cached copy of the block) or an unmounted image.
An image a "scrubd mount" serves is refused: inject through its mountpoint.
On a busy mount the next commit may copy-on-write the damaged block away
(writing the intact copy it already holds in memory), and then there is
rightly nothing left for scrub to find (so does a damaged superblock copy:
every commit writes all copies anew).

Kinds: ` + strings.Join(inject.Kinds, ", ") + `.
  bitflip      flip a few bits after the header (a checksum mismatch)
  zero         zero the whole block
  drop-record  remove one record of a leaf, or one pointer of an interior
               node (and with it the subtree below), checksum kept valid
  wrong-owner  another owner: of one record in an rmap or file extent leaf,
               of the block itself (its header) anywhere else
  stale-gen    make the block claim an older generation
The block is chosen by --seed: the same seed on the same image picks the
same block and the same damage. --level N picks among the nodes of level N
only (0: leaves, 1: the interior nodes above them, ...).

--tree superblock damages one superblock copy (the primary at block 0 and
the backups at 16 and 256): the one at block --copy N, or one the seed
picks. The other copies must be intact, so the image still opens. Kinds:
  bitflip      flip bits outside the checksum field, left stale
               (the check finds super_copy_bad)
  zero         zero the copy (super_copy_bad)
  wrong-owner  a valid copy of another filesystem, another UUID
               (super_copy_bad)
  stale-gen    a valid copy of the previous generation (super_copy_stale)
drop-record and --level do not apply. fsck --repair, or any read-write
open, rewrites the copy.

--file PATH damages the data block holding byte --offset N (default 0) of
the regular file PATH inside the filesystem (e.g. /dir/a.txt; symlinks are
not followed), leaving its checksum as it was: scrub --data then finds
data_checksum naming the file, the offset of the block and its disk block.
Kinds: bitflip, zero. An offset in a hole or past the end is refused.

EXIT STATUS
  0 the damage was done (it is described); 1 it could not be (the reason is
  printed); 2 usage error.`,
		Example: `  scrubd inject fs.img --tree rmap --kind bitflip
  scrubd inject /mnt/fs --tree alloc --kind drop-record --level 1 --seed 7
  scrubd inject fs.img --tree extent --kind wrong-owner --json
  scrubd inject fs.img --tree superblock --copy 16 --kind stale-gen
  scrubd inject fs.img --file /dir/a.txt --offset 8192 --kind zero`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := logger(); err != nil {
				return err
			}
			opts, err := o.options(cmd)
			if err != nil {
				return usageError(err)
			}
			target := args[0]
			var res *inject.Result
			if mnt, served := daemon.Discover(target); served {
				req := daemon.Request{Tree: o.tree, Kind: o.kind, Seed: o.seed, Level: opts.Level, File: opts.File, Offset: opts.Offset}
				if opts.Copy != nil {
					c := uint64(*opts.Copy)
					req.Copy = &c
				}
				var cl *daemon.Client
				if cl, err = daemon.Dial(mnt); err == nil {
					res, err = cl.InjectRequest(cmd.Context(), req)
					cl.Close()
				}
			} else if err = checkOffline(target); err == nil {
				res, err = inject.Offline(target, opts)
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
			switch {
			case res.File != nil:
				fmt.Fprintf(out, "injected %s into %s offset %d (inode %d, disk block %d, generation %d): %s\n",
					res.Kind, res.File.Path, res.File.Offset, res.File.Inode, res.File.DiskBlock, res.Generation, res.Detail)
			case res.Tree == inject.Superblock:
				fmt.Fprintf(out, "injected %s into the superblock copy at block %d (generation %d): %s\n",
					res.Kind, res.Block, res.Generation, res.Detail)
			default:
				fmt.Fprintf(out, "injected %s into %s block %d (level %d, generation %d): %s\n",
					res.Kind, res.Tree, res.Block, res.Level, res.Generation, res.Detail)
			}
			return nil
		},
	}
	c.Flags().StringVar(&o.tree, "tree", "", "tree to damage: rmap, alloc, inode, … (see scrubd info), or superblock")
	c.Flags().StringVar(&o.kind, "kind", inject.Bitflip, "kind of damage")
	c.Flags().Uint64Var(&o.seed, "seed", 1, "seed choosing the block and the damage")
	c.Flags().IntVar(&o.level, "level", 0, "damage a node of this level only (0: a leaf; default: any level)")
	c.Flags().Uint64Var(&o.copyAt, "copy", 0, "with --tree superblock, damage the copy at this block (0, 16 or 256; default: the seed picks)")
	c.Flags().StringVar(&o.file, "file", "", "damage a data block of this file, a path inside the filesystem (instead of --tree)")
	c.Flags().Uint64Var(&o.offset, "offset", 0, "with --file, damage the block holding this byte of the file")
	c.Flags().BoolVar(&o.asJSON, "json", false, "print what was done as JSON")
	return c
}

// options checks the flags' combination and values and returns what they
// ask for; its errors are usage errors.
func (o *injectOptions) options(cmd *cobra.Command) (inject.Options, error) {
	set := cmd.Flags().Changed
	opts := inject.Options{Kind: o.kind, Seed: o.seed}
	switch {
	case o.tree == "" && o.file == "":
		return opts, fmt.Errorf("--tree or --file is required (e.g. --tree rmap)")
	case o.tree != "" && o.file != "":
		return opts, fmt.Errorf("--tree %s and --file %s: damage a tree or a file, not both", o.tree, o.file)
	case o.tree == inject.Superblock:
		opts.Tree = format.OwnerSuper
	case o.tree != "":
		tree, ok := format.TreeByName(o.tree)
		if !ok {
			return opts, fmt.Errorf("--tree %q: no such tree", o.tree)
		}
		opts.Tree = tree
	default:
		opts.File, opts.Offset = o.file, o.offset
	}
	if !slices.Contains(inject.Kinds, o.kind) {
		return opts, fmt.Errorf("--kind %q: want one of %s", o.kind, strings.Join(inject.Kinds, ", "))
	}
	if set("offset") && o.file == "" {
		return opts, fmt.Errorf("--offset goes with --file")
	}
	if set("copy") {
		if opts.Tree != format.OwnerSuper {
			return opts, fmt.Errorf("--copy goes with --tree superblock")
		}
		at := format.BlockNr(o.copyAt)
		opts.Copy = &at
	}
	if set("level") {
		switch {
		case opts.Tree == format.OwnerSuper:
			return opts, fmt.Errorf("--level does not apply to --tree superblock (a copy is one block)")
		case o.file != "":
			return opts, fmt.Errorf("--level does not apply to --file")
		case o.level < 0 || o.level > format.MaxLevel:
			return opts, fmt.Errorf("--level %d: want 0 (a leaf) to %d", o.level, format.MaxLevel)
		}
		opts.Level = &o.level
	}
	return opts, nil
}
