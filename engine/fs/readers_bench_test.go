package fs

import (
	"fmt"
	"sync"
	"testing"
)

// readersFileSize is the size of each file BenchmarkParallelReaders reads.
const readersFileSize = 8 << 20

// readersChunk is the size of one read: what the kernel asks of a FUSE
// filesystem at most by default.
const readersChunk = 128 << 10

// BenchmarkParallelReaders reads four files of 8 MiB whole, in 128 KiB
// reads, through the Go API on an image file: one reader reading them
// one after the other, then four readers, one file each. An op is the
// four files; the speedup is the ratio of the two ns/op.
func BenchmarkParallelReaders(b *testing.B) {
	f, _ := benchFS(b, 256<<20, Options{})
	defer f.Close()
	inos := makeReaderFiles(b, f, 4)
	read := func(ino uint64) error {
		buf := make([]byte, readersChunk)
		for off := int64(0); off < readersFileSize; off += readersChunk {
			n, err := f.Read(ino, buf, off)
			if err != nil {
				return err
			}
			if n != readersChunk || buf[0] != byte(ino) {
				return fmt.Errorf("inode %d offset %d: read %d bytes starting %d", ino, off, n, buf[0])
			}
		}
		return nil
	}
	for _, readers := range []int{1, 4} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			b.SetBytes(int64(len(inos)) * readersFileSize)
			for i := 0; i < b.N; i++ {
				if err := readAll(inos, readers, read); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// makeReaderFiles creates n files of readersFileSize whose every byte is
// the low byte of their inode number, and commits them.
func makeReaderFiles(b *testing.B, f *FS, n int) []uint64 {
	b.Helper()
	var inos []uint64
	buf := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		a, err := f.Create(RootIno, fmt.Sprintf("r%d", i), NewInode{Mode: 0o644})
		if err != nil {
			b.Fatal(err)
		}
		for j := range buf {
			buf[j] = byte(a.Ino)
		}
		for off := int64(0); off < readersFileSize; off += int64(len(buf)) {
			if _, err := f.Write(a.Ino, buf, off); err != nil {
				b.Fatal(err)
			}
		}
		inos = append(inos, a.Ino)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return inos
}

// readAll reads every file of inos with read: readers goroutines, each
// taking the next file not yet read.
func readAll(inos []uint64, readers int, read func(ino uint64) error) error {
	next := make(chan uint64, len(inos))
	for _, ino := range inos {
		next <- ino
	}
	close(next)
	errs := make(chan error, readers)
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ino := range next {
				if err := read(ino); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
