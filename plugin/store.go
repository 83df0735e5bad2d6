package deviceid

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"sync"
)

// store is the compact index of one zone: for each owner name, one entry of bytes
// holding the owner, the packed RRset and the signatures over it and over the NSEC at
// the name. Entries live in chunks of memory outside the Go heap (newChunk), found
// through maps that hold no pointers, so the garbage collector has nothing to walk
// however many names the zone holds. The store is split into shards, each under its
// own lock: a writer (the etcd loop, the background signer) holds one while queries
// read the others. Readers copy what they need while holding the shard's read lock.
type store struct {
	nz     int                       // signatures per RRset: the keys that sign TLSA and NSEC
	hash   func(owner string) uint64 // tests make owners clash
	shards [storeShards]shard
}

const (
	storeShards = 64
	chunkSize   = 256 << 10 // the first chunk of a shard; later ones grow to 8 MiB
	hugePage    = 2 << 20   // a transparent huge page on amd64 and arm64
	hugeChunk   = 8 << 20   // chunks that grow to this size are on huge pages
	maxReserve  = 256 << 20 // the most reserve lays out for one shard
	sigSize     = 64        // an ECDSA P-256 signature (r || s) and an Ed25519 one alike
)

type shard struct {
	mu    sync.RWMutex
	nz    int               // signatures per RRset: the keys that sign TLSA and NSEC
	refs  map[uint64]uint64 // hash of the owner → entry
	clash map[string]uint64 // owners whose hash another owner holds in refs (rare)
	next  int               // the size of the next chunk, if reserve made it larger
	slab
}

// slab is the memory of one shard. A ref is chunk index << 32 | offset. Entries that
// are replaced by ones of another size or removed leave dead bytes, which compact
// reclaims once they outweigh the live ones.
type slab struct {
	chunks     [][]byte
	cur        int // the chunk being filled
	used       int // bytes used in chunks[cur]
	live, dead int
}

// The entry layout: a fixed header, the owner (lower case, presentation form), the
// packed RRset (wire.go: for each record its expiry, then its wire form at the
// question), then nz TLSA signatures and nz NSEC signatures. Both RRsets are signed at
// one time, recorded in the header. Only this file reads or writes the bytes of an
// entry: the rest of the plugin goes through the methods below.
const (
	hdrBelow = 0  // uint32: records stored under this name
	hdrFlags = 4  // flagRecord, flagDevice
	hdrOwner = 5  // uint8: length of the owner
	hdrRR    = 6  // uint16: length of the RRset
	hdrInc   = 8  // uint32: inception of the signatures; 0 when not signed
	hdrExp   = 12 // uint32: their expiration
	hdrLen   = 16
)

const (
	flagRecord = 1 << iota // a device, CA or service record is stored at the name
	flagDevice             // the record is a device's
)

// maxRRset bounds an RRset so that the answer fits a DNS message with its signatures.
const maxRRset = 60000

func newStore(nz int) *store {
	seed := maphash.MakeSeed()
	s := &store{nz: nz, hash: func(owner string) uint64 { return maphash.String(seed, owner) }}
	for i := range s.shards {
		s.shards[i].nz = nz
		s.shards[i].refs = make(map[uint64]uint64)
	}
	return s
}

// entry is one name's bytes, valid while its shard's lock is held. Entries are sliced
// to their length, so that the signatures are what follows the RRset.
type entry []byte

// newEntry builds the bytes of an entry without signatures.
func newEntry(owner string, flags uint8, below uint32, rr []byte, nz int) entry {
	e := make(entry, hdrLen+len(owner)+len(rr)+2*nz*sigSize)
	binary.BigEndian.PutUint32(e[hdrBelow:], below)
	e[hdrFlags], e[hdrOwner] = flags, uint8(len(owner))
	binary.BigEndian.PutUint16(e[hdrRR:], uint16(len(rr)))
	copy(e[hdrLen+copy(e[hdrLen:], owner):], rr)
	return e
}

func entryLen(b []byte, nz int) int {
	return hdrLen + int(b[hdrOwner]) + int(binary.BigEndian.Uint16(b[hdrRR:])) + 2*nz*sigSize
}

// below is the number of records stored under the name.
func (e entry) below() uint32 { return binary.BigEndian.Uint32(e[hdrBelow:]) }

// setBelow changes the number of records stored under the name.
func (e entry) setBelow(n uint32) { binary.BigEndian.PutUint32(e[hdrBelow:], n) }

func (e entry) flags() uint8  { return e[hdrFlags] }
func (e entry) owner() []byte { return e[hdrLen : hdrLen+int(e[hdrOwner])] }
func (e entry) rrLen() int    { return int(binary.BigEndian.Uint16(e[hdrRR:])) }
func (e entry) rrset() []byte { o := hdrLen + int(e[hdrOwner]); return e[o : o+e.rrLen()] }
func (e entry) sigsAt() int   { return hdrLen + int(e[hdrOwner]) + e.rrLen() }

// signed returns the inception and expiration of the entry's signatures; inc is 0 when
// the entry has none.
func (e entry) signed() (inc, exp uint32) {
	return binary.BigEndian.Uint32(e[hdrInc:]), binary.BigEndian.Uint32(e[hdrExp:])
}

// sigs returns the entry's signatures and their times, in place.
func (e entry) sigs() entrySigs {
	inc, exp := e.signed()
	return entrySigs{inc: inc, exp: exp, sigs: e[e.sigsAt():]}
}

// setSigs writes signatures made for an entry of the same store into e.
func (e entry) setSigs(s entrySigs) {
	binary.BigEndian.PutUint32(e[hdrInc:], s.inc)
	binary.BigEndian.PutUint32(e[hdrExp:], s.exp)
	copy(e[e.sigsAt():], s.sigs)
}

// entrySigs are the signatures of one entry, made at inc and exp: the TLSA RRset's,
// then the NSEC's, nz of each.
type entrySigs struct {
	inc, exp uint32
	sigs     []byte
}

// newEntrySigs returns room for the signatures of an entry, made at inc and exp.
func newEntrySigs(inc, exp uint32, nz int) *entrySigs {
	return &entrySigs{inc: inc, exp: exp, sigs: make([]byte, 2*nz*sigSize)}
}

func (s entrySigs) tlsa() []byte { return s.sigs[:len(s.sigs)/2] }
func (s entrySigs) nsec() []byte { return s.sigs[len(s.sigs)/2:] }

// clone copies signatures read in place out of the store.
func (s entrySigs) clone() *entrySigs {
	return &entrySigs{inc: s.inc, exp: s.exp, sigs: bytes.Clone(s.sigs)}
}

func (s *store) shard(h uint64) *shard { return &s.shards[h>>58] } // the map uses the low bits

// view calls f with the entry of owner, under the shard's read lock, and reports
// whether there is one.
func (s *store) view(owner string, f func(e entry)) bool { return s.access(owner, false, f) }

// modify calls f with the entry of owner under the shard's write lock; f may change
// the bytes in place (the header's counts and flags, the signatures), not the size.
func (s *store) modify(owner string, f func(e entry)) bool { return s.access(owner, true, f) }

func (s *store) access(owner string, write bool, f func(e entry)) bool {
	h := s.hash(owner)
	sh := s.shard(h)
	if write {
		sh.mu.Lock()
		defer sh.mu.Unlock()
	} else {
		sh.mu.RLock()
		defer sh.mu.RUnlock()
	}
	r, ok := sh.find(h, owner)
	if ok {
		f(sh.entry(r))
	}
	return ok
}

// set stores e as the entry of owner, replacing any.
func (s *store) set(owner string, e entry) {
	h := s.hash(owner)
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old, ok := sh.find(h, owner)
	if ok {
		if cur := sh.entry(old); len(cur) == len(e) {
			copy(cur, e)
			return
		}
	}
	r := sh.alloc(len(e))
	copy(sh.entry0(r, len(e)), e)
	switch {
	case !ok && sh.taken(h):
		if sh.clash == nil {
			sh.clash = make(map[string]uint64)
		}
		sh.clash[owner] = r
	case ok && sh.refs[h] != old:
		sh.clash[owner] = r
	default:
		sh.refs[h] = r
	}
	if ok {
		sh.release(old)
	}
}

// delete removes the entry of owner, if any.
func (s *store) delete(owner string) {
	h := s.hash(owner)
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r, ok := sh.find(h, owner)
	if !ok {
		return
	}
	if sh.refs[h] != r {
		delete(sh.clash, owner)
	} else {
		delete(sh.refs, h)
		for o, c := range sh.clash { // promote an owner of the same hash
			if s.hash(o) == h {
				sh.refs[h] = c
				delete(sh.clash, o)
				break
			}
		}
	}
	sh.release(r)
}

// each calls f for the entries of shard i, under its read lock, while f returns true.
func (s *store) each(i int, f func(e entry) bool) {
	sh := &s.shards[i]
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	for _, r := range sh.refs {
		if !f(sh.entry(r)) {
			return
		}
	}
	for _, r := range sh.clash {
		if !f(sh.entry(r)) {
			return
		}
	}
}

// modifyAll calls f with every entry, under its shard's write lock; f may change the
// bytes in place, not the size.
func (s *store) modifyAll(f func(e entry)) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, r := range sh.refs {
			f(sh.entry(r))
		}
		for _, r := range sh.clash {
			f(sh.entry(r))
		}
		sh.mu.Unlock()
	}
}

// reserve lays out an empty store for about size bytes of entries in n entries, spread
// evenly over the shards by the hash: when a shard's share is large, its first chunk
// holds it, on huge pages, and its map is made for its share of the names.
func (s *store) reserve(size, n int64) {
	share := size / storeShards
	if share < hugePage {
		return // small chunks that grow: a small zone takes little memory
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if len(sh.refs) == 0 && len(sh.chunks) == 0 {
			sh.next = int(min(share*33/32, maxReserve)) // the hash spreads names within a few percent
			sh.refs = make(map[uint64]uint64, min(n/storeShards*33/32, maxReserve/hdrLen))
		}
		sh.mu.Unlock()
	}
}

// len returns the number of names stored.
func (s *store) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.refs) + len(sh.clash)
		sh.mu.RUnlock()
	}
	return n
}

// free returns the store's memory; nothing may use the store after.
func (s *store) free() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, c := range sh.chunks {
			freeChunk(c)
		}
		sh.chunks, sh.refs, sh.clash = nil, nil, nil
		sh.mu.Unlock()
	}
}

func (sh *shard) find(h uint64, owner string) (uint64, bool) {
	r, ok := sh.refs[h]
	if !ok {
		return 0, false
	}
	if string(sh.entry(r).owner()) == owner {
		return r, true
	}
	r, ok = sh.clash[owner]
	return r, ok
}

// taken reports whether another owner holds hash h.
func (sh *shard) taken(h uint64) bool { _, ok := sh.refs[h]; return ok }

func (sh *shard) entry(r uint64) entry {
	c := sh.chunks[r>>32][uint32(r):]
	return entry(c[:entryLen(c, sh.nz):entryLen(c, sh.nz)])
}

// newChunk returns n bytes from tryChunk; the index cannot go on without them.
func newChunk(n int, huge bool) []byte {
	b, err := tryChunk(n, huge)
	if err != nil {
		panic("deviceid: out of memory: " + err.Error())
	}
	return b
}

func (sh *shard) entry0(r uint64, n int) []byte { return sh.chunks[r>>32][uint32(r):][:n:n] }

// alloc returns room for n bytes, n at most chunkSize (an RRset is at most maxRRset).
func (sh *shard) alloc(n int) uint64 {
	sh.live += n
	if len(sh.chunks) == 0 || sh.used+n > len(sh.chunks[sh.cur]) {
		// A shard that grows gets larger chunks: fewer of them, on huge pages.
		size := chunkSize << min(len(sh.chunks), 5)
		huge := size >= hugeChunk
		if sh.next > size {
			size, huge = sh.next, true
		}
		sh.chunks, sh.next = append(sh.chunks, newChunk(size, huge)), 0
		sh.cur, sh.used = len(sh.chunks)-1, 0
	}
	r := uint64(sh.cur)<<32 | uint64(sh.used)
	sh.used += n
	return r
}

// release marks the entry at r dead, and compacts the shard when the dead bytes
// outweigh the live ones.
func (sh *shard) release(r uint64) {
	n := len(sh.entry(r))
	sh.live -= n
	sh.dead += n
	if sh.dead > sh.live && sh.dead > chunkSize {
		sh.compact()
	}
}

// compact copies the live entries into fresh chunks and frees the old ones.
func (sh *shard) compact() {
	old := sh.slab
	sh.slab = slab{}
	move := func(r uint64) uint64 {
		c := old.chunks[r>>32][uint32(r):]
		e := c[:entryLen(c, sh.nz)]
		nr := sh.alloc(len(e))
		copy(sh.entry0(nr, len(e)), e)
		return nr
	}
	for h, r := range sh.refs {
		sh.refs[h] = move(r)
	}
	for o, r := range sh.clash {
		sh.clash[o] = move(r)
	}
	for _, c := range old.chunks {
		freeChunk(c)
	}
}
