package deviceid

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tryChunk returns n bytes of anonymous memory outside the Go heap: the collector
// neither walks it nor counts it toward its next goal, so a zone of a million signed
// names adds nothing to the heap that each collection has to double. A huge chunk is
// aligned to huge pages and asked to be backed by them: a zone loaded in bulk then
// takes one page fault per 2 MiB rather than per 4 KiB, which in a virtual machine is
// most of the time it takes to fill the memory (a part smaller than a huge page at its
// end stays on small pages).
func tryChunk(n int, huge bool) ([]byte, error) {
	if !huge || n < hugePage {
		return mmap(n)
	}
	b, err := mmap(n + hugePage)
	if err != nil {
		return nil, err
	}
	skip := (hugePage - int(uintptr(unsafe.Pointer(&b[0]))%hugePage)) % hugePage
	munmap(b[:skip])
	munmap(b[skip+n:])
	b = b[skip : skip+n : skip+n]
	unix.Madvise(b, unix.MADV_HUGEPAGE) // advice only: without it, small pages
	return b, nil
}

// freeChunk returns a chunk from tryChunk to the system.
func freeChunk(b []byte) { munmap(b[:cap(b)]) }

// unix.MmapPtr rather than syscall.Mmap, which keeps a table of whole mappings and
// cannot unmap part of one.
func mmap(n int) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n), nil
}

func munmap(b []byte) {
	if len(b) > 0 {
		unix.MunmapPtr(unsafe.Pointer(&b[0]), uintptr(len(b)))
	}
}

// storedSize is how many bytes of the file are on disk: a sparse file claims more.
func storedSize(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return min(info.Size(), st.Blocks*512)
	}
	return info.Size()
}
