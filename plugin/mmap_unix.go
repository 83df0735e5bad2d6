//go:build unix

package deviceid

import "syscall"

// newChunk returns n bytes of anonymous memory outside the Go heap: the collector
// neither walks it nor counts it toward its next goal, so a zone of a million signed
// names adds nothing to the heap that each collection has to double.
func newChunk(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		panic("deviceid: out of memory: " + err.Error())
	}
	return b
}

// freeChunk returns a chunk from newChunk to the system.
func freeChunk(b []byte) { syscall.Munmap(b) }
