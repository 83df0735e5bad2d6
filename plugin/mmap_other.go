//go:build !unix

package deviceid

// newChunk returns n bytes from the Go heap (pointer-free, so never scanned).
func newChunk(n int) []byte { return make([]byte, n) }

// freeChunk leaves the chunk to the collector.
func freeChunk([]byte) {}
