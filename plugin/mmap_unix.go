//go:build unix && !linux

package deviceid

import (
	"os"
	"syscall"
)

// tryChunk returns n bytes of anonymous memory outside the Go heap, which the
// collector neither walks nor counts toward its next goal.
func tryChunk(n int, _ bool) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

// freeChunk returns a chunk from tryChunk to the system.
func freeChunk(b []byte) { syscall.Munmap(b[:cap(b)]) }

// storedSize is how many bytes of the file are on disk: a sparse file claims more.
func storedSize(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return min(info.Size(), st.Blocks*512)
	}
	return info.Size()
}
