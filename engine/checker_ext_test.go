package engine_test

// The full self-check's rules live in the repair package, which registers
// the check the engine runs; linking it here gives this package's tests
// (every image they open is checked when they end) the whole check.
import _ "github.com/scrubd/scrubd/repair"
