package fs

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/scrubd/scrubd/engine"
	"github.com/scrubd/scrubd/engine/disk"
	"github.com/scrubd/scrubd/engine/format"
)

// pauseReads makes the next Read of ino stop between its plan and its
// device reads: planned is closed when it gets there, and it goes on when
// resume is closed.
func pauseReads(t *testing.T, ino uint64) (planned, resume chan struct{}) {
	planned, resume = make(chan struct{}), make(chan struct{})
	var once sync.Once
	readHook = func(i uint64) {
		if i != ino {
			return
		}
		once.Do(func() {
			close(planned)
			<-resume
		})
	}
	t.Cleanup(func() { readHook = nil })
	return planned, resume
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// A read that planned its blocks, then waited while a writer overwrote
// the file, committed (twice: the blocks it dropped are released once
// that is durable) and filled the image with another file — which takes
// the dropped blocks if the read does not hold them — returns the bytes
// it planned: the old ones, whole, with no checksum error. Both for data
// committed before the read and for data of the running transaction
// (whose blocks return to the allocator at once when it drops them).
func TestReadHoldsBlocksAcrossOverwrite(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed=%v", committed), func(t *testing.T) {
			// A small image: filling it is quick.
			dev := disk.NewMem(1536 * format.BlockSize)
			if err := engine.Mkfs(dev, engine.MkfsOptions{}); err != nil {
				t.Fatal(err)
			}
			f := mount(t, dev, Options{})
			defer f.Close()
			const size = 256 << 10
			a, err := f.Create(RootIno, "a", NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(a.Ino, fill(size, 0xaa), 0); err != nil {
				t.Fatal(err)
			}
			if committed {
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			planned, resume := pauseReads(t, a.Ino)
			type result struct {
				n   int
				err error
				buf []byte
			}
			done := make(chan result, 1)
			go func() {
				buf := make([]byte, size)
				n, err := f.Read(a.Ino, buf, 0)
				done <- result{n, err, buf}
			}()
			select {
			case <-planned:
			case <-time.After(20 * time.Second):
				t.Fatal("the read never planned")
			}
			// The writer is not held out by the paused read.
			if _, err := f.Write(a.Ino, fill(size, 0xbb), 0); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			b, err := f.Create(RootIno, "b", NewInode{Mode: 0o644})
			if err != nil {
				t.Fatal(err)
			}
			chunk := fill(1<<20, 0xcc)
			for off := int64(0); ; off += int64(len(chunk)) {
				if _, err := f.Write(b.Ino, chunk, off); err != nil {
					if errors.Is(err, syscall.ENOSPC) {
						break
					}
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			close(resume)
			r := <-done
			if r.err != nil {
				t.Fatalf("paused read: %v", r.err)
			}
			if r.n != size || !bytes.Equal(r.buf, fill(size, 0xaa)) {
				i := firstDiffAt(r.buf, fill(size, 0xaa))
				t.Fatalf("paused read returned %d bytes, byte %d is %#x, want the old 0xaa", r.n, i, r.buf[i])
			}
			// Read-your-writes after it: the overwrite.
			got := make([]byte, size)
			if n, err := f.Read(a.Ino, got, 0); err != nil || n != size || !bytes.Equal(got, fill(size, 0xbb)) {
				t.Fatalf("read after the overwrite: %d %v", n, err)
			}
			if err := f.Unlink(RootIno, "b"); err != nil {
				t.Fatal(err)
			}
			mustClean(t, f)
		})
	}
}

func firstDiffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Readers of several files, and of the same one, run while a writer
// overwrites the files whole and commits. A
// read sees one state of its file: every block of the range of the same
// write (writes are whole-file, each with a byte of its own), never a
// mix, never an error, and never older than the last write that returned
// before the read began (read-your-writes, committed or not).
func TestParallelReadersWithWriter(t *testing.T) {
	f := mount(t, newDev(t), Options{})
	defer f.Close()
	const files, size = 4, 64 << 10
	dur := 2 * time.Second
	if testing.Short() || raceEnabled {
		dur = 500 * time.Millisecond
	}
	var inos [files]uint64
	var version [files]atomic.Uint32 // the last write that returned
	for i := range inos {
		a, err := f.Create(RootIno, fmt.Sprintf("f%d", i), NewInode{Mode: 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[i] = a.Ino
		if _, err := f.Write(a.Ino, fill(size, 1), 0); err != nil {
			t.Fatal(err)
		}
		version[i].Store(1)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var reads atomic.Int64
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				i := (r + k/8) % files // runs of reads of one file, readers overlapping
				min := byte(version[i].Load())
				n, err := f.Read(inos[i], buf, 0)
				if err != nil {
					errs <- fmt.Errorf("read file %d: %w", i, err)
					return
				}
				if n != size {
					errs <- fmt.Errorf("read file %d: %d bytes, want %d", i, n, size)
					return
				}
				v := buf[0]
				if v < min {
					errs <- fmt.Errorf("file %d: read write %d after write %d had returned", i, v, min)
					return
				}
				if j := firstDiffAt(buf, fill(size, v)); j < size {
					errs <- fmt.Errorf("file %d: byte 0 of write %d, byte %d of write %d", i, v, j, buf[j])
					return
				}
				reads.Add(1)
			}
		}()
	}
	writes := 0
	for until := time.Now().Add(dur); time.Now().Before(until); writes++ {
		i := writes % files
		v := byte(version[i].Load()%250 + 1) // stays above the readers' floor until it wraps
		if v == 1 {
			break // wrapped: enough
		}
		if writes%7 == 3 {
			// Some reads see committed data, some the running
			// transaction's.
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.Write(inos[i], fill(size, v), 0); err != nil {
			t.Fatal(err)
		}
		version[i].Store(uint32(v))
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d writes, %d reads", writes, reads.Load())
	if reads.Load() == 0 {
		t.Fatal("no read completed")
	}
	mustClean(t, f)
}
