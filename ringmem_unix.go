//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package rafthttp

import "syscall"

// allocRing returns n bytes for a replay ring, and the function that frees
// them. They are mapped from the kernel rather than taken from the Go heap:
// the ring lives as long as its snapshot (seconds to hours) and is written
// all over, and on the heap it would raise the GC's heap goal by its own
// size, letting as much garbage pile up again before a collection. Only
// the pages the ring uses count in the RSS, and they go back at once when
// freed. If the mapping fails, the heap serves.
func allocRing(n int) ([]byte, func()) {
	if n == 0 {
		return nil, func() {}
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, n), func() {}
	}
	return b, func() { _ = syscall.Munmap(b) }
}
