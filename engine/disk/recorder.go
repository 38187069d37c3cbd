// Crash model.
//
// A disk with a volatile write cache promises only this: once a flush
// returns, every write completed before the flush was issued is durable.
// Writes issued after that flush may reach the media in any subset, and a
// write caught mid-way may be torn, but never inside a sector: each
// SectorSize-aligned sector holds either its old or its new contents.
//
// The Recorder logs writes and flushes in the order they complete. Call the
// flushes 1..F in that order and let flush 0 stand for "the device was
// handed over". A crash "at flush k" is a power loss somewhere after flush k
// completed and before flush k+1 did (or, for k = F, after the last
// operation). What the disk then holds is:
//
//   - the initial image, with every write recorded before flush k applied
//     in order: these are durable, whatever else happens;
//   - then some of the writes recorded between flush k and flush k+1, the
//     "in-flight" writes, applied in the order they were issued;
//   - and none of the writes after flush k+1, since they were issued only
//     after flush k+1 completed, which did not happen before the crash.
//
// The modes choose the in-flight subset: none (CrashDropAll), all
// (CrashKeepAll; the result equals the image at flush k+1), or each write
// independently applied, dropped or torn (CrashRandom). A torn write lands a
// prefix of itself that ends on an absolute sector boundary strictly inside
// the write; the rest of its range keeps whatever it held before. A write
// that touches one sector only cannot tear; it is applied or dropped.
//
// Applying in-flight writes in issue order means a dropped write can let an
// older value show through, but two overlapping in-flight writes that both
// land leave the later one on top. Real disks may also reorder overlapping
// in-flight writes; engines must not issue those without a flush between,
// so the Recorder does not model it.

package disk

import (
	"fmt"
	"math/rand/v2"
	"sync"
)

// CrashMode selects which in-flight writes a crash image keeps.
type CrashMode int

const (
	// CrashDropAll loses every write not followed by a flush.
	CrashDropAll CrashMode = iota
	// CrashKeepAll keeps every write issued before the next flush.
	CrashKeepAll
	// CrashRandom applies, drops or tears each in-flight write
	// independently, using the caller's random source.
	CrashRandom
)

func (m CrashMode) String() string {
	switch m {
	case CrashDropAll:
		return "drop-all"
	case CrashKeepAll:
		return "keep-all"
	case CrashRandom:
		return "random"
	default:
		return fmt.Sprintf("CrashMode(%d)", int(m))
	}
}

// recOp is one recorded operation: a write of data at off, or a flush.
type recOp struct {
	flush bool
	off   int64
	data  []byte
}

// Recorder is an in-memory Device for crash simulation. It applies every
// write to its current image, as Mem does, and also logs each write (offset
// and a copy of the data) and each flush in completion order, so
// CrashImage can rebuild what a disk could hold after a power loss. The log
// keeps every byte written; it is meant for test-sized images.
type Recorder struct {
	mu      sync.RWMutex
	initial []byte
	cur     []byte
	ops     []recOp
	flushAt []int // flushAt[i] is the index in ops of flush number i+1
	closed  bool
}

// NewRecorder returns a Recorder whose device starts as a copy of initial.
func NewRecorder(initial []byte) *Recorder {
	return &Recorder{initial: clone(initial), cur: clone(initial)}
}

// Size returns the device size in bytes.
func (r *Recorder) Size() int64 { return int64(len(r.cur)) }

// ReadAt reads from the current image, which reflects every write.
func (r *Recorder) ReadAt(p []byte, off int64) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.check("read", off, len(p)); err != nil {
		return 0, err
	}
	return copy(p, r.cur[off:]), nil
}

// WriteAt applies p to the current image and records it.
func (r *Recorder) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check("write", off, len(p)); err != nil {
		return 0, err
	}
	r.ops = append(r.ops, recOp{off: off, data: clone(p)})
	return copy(r.cur[off:], p), nil
}

// Flush records a flush point.
func (r *Recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("disk: recorder: flush: %w", ErrClosed)
	}
	r.flushAt = append(r.flushAt, len(r.ops))
	r.ops = append(r.ops, recOp{flush: true})
	return nil
}

// Close stops I/O; the log and CrashImage stay usable.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("disk: recorder: close: %w", ErrClosed)
	}
	r.closed = true
	return nil
}

func (r *Recorder) check(op string, off int64, n int) error {
	if r.closed {
		return fmt.Errorf("disk: recorder: %s at offset %d: %w", op, off, ErrClosed)
	}
	if err := checkRange(op, off, n, int64(len(r.cur))); err != nil {
		return fmt.Errorf("disk: recorder: %w", err)
	}
	return nil
}

// Flushes returns the number of Flush calls so far.
func (r *Recorder) Flushes() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.flushAt)
}

// FlushPoints returns the number of flush points, the largest k CrashImage
// accepts. It equals Flushes.
func (r *Recorder) FlushPoints() int { return r.Flushes() }

// Ops returns the number of recorded writes and flushes.
func (r *Recorder) Ops() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.ops)
}

// InFlight returns the number of writes recorded after flush k and before
// flush k+1: the writes a crash at flush k may keep, drop or tear.
func (r *Recorder) InFlight(k int) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	start, end := r.interval(k)
	return end - start
}

// Image returns a copy of the current image: every write applied.
func (r *Recorder) Image() []byte {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return clone(r.cur)
}

// Initial returns a copy of the image the Recorder started from.
func (r *Recorder) Initial() []byte { return clone(r.initial) }

// interval returns the ops index range [start, end) of the writes in flight
// at a crash after flush k. It panics if k is not in [0, Flushes()].
func (r *Recorder) interval(k int) (start, end int) {
	if k < 0 || k > len(r.flushAt) {
		panic(fmt.Sprintf("disk: recorder: flush point %d out of range [0, %d]", k, len(r.flushAt)))
	}
	if k > 0 {
		start = r.flushAt[k-1] + 1
	}
	end = len(r.ops)
	if k < len(r.flushAt) {
		end = r.flushAt[k]
	}
	return start, end
}

// CrashImage returns a fresh image of what the device could hold after a
// power loss right after flush number k (k = 0: before the first flush).
// All writes before flush k are applied, then a subset of the writes issued
// between flush k and flush k+1, chosen by mode; later writes never appear.
// See the crash model at the top of this file.
//
// For CrashRandom the outcome of each in-flight write is drawn from rng, so
// equal seeds give equal images; a nil rng means a fixed seed. CrashImage
// panics if k is not in [0, Flushes()] or mode is unknown.
func (r *Recorder) CrashImage(k int, mode CrashMode, rng *rand.Rand) []byte {
	r.mu.RLock()
	defer r.mu.RUnlock()
	start, end := r.interval(k)
	img := clone(r.initial)
	for _, op := range r.ops[:start] {
		if !op.flush {
			copy(img[op.off:], op.data)
		}
	}
	inFlight := r.ops[start:end] // contains no flushes
	switch mode {
	case CrashDropAll:
	case CrashKeepAll:
		for _, op := range inFlight {
			copy(img[op.off:], op.data)
		}
	case CrashRandom:
		if rng == nil {
			rng = rand.New(rand.NewPCG(0, 0))
		}
		for _, op := range inFlight {
			switch rng.IntN(3) {
			case 0: // applied
				copy(img[op.off:], op.data)
			case 1: // dropped
			case 2: // torn
				copy(img[op.off:], op.data[:tornLen(op.off, len(op.data), rng)])
			}
		}
	default:
		panic(fmt.Sprintf("disk: recorder: unknown %v", mode))
	}
	return img
}

// tornLen picks how many bytes of an n-byte write at off land when it is
// torn: the distance from off to a sector boundary strictly inside the
// write. A write within one sector has no such boundary and lands whole or
// not at all.
func tornLen(off int64, n int, rng *rand.Rand) int {
	if n == 0 {
		return 0
	}
	first := (off/SectorSize + 1) * SectorSize             // first boundary > off
	last := (off + int64(n) - 1) / SectorSize * SectorSize // last boundary < off+n
	if first > last {
		if rng.IntN(2) == 0 {
			return 0
		}
		return n
	}
	cut := first + SectorSize*rng.Int64N((last-first)/SectorSize+1)
	return int(cut - off)
}
