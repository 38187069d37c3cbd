package disk

import (
	"fmt"
	"sync"
)

// Mem is an in-memory Device for tests. Flush is a no-op: everything
// written is as durable as the Mem itself.
type Mem struct {
	mu     sync.RWMutex
	buf    []byte
	closed bool
}

// NewMem returns a zero-filled Mem of size bytes.
func NewMem(size int64) *Mem {
	if size < 0 {
		panic(fmt.Sprintf("disk: NewMem: negative size %d", size))
	}
	return &Mem{buf: make([]byte, size)}
}

// NewMemFrom returns a Mem holding a copy of image.
func NewMemFrom(image []byte) *Mem {
	return &Mem{buf: clone(image)}
}

// Size returns the device size in bytes.
func (m *Mem) Size() int64 { return int64(len(m.buf)) }

// Bytes returns a copy of the device contents.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return clone(m.buf)
}

// ReadAt copies len(p) bytes at off into p.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check("read", off, len(p)); err != nil {
		return 0, err
	}
	return copy(p, m.buf[off:]), nil
}

// WriteAt copies p to off.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check("write", off, len(p)); err != nil {
		return 0, err
	}
	return copy(m.buf[off:], p), nil
}

// Flush does nothing but report ErrClosed after Close.
func (m *Mem) Flush() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return fmt.Errorf("disk: mem: flush: %w", ErrClosed)
	}
	return nil
}

// Close marks the Mem closed; its contents stay readable through Bytes.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("disk: mem: close: %w", ErrClosed)
	}
	m.closed = true
	return nil
}

func (m *Mem) check(op string, off int64, n int) error {
	if m.closed {
		return fmt.Errorf("disk: mem: %s at offset %d: %w", op, off, ErrClosed)
	}
	if err := checkRange(op, off, n, int64(len(m.buf))); err != nil {
		return fmt.Errorf("disk: mem: %w", err)
	}
	return nil
}

// clone returns a copy of b that is never nil.
func clone(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}
