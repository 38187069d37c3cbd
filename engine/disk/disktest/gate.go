// Package disktest holds devices for tests of the layers above the disk.
package disktest

import (
	"sync/atomic"

	"github.com/scrubd/scrubd/engine/disk"
)

// FlushGate is a device whose next flush, once armed, waits until the test
// opens the gate: Entered is closed when that flush starts, and the flush
// proceeds once the test closes Open.
type FlushGate struct {
	disk.Device
	Armed   atomic.Bool
	Entered chan struct{}
	Open    chan struct{}
}

// NewFlushGate wraps dev; arm it with Armed.Store(true).
func NewFlushGate(dev disk.Device) *FlushGate {
	return &FlushGate{Device: dev, Entered: make(chan struct{}), Open: make(chan struct{})}
}

func (g *FlushGate) Flush() error {
	if g.Armed.CompareAndSwap(true, false) {
		close(g.Entered)
		<-g.Open
	}
	return g.Device.Flush()
}
