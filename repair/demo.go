package repair

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/format"
	"github.com/scrubd/scrubd/engine/fs"
)

// DemoOptions configure Demo.
type DemoOptions Options

// DemoStep is one step of the demo and whether it held.
type DemoStep struct {
	Name   string  `json:"name"`
	OK     bool    `json:"ok"`
	Detail string  `json:"detail"`
	TookS  float64 `json:"took_s"`
}

// DemoResult is what Demo did.
type DemoResult struct {
	Image  string     `json:"image"`
	OK     bool       `json:"ok"`
	Steps  []DemoStep `json:"steps"`
	Before *Report    `json:"report_before_damage"`
	After  *Report    `json:"report_after_damage"`
}

// Demo runs the product end to end on a default image in dir (a new
// temporary directory if empty): make an image, write to it, check it is
// clean, damage the reverse-mapping tree, and check that the damage is found
// and named. Progress is reported through step, which may be nil.
func Demo(ctx context.Context, dir string, opts DemoOptions, step func(DemoStep)) (*DemoResult, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "scrubd-demo-")
		if err != nil {
			return nil, err
		}
		dir = d
	}
	res := &DemoResult{Image: filepath.Join(dir, "demo.img"), OK: true}
	do := func(name string, fn func() (string, error)) error {
		start := time.Now()
		detail, err := fn()
		s := DemoStep{Name: name, OK: err == nil, Detail: detail, TookS: time.Since(start).Seconds()}
		if err != nil {
			s.Detail = err.Error()
			res.OK = false
		}
		res.Steps = append(res.Steps, s)
		if step != nil {
			step(s)
		}
		return err
	}
	const size = 64 << 20
	if err := do("mkfs", func() (string, error) {
		return fmt.Sprintf("%d MiB image", size>>20), engine.MkfsPath(res.Image, size, true, engine.MkfsOptions{Label: "demo"})
	}); err != nil {
		return res, nil
	}
	if err := do("write", func() (string, error) {
		f, err := fs.OpenPath(res.Image, fs.Options{Logger: opts.Logger, CommitInterval: -1})
		if err != nil {
			return "", err
		}
		const files = 200
		buf := make([]byte, 16<<10)
		for i := 0; i < files; i++ {
			a, err := f.Create(fs.RootIno, fmt.Sprintf("file-%03d", i), fs.NewInode{Mode: 0o644})
			if err != nil {
				f.Close()
				return "", err
			}
			binary.LittleEndian.PutUint64(buf, uint64(i)*2654435761)
			if _, err := f.Write(a.Ino, buf, 0); err != nil {
				f.Close()
				return "", err
			}
		}
		st := f.Engine().Stats()
		if err := f.Close(); err != nil {
			return "", err
		}
		return fmt.Sprintf("%d files of %d KiB; delayed refs: %d queued, %d merged away, %d applied",
			files, len(buf)>>10, st.Refs.Queued, st.Refs.Merged, st.Refs.Applied), nil
	}); err != nil {
		return res, nil
	}
	if err := do("check clean", func() (string, error) {
		r, err := CheckOffline(ctx, res.Image, Options(opts))
		if err != nil {
			return "", err
		}
		res.Before = r
		if r.Status != StatusClean {
			return "", fmt.Errorf("fresh image is not clean: %d findings", r.Found)
		}
		return fmt.Sprintf("generation %d clean in %.2fs", r.Generation, r.DurationS), nil
	}); err != nil {
		return res, nil
	}
	var damaged uint64
	if err := do("damage rmap", func() (string, error) {
		b, err := flipRootByte(res.Image, format.TreeRmap)
		damaged = uint64(b)
		return fmt.Sprintf("flipped one bit in block %d, the rmap tree's root", b), err
	}); err != nil {
		return res, nil
	}
	do("check finds damage", func() (string, error) {
		r, err := CheckOffline(ctx, res.Image, Options(opts))
		if err != nil {
			return "", err
		}
		res.After = r
		for _, s := range r.Structures {
			for _, f := range s.Findings {
				if s.Name == "rmap" && f.Block == damaged {
					return fmt.Sprintf("%s block %d: %s", s.Name, f.Block, f.Name), nil
				}
			}
		}
		return "", fmt.Errorf("the damage to rmap block %d was not reported (%d findings)", damaged, r.Found)
	})
	return res, nil
}

// flipRootByte flips one bit in the root block of tree id of an unmounted
// image and returns the block.
func flipRootByte(path string, id format.TreeID) (format.BlockNr, error) {
	e, err := engine.OpenPath(path, engine.Options{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	s := e.Pin()
	ri, ok := s.Root(id)
	s.Release()
	e.Close()
	if !ok {
		return 0, fmt.Errorf("image has no %s tree", id)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	off := int64(ri.Root.Block)*format.BlockSize + 1000
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return 0, err
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		return 0, err
	}
	return ri.Root.Block, f.Sync()
}
