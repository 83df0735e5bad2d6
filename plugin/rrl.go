package deviceid

import (
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// rrl is response rate limiting as BIND and Knot do it, against reflection: an attacker
// sends queries with a victim's address as their source, and the answers flood the
// victim. Responses over UDP to each client prefix (an IPv4 /24, an IPv6 /56: one site)
// may be sent at rate a second, up to rate×window at once after a quiet spell (a token
// bucket, kept as GCRA's one timestamp); past that a response is dropped, except every
// slip-th, which is sent with TC and no records, so that a real resolver behind the
// prefix asks again over TCP, where the source address is proven and nothing is
// limited. Spoofed sources cannot follow over TCP, and a TC answer is no larger than
// the query: the attacker gains nothing.
//
// The table has a fixed number of buckets, allocated at setup: a flood from any number
// of (spoofed) source addresses cannot grow it. A prefix is found in one set of rrlWays
// buckets (chosen by a hash with a random seed, so sets cannot be aimed at); a new one
// takes the bucket of its set with the most credit. A full bucket knows nothing a new
// one would not, so only prefixes being limited are worth keeping, and a flood from new
// addresses (each spending one response) evicts none of them.
type rrl struct {
	rate      int    // responses a second
	interval  int64  // ns of credit a response spends: 1s / rate
	tolerance int64  // how far ahead of now a bucket may spend: (rate×window - 1) × interval
	slip      uint32 // every slip-th limited response is sent TC; 0: all dropped
	v4, v6    int    // prefix lengths
	exempt    []netip.Prefix
	seed      maphash.Seed
	sets      []rrlSet

	dropped, slipped atomic.Int64 // since the last log line
	loggedAt         atomic.Int64
}

// rrlWays is the number of buckets a prefix may be in.
const rrlWays = 4

type rrlSet struct {
	mu sync.Mutex
	b  [rrlWays]rrlBucket
}

type rrlBucket struct {
	key     uint64 // the prefix's hash; 0: unused
	tat     int64  // Unix ns at which the bucket is full again; at or before now: full
	limited uint32 // responses limited since the prefix took the bucket
}

// rrlVerdict is what may be sent for a response.
type rrlVerdict uint8

const (
	rrlAnswer rrlVerdict = iota // within the rate, or not limited (TCP, exempt)
	rrlSlip                     // over it: send TC with no records
	rrlDrop                     // over it: send nothing
)

// rrlConfig is the rrl line of the Corefile.
type rrlConfig struct {
	rate      int // responses a second per prefix; 0: off
	window    int // seconds of rate a quiet prefix may use at once
	slip      int
	v4, v6    int
	tableSize int // buckets
	exempt    []netip.Prefix
}

// Defaults and bounds of the rrl option (the README says why).
var defaultRRL = rrlConfig{
	rate: 100, window: 5, slip: 2, v4: 24, v6: 56, tableSize: 65536,
	// Answers to a loopback address never leave the host: no one can be flooded with
	// them (a packet from outside with such a source is dropped as a martian, or
	// answered to this host). Local resolvers and load tests are not limited.
	exempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
}

const (
	maxRRLRate      = 1000000
	maxRRLWindow    = 3600
	maxRRLSlip      = 10
	minRRLTableSize = 16
	maxRRLTableSize = 1 << 24
)

// newRRL makes the table of c, or returns nil when c turns limiting off.
func newRRL(c rrlConfig) *rrl {
	if c.rate == 0 {
		return nil
	}
	interval := int64(time.Second) / int64(c.rate)
	return &rrl{
		rate: c.rate, interval: interval, tolerance: int64(c.rate*c.window-1) * interval, slip: uint32(c.slip),
		v4: c.v4, v6: c.v6, exempt: c.exempt, seed: maphash.MakeSeed(),
		sets: make([]rrlSet, (max(c.tableSize, rrlWays)+rrlWays-1)/rrlWays),
	}
}

// check counts a response to the client at addr at now (Unix ns) and says what may be
// sent. Only UDP is limited.
func (l *rrl) check(addr net.Addr, now int64) rrlVerdict {
	ip, ok := rrlAddr(addr)
	if !ok {
		return rrlAnswer
	}
	return l.take(ip, now)
}

// rrlAddr returns the client's address of a response over UDP (IPv4 unmapped); false
// for TCP.
func rrlAddr(addr net.Addr) (netip.Addr, bool) {
	if u, ok := addr.(interface{ Unwrap() net.Addr }); ok && u.Unwrap() != nil {
		addr = u.Unwrap() // PROXY protocol: the client's address
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ua.IP)
	return ip.Unmap(), ok
}

// wouldAnswer reports whether a response to the client at addr at now would be within
// the rate, counting nothing.
func (l *rrl) wouldAnswer(addr net.Addr, now int64) bool {
	ip, ok := rrlAddr(addr)
	if !ok {
		return true
	}
	h, s := l.set(ip)
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.b {
		if b := &s.b[i]; b.key == h {
			return max(b.tat, now)-now <= l.tolerance
		}
	}
	return true // a prefix without a bucket gets a full one
}

// set returns the hash of ip's prefix and its set of buckets; nil for an exempt ip.
func (l *rrl) set(ip netip.Addr) (uint64, *rrlSet) {
	for _, p := range l.exempt {
		if p.Contains(ip) {
			return 0, nil
		}
	}
	bits := l.v6
	if ip.Is4() {
		bits = l.v4
	}
	prefix, _ := ip.Prefix(bits)
	a := prefix.Addr().As16()
	h := maphash.Bytes(l.seed, a[:]) | 1 // never 0, the unused bucket's key
	return h, &l.sets[(h>>32)*uint64(len(l.sets))>>32]
}

// take counts a response to ip at now.
func (l *rrl) take(ip netip.Addr, now int64) rrlVerdict {
	h, s := l.set(ip.Unmap()) // an IPv4 client on a dual-stack socket
	if s == nil {
		return rrlAnswer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.find(h)
	tat := max(b.tat, now)
	if tat-now <= l.tolerance {
		b.tat = tat + l.interval
		return rrlAnswer
	}
	b.limited++
	if l.slip > 0 && b.limited%l.slip == 0 {
		l.slipped.Add(1)
		return rrlSlip
	}
	l.dropped.Add(1)
	return rrlDrop
}

// find returns the bucket of the prefix with hash h: its own, or the one of the set
// with the most credit (the earliest full), given to it full.
func (s *rrlSet) find(h uint64) *rrlBucket {
	victim := &s.b[0]
	for i := range s.b {
		b := &s.b[i]
		if b.key == h {
			return b
		}
		if b.tat < victim.tat {
			victim = b
		}
	}
	*victim = rrlBucket{key: h}
	return victim
}

// note logs the responses limited, at most once every ten seconds.
func (l *rrl) note(now int64, origin string, addr net.Addr) {
	if last := l.loggedAt.Load(); now-last >= 10e9 && l.loggedAt.CompareAndSwap(last, now) {
		d, s := l.dropped.Swap(0), l.slipped.Swap(0)
		log.Warningf("zone %s: %d responses over UDP dropped and %d sent with TC since the last report, over the rate limit of %d a second per client prefix (the last to %s)",
			origin, d, s, l.rate, addr)
	}
}
