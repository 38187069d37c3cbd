//go:build invariants || race

package engine

// invariants turns on expensive self-checks (the test suite builds with
// -tags invariants or -race); production builds pay nothing for them.
const invariants = true
