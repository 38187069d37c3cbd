//go:build !race

package xfile

const raceEnabled = false
