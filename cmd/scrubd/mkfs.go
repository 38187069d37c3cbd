package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

type mkfsOptions struct {
	size        string
	force       bool
	label       string
	preallocate bool
}

func newMkfsCmd() *cobra.Command {
	var o mkfsOptions
	c := &cobra.Command{
		Use:   "mkfs IMAGE --size SIZE [--force] [--preallocate]",
		Short: "Make a new filesystem image",
		Long: `Make a new, empty filesystem in IMAGE: a regular file created at SIZE
(sparse), or a block device. An existing non-empty file or a block device is
only overwritten with --force.

--preallocate writes the whole image file first (like qemu-img's
preallocation=full), so the host filesystem never allocates a block of it
later: every later write is an overwrite, and an fsync flushes data without
a host journal commit (about twice as fast on ext4). It takes as long as
writing SIZE bytes; the image then uses SIZE bytes of host space.

EXIT STATUS
  0 the image was made; 1 it was not (the reason is printed); 2 usage error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(o.size)
			if err != nil {
				return withCode(2, err)
			}
			size -= size % format.BlockSize
			mo := engine.MkfsOptions{Label: o.label, Preallocate: o.preallocate}
			if o.preallocate {
				last := -1
				mo.Progress = func(done, total int64) {
					if pct := int(100 * done / total); pct/10 != last/10 {
						last = pct
						fmt.Fprintf(cmd.ErrOrStderr(), "preallocating %s: %d%%\n", args[0], pct)
					}
				}
			}
			if err := engine.MkfsPath(args[0], size, o.force, mo); err != nil {
				if errors.Is(err, disk.ErrExists) {
					return fmt.Errorf("%w (pass --force to overwrite)", err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "made %s: %d blocks of %d bytes\n", args[0], size/format.BlockSize, format.BlockSize)
			return nil
		},
	}
	c.Flags().StringVar(&o.size, "size", "", "image size, e.g. 256M or 4G (required)")
	c.Flags().BoolVar(&o.force, "force", false, "overwrite an existing non-empty image or a block device")
	c.Flags().StringVar(&o.label, "label", "", "filesystem label")
	c.Flags().BoolVar(&o.preallocate, "preallocate", false, "write the whole image file first, so the host allocates no blocks later")
	c.MarkFlagRequired("size")
	return c
}
