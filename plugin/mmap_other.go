//go:build !unix

package deviceid

import "os"

// tryChunk returns n bytes from the Go heap (pointer-free, so never scanned).
func tryChunk(n int, _ bool) ([]byte, error) { return make([]byte, n), nil }

// freeChunk leaves the chunk to the collector.
func freeChunk([]byte) {}

// storedSize is the file's size.
func storedSize(info os.FileInfo) int64 { return info.Size() }
