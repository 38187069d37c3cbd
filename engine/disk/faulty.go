package disk

import (
	"errors"
	"fmt"
	"sync"
)

// Faulty wraps a Device to inject I/O errors and count I/O. Faults are
// chosen by call number (the Nth WriteAt, the Nth Flush) or by byte range
// (every read or write touching a range). A failed call does nothing to the
// wrapped device. Injected errors wrap both ErrInjected and the error given.
type Faulty struct {
	dev Device

	mu          sync.Mutex
	stats       FaultyStats
	writeFaults map[int64]error // WriteAt call number → error
	flushFaults map[int64]error // Flush call number → error
	readRanges  []rangeFault
	writeRanges []rangeFault
}

// FaultyStats counts the I/O that went through a Faulty.
type FaultyStats struct {
	Reads, Writes, Flushes  int64 // calls, failed ones included
	BytesRead, BytesWritten int64 // bytes moved by successful calls
	Faults                  int64 // calls failed by injection
}

type rangeFault struct {
	off, n int64
	err    error
}

// NewFaulty wraps dev with no faults armed.
func NewFaulty(dev Device) *Faulty {
	return &Faulty{
		dev:         dev,
		writeFaults: make(map[int64]error),
		flushFaults: make(map[int64]error),
	}
}

// Device returns the wrapped device.
func (f *Faulty) Device() Device { return f.dev }

// FailWrite makes WriteAt call number n fail with err (ErrInjected if nil).
// Calls are numbered from 1 since NewFaulty, so the next call is
// Stats().Writes+1; a number already passed never fires.
func (f *Faulty) FailWrite(n int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeFaults[n] = err
}

// FailFlush makes Flush call number n fail with err (ErrInjected if nil),
// numbered like FailWrite.
func (f *Faulty) FailFlush(n int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushFaults[n] = err
}

// FailReads makes every ReadAt that touches a byte in [off, off+n) fail
// with err (ErrInjected if nil), until Clear.
func (f *Faulty) FailReads(off, n int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readRanges = append(f.readRanges, rangeFault{off, n, err})
}

// FailWrites makes every WriteAt that touches a byte in [off, off+n) fail
// with err (ErrInjected if nil), until Clear.
func (f *Faulty) FailWrites(off, n int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeRanges = append(f.writeRanges, rangeFault{off, n, err})
}

// Clear disarms every fault. Counters are kept.
func (f *Faulty) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.writeFaults)
	clear(f.flushFaults)
	f.readRanges = nil
	f.writeRanges = nil
}

// Stats returns the counters so far.
func (f *Faulty) Stats() FaultyStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Size returns the wrapped device's size.
func (f *Faulty) Size() int64 { return f.dev.Size() }

// Close closes the wrapped device.
func (f *Faulty) Close() error { return f.dev.Close() }

// ReadAt reads from the wrapped device unless a read fault covers the range.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.stats.Reads++
	rf, hit := matchRange(f.readRanges, off, len(p))
	if hit {
		f.stats.Faults++
	}
	f.mu.Unlock()
	if hit {
		return 0, injected(rf.err, "read %d bytes at offset %d", len(p), off)
	}
	n, err := f.dev.ReadAt(p, off)
	f.mu.Lock()
	f.stats.BytesRead += int64(n)
	f.mu.Unlock()
	return n, err
}

// WriteAt writes to the wrapped device unless this call or range is armed
// to fail.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.stats.Writes++
	fault, hit := f.writeFaults[f.stats.Writes]
	if hit {
		delete(f.writeFaults, f.stats.Writes)
	} else {
		var rf rangeFault
		rf, hit = matchRange(f.writeRanges, off, len(p))
		fault = rf.err
	}
	if hit {
		f.stats.Faults++
	}
	f.mu.Unlock()
	if hit {
		return 0, injected(fault, "write %d bytes at offset %d", len(p), off)
	}
	n, err := f.dev.WriteAt(p, off)
	f.mu.Lock()
	f.stats.BytesWritten += int64(n)
	f.mu.Unlock()
	return n, err
}

// Flush flushes the wrapped device unless this call is armed to fail; a
// failed Flush does not flush.
func (f *Faulty) Flush() error {
	f.mu.Lock()
	f.stats.Flushes++
	fault, hit := f.flushFaults[f.stats.Flushes]
	if hit {
		delete(f.flushFaults, f.stats.Flushes)
		f.stats.Faults++
	}
	f.mu.Unlock()
	if hit {
		return injected(fault, "flush")
	}
	return f.dev.Flush()
}

// matchRange returns the first fault whose range overlaps [off, off+n).
// A zero-length access touches nothing.
func matchRange(faults []rangeFault, off int64, n int) (rangeFault, bool) {
	for _, rf := range faults {
		if n > 0 && off < rf.off+rf.n && rf.off < off+int64(n) {
			return rf, true
		}
	}
	return rangeFault{}, false
}

func injected(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	switch {
	case err == nil:
		return fmt.Errorf("disk: %s: %w", what, ErrInjected)
	case errors.Is(err, ErrInjected):
		return fmt.Errorf("disk: %s: %w", what, err)
	}
	return fmt.Errorf("disk: %s: %w: %w", what, ErrInjected, err)
}
