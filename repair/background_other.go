//go:build !linux

package repair

// lowPriority runs fn; without per-thread priorities it runs as usual.
func lowPriority(fn func() error) error { return fn() }
