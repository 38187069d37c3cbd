package daemon

import (
	"os"
	"testing"
)

// TestMain keeps the tests' report histories out of the real state
// directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "scrubd-state")
	if err != nil {
		panic(err)
	}
	os.Setenv("SCRUBD_STATE_DIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
