package fuse

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/fs"
)

// BenchmarkParallelReaders reads four files of 8 MiB whole, in 128 KiB
// reads (the kernel's largest FUSE read by default), through a real
// mount: one reader reading them one after the other, then four readers,
// one file each. An op is the four files; the speedup is the ratio of the
// two ns/op. Each file is opened anew for each read of it, which drops
// the kernel's cached pages of it (the mount does not keep them), so every
// byte comes through the filesystem. It needs root.
func BenchmarkParallelReaders(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("FUSE benchmarks need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		b.Skipf("no /dev/fuse: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		b.Skip("no fusermount3")
	}
	const files, size, chunk = 4, 8 << 20, 128 << 10
	img := filepath.Join(b.TempDir(), "fs.img")
	if err := engine.MkfsPath(img, 256<<20, false, engine.MkfsOptions{Preallocate: true}); err != nil {
		b.Fatal(err)
	}
	fsys, err := fs.OpenPath(img, fs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	srv, err := Mount(fsys, dir, Options{FsName: img})
	if err != nil {
		fsys.Close()
		b.Fatal(err)
	}
	defer func() {
		if err := srv.Unmount(); err != nil {
			b.Errorf("unmount: %v", err)
		}
		if err := fsys.Close(); err != nil {
			b.Errorf("close: %v", err)
		}
	}()
	var paths []string
	for i := 0; i < files; i++ {
		p := filepath.Join(dir, fmt.Sprintf("r%d", i))
		if err := os.WriteFile(p, bytes.Repeat([]byte{byte('a' + i)}, size), 0o644); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
	}
	if err := fsys.Sync(); err != nil {
		b.Fatal(err)
	}
	read := func(i int) error {
		fh, err := os.Open(paths[i])
		if err != nil {
			return err
		}
		defer fh.Close()
		buf := make([]byte, chunk)
		for off := int64(0); off < size; off += chunk {
			n, err := fh.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				return err
			}
			if n != chunk || buf[0] != byte('a'+i) || buf[n-1] != byte('a'+i) {
				return fmt.Errorf("%s offset %d: read %d bytes", paths[i], off, n)
			}
		}
		return nil
	}
	for _, readers := range []int{1, 4} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			b.SetBytes(files * size)
			for range b.N {
				next := make(chan int, files)
				for i := range files {
					next <- i
				}
				close(next)
				errs := make(chan error, readers)
				var wg sync.WaitGroup
				for range readers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range next {
							if err := read(i); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
