package deviceid

import (
	"hash/maphash"
	"sync"
	"time"
)

// nxCache keeps the NSEC signatures of names that do not exist, which a resolver
// may ask for again: a fixed number of slots reused in turn, so that a flood of
// random names costs no memory beyond the bound and no allocation.
type nxCache struct {
	mu     sync.Mutex
	index  map[uint64]int32
	slots  []nxSlot
	next   int
	size   int
	maxAge time.Duration // a quarter of the validity, as for names that exist
}

type nxSlot struct {
	h1, h2   uint64  // two hashes of the name: 128 bits tell names apart
	keys     *keySet // that made sigs: after a rollover, another set's are not served
	inc, exp uint32
	sigs     [2 * sigSize]byte
}

// newNXCache returns a cache of size proofs, served for a quarter of their validity.
// It keeps none for key sets of more than two signing keys (a rollover has two).
func newNXCache(size int, validity time.Duration) *nxCache {
	return &nxCache{index: make(map[uint64]int32), size: size, maxAge: validity / 4}
}

var nxSeed1, nxSeed2 = maphash.MakeSeed(), maphash.MakeSeed()

func nxHashes(name []byte) (uint64, uint64) {
	return maphash.Bytes(nxSeed1, name), maphash.Bytes(nxSeed2, name)
}

// get copies the cached signatures of name into out; it reports whether they are
// there and were made at most a quarter of their validity ago (as names that exist).
func (c *nxCache) get(ks *keySet, name, out []byte, now int64) (inc, exp uint32, ok bool) {
	h1, h2 := nxHashes(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, found := c.index[h1]
	if !found || c.slots[i].h2 != h2 || c.slots[i].keys != ks {
		return 0, 0, false
	}
	sl := &c.slots[i]
	made := (int64(sl.inc) + int64(inceptionSkew/time.Second)) * 1e9
	if now >= made+int64(c.maxAge) || !fresh(sl.exp, now) {
		return 0, 0, false
	}
	copy(out, sl.sigs[:len(out)])
	return sl.inc, sl.exp, true
}

func (c *nxCache) put(ks *keySet, name, sigs []byte, inc, exp uint32) {
	if c.size == 0 || ks.nz() > 2 {
		return
	}
	h1, h2 := nxHashes(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, found := c.index[h1]
	if !found {
		if len(c.slots) < c.size {
			c.slots = append(c.slots, nxSlot{})
			i = int32(len(c.slots) - 1)
		} else {
			i = int32(c.next)
			c.next = (c.next + 1) % c.size
			delete(c.index, c.slots[i].h1)
		}
		c.index[h1] = i
	}
	sl := &c.slots[i]
	sl.h1, sl.h2, sl.keys, sl.inc, sl.exp = h1, h2, ks, inc, exp
	copy(sl.sigs[:], sigs)
}

func (c *nxCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.index)
}
