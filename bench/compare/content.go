package main

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// contentStats is what populate wrote into each filesystem.
type contentStats struct {
	Files     int   `json:"files"`
	TreeFiles int   `json:"tree_files"`
	FileBytes int64 `json:"file_bytes"` // all file data, small files included
	DataBytes int64 `json:"data_bytes"` // the fragmented and the data files
}

// noise is the pseudo-random bytes file content is cut from: the same
// for every filesystem, incompressible.
var noise = func() []byte {
	b := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}()

// chunk returns n bytes of noise starting at a point chosen by key.
func chunk(key uint64, n int) []byte {
	if n > len(noise)/2 {
		panic("chunk too large")
	}
	off := int((key * 0x9e3779b97f4a7c15) >> 40 % uint64(len(noise)/2))
	return noise[off : off+n]
}

// populate writes the content into root: the same on every filesystem.
//
//	files/dNNNN/fNNNNNNN  cfg.files small files, 1000 a directory, 0-8 KiB
//	tree/dNNNN/fNNNNNNN   cfg.treeFiles files, 0-4 KiB (the cp -a source)
//	frag/a, frag/b        cfg.fragMiB each, written interleaved in 64 KiB
//	                      chunks, each file synced every 1 MiB so that
//	                      delayed allocation cannot make them contiguous
//	data/dNNNN            cfg.dataGB GiB in 64 MiB files
func populate(ctx context.Context, cfg config, root string) (contentStats, error) {
	var st contentStats
	small := func(dir string, n, maxSize int, seed uint64) error {
		for i := 0; i < n; i++ {
			if i%1000 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := os.MkdirAll(filepath.Join(root, dir, fmt.Sprintf("d%04d", i/1000)), 0o755); err != nil {
					return err
				}
			}
			key := seed<<32 | uint64(i)
			size := int((key * 0xbf58476d1ce4e5b9 >> 33) % uint64(maxSize+1))
			p := filepath.Join(root, dir, fmt.Sprintf("d%04d", i/1000), fmt.Sprintf("f%07d", i))
			if err := os.WriteFile(p, chunk(key, size), 0o644); err != nil {
				return err
			}
			st.FileBytes += int64(size)
		}
		return nil
	}
	if err := small("files", cfg.files, 8192, 1); err != nil {
		return st, err
	}
	st.Files = cfg.files
	if err := small("tree", cfg.treeFiles, 4096, 2); err != nil {
		return st, err
	}
	st.TreeFiles = cfg.treeFiles
	if err := os.MkdirAll(filepath.Join(root, "frag"), 0o755); err != nil {
		return st, err
	}
	fa, err := os.Create(filepath.Join(root, "frag", "a"))
	if err != nil {
		return st, err
	}
	defer fa.Close()
	fb, err := os.Create(filepath.Join(root, "frag", "b"))
	if err != nil {
		return st, err
	}
	defer fb.Close()
	const step = 64 << 10
	for off := int64(0); off < int64(cfg.fragMiB)<<20; off += step {
		for k, f := range []*os.File{fa, fb} {
			if _, err := f.Write(chunk(uint64(off)+uint64(k), step)); err != nil {
				return st, err
			}
			if (off+step)%(1<<20) == 0 {
				if err := f.Sync(); err != nil {
					return st, err
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return st, err
		}
	}
	for _, f := range []*os.File{fa, fb} {
		if err := f.Close(); err != nil {
			return st, err
		}
	}
	frag := 2 * int64(cfg.fragMiB) << 20
	st.FileBytes += frag
	st.DataBytes += frag
	if err := os.MkdirAll(filepath.Join(root, "data"), 0o755); err != nil {
		return st, err
	}
	total := int64(cfg.dataGB * (1 << 30))
	for i := 0; total > 0; i++ {
		n := min(total, 64<<20)
		if err := writeFile(ctx, filepath.Join(root, "data", fmt.Sprintf("d%04d", i)), n, uint64(i)+100); err != nil {
			return st, err
		}
		total -= n
		st.FileBytes += n
		st.DataBytes += n
	}
	return st, syncDir(root)
}

// writeFile writes n bytes of noise to p in 1 MiB writes and syncs it.
func writeFile(ctx context.Context, p string, n int64, seed uint64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for off := int64(0); off < n; off += 1 << 20 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := f.Write(chunk(seed<<20+uint64(off>>20), int(min(n-off, 1<<20)))); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// syncDir syncs the filesystem root is on (syncfs).
func syncDir(root string) error {
	f, err := os.Open(root)
	if err != nil {
		return err
	}
	defer f.Close()
	return syncfs(f)
}

const (
	helperCRC      = "__crc32c"
	helperLoopback = "__loopback"
)

// crcMain is the bare crc32c pass: it reads the written ranges of FILE
// (SEEK_DATA/SEEK_HOLE: the fallocated, never written parts of an image
// read as zeroes and are skipped) in 1 MiB chunks, computes the CRC-32C of
// every 4 KiB block as a data scrub verifies a block's checksum, and
// prints the bytes read.
func crcMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: compare "+helperCRC+" FILE")
		return 2
	}
	total, acc, err := crcPass(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %08x\n", total, acc)
	return 0
}

func crcPass(p string) (int64, uint32, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	size := fi.Size()
	tab := crc32.MakeTable(crc32.Castagnoli)
	buf := make([]byte, 1<<20)
	var total int64
	var acc uint32
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // no data after off
				break
			}
			return total, acc, err
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return total, acc, err
		}
		for pos := start; pos < end; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			for i := 0; i < n; i += 4096 {
				acc ^= crc32.Checksum(buf[i:min(i+4096, n)], tab)
			}
			total += int64(n)
			pos += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				return total, acc, err
			}
		}
		off = end
	}
	return total, acc, nil
}
