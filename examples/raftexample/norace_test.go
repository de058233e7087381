//go:build !race

package main

// raceEnabled tells buildBinary to build the processes with the race
// detector too.
const raceEnabled = false
