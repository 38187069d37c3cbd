package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// copyRows: cp of one large file inside each filesystem, its time and the
// space the copy takes. GNU cp (coreutils 9) shares extents where the
// filesystem can: FICLONE on XFS and btrfs (reflinks), copy_file_range on
// the scrubd mount (FICLONE does not reach FUSE); ext4 copies the bytes.
func (b *bench) copyRows() error {
	for _, p := range peers {
		if err := b.mountPeer(p); err != nil {
			return err
		}
	}
	if err := b.mountScrubd(); err != nil {
		return err
	}
	mib := b.cfg.seqMiB
	all := []target{{name: "scrubd", server: b.server["scrubd"]}, {name: "ext4"}, {name: "xfs"}, {name: "btrfs"}}
	for i := range all {
		all[i].dir = filepath.Join(b.mnts[all[i].name], "copy")
		if err := os.MkdirAll(all[i].dir, 0o755); err != nil {
			return err
		}
		b.logf("writing the %d MiB source file on %s", mib, all[i].name)
		if err := writeFile(b.ctx, filepath.Join(all[i].dir, "src.dat"), int64(mib)<<20, 3000); err != nil {
			return err
		}
		if err := syncDir(all[i].dir); err != nil {
			return err
		}
	}
	fresh := func(t target) func() error {
		return func() error {
			if err := os.RemoveAll(filepath.Join(t.dir, "copy.dat")); err != nil {
				return err
			}
			return syncDir(t.dir)
		}
	}
	// The space: used blocks before and after the copy, which is then
	// fsync'd (sync FILE; a FUSE server never sees sync(1)).
	space := `df -B1M --output=used . | tail -n 1; cp src.dat copy.dat; sync copy.dat; sync; df -B1M --output=used . | tail -n 1`
	ops := []op{
		{name: fmt.Sprintf("cp of a %d MiB file", mib), build: func(t target) (spec, string, error) {
			return spec{label: "cp " + t.name, argv: []string{"sh", "-c", "cp src.dat copy.dat && sync copy.dat"}, dir: t.dir, server: t.server,
				pre: fresh(t), post: fresh(t)}, "", nil
		}},
		{name: fmt.Sprintf("space the %d MiB copy takes", mib), unit: "MiB", build: func(t target) (spec, string, error) {
			return spec{label: "cp space " + t.name, argv: []string{"sh", "-c", space}, dir: t.dir, server: t.server,
				pre: fresh(t), post: fresh(t), metric: usedDelta}, "", nil
		}},
	}
	return b.runGroup("copy", ops, all[0], all[1:])
}

// usedDelta reads two df "used" figures (MiB) and makes their difference
// the metric.
func usedDelta(out []byte, s *sample) error {
	f := bytes.Fields(out)
	if len(f) != 2 {
		return fmt.Errorf("df printed %q, want two figures", out)
	}
	before, err := strconv.ParseFloat(string(f[0]), 64)
	if err != nil {
		return err
	}
	after, err := strconv.ParseFloat(string(f[1]), 64)
	if err != nil {
		return err
	}
	s.Metric = max(0, after-before)
	return nil
}
