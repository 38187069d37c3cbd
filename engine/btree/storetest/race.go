//go:build race

package storetest

// raceEnabled shrinks the suite's workloads under the race detector.
const raceEnabled = true
