//go:build race

package fs

// raceEnabled shrinks the heaviest randomized tests under the race
// detector, which slows them tenfold.
const raceEnabled = true
