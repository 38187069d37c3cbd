//go:build race

package repair

// raceEnabled shrinks the heaviest matrices under the race detector.
const raceEnabled = true
