package deviceid

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// budget bounds the signatures made on the query path for names that do not exist,
// so that a flood of random names cannot take the CPU from the answers for names that
// exist (which are signed ahead and cost no signature). It is a token bucket of rate
// signatures a second holding up to one second's worth. It holds only while names that
// exist are being asked for (in this second or the last): alone, proofs of
// nonexistence may use the whole server, as there is nothing else to protect.
//
// Over the budget, a query over UDP is answered with TC set and no records: a real
// resolver asks again over TCP at once, and a flood from spoofed addresses cannot.
// Over TCP (the source address proven) the query waits for a token up to maxWait,
// which also slows the client that floods; past that it is refused.
type budget struct {
	rate float64 // signatures a second; 0: no limit

	mu     sync.Mutex
	tokens float64
	last   int64 // Unix ns of the last refill

	window   atomic.Int64 // the second (Unix) being counted
	existing atomic.Int64 // answers for names that exist in that second
	previous atomic.Int64 // and in the second before

	over     atomic.Int64 // queries over the budget since the last log line
	loggedAt atomic.Int64
}

// maxWait bounds how long a query over TCP waits for the budget.
const maxWait = time.Second

// budgetVerdict is what a query for a name that does not exist may do.
type budgetVerdict uint8

const (
	budgetSign     budgetVerdict = iota // sign now
	budgetTruncate                      // UDP: answer TC
	budgetWait                          // TCP: sign after the wait returned
	budgetRefuse                        // TCP: the wait would be too long
)

// sawExisting counts an answer for a name that exists at now (Unix ns).
func (b *budget) sawExisting(now int64) {
	if b.rate == 0 {
		return
	}
	sec := now / 1e9
	if w := b.window.Load(); w != sec && b.window.CompareAndSwap(w, sec) {
		if sec == w+1 {
			b.previous.Store(b.existing.Swap(0))
		} else {
			b.previous.Store(0)
			b.existing.Store(0)
		}
	}
	b.existing.Add(1)
}

// engaged reports whether names that exist were asked for in this second or the last.
func (b *budget) engaged(now int64) bool {
	w := b.window.Load()
	sec := now / 1e9
	return (w == sec && (b.existing.Load() > 0 || b.previous.Load() > 0)) || (w == sec-1 && b.existing.Load() > 0)
}

// wouldSign reports whether take would let a query over UDP sign at now (Unix ns),
// taking nothing: the fast path hands such a query to the chain, which takes.
func (b *budget) wouldSign(now int64) bool {
	if b.rate == 0 || !b.engaged(now) {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last == 0 || min(b.rate, b.tokens+b.rate*float64(max(now-b.last, 0))/1e9) >= 1
}

// take asks for one signature at now (Unix ns) for a query over UDP or TCP. With
// budgetWait the caller waits the duration returned, then signs.
func (b *budget) take(now int64, tcp bool) (budgetVerdict, time.Duration) {
	if b.rate == 0 || !b.engaged(now) {
		return budgetSign, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == 0 {
		b.tokens, b.last = b.rate, now
	}
	if now > b.last {
		b.tokens = min(b.rate, b.tokens+b.rate*float64(now-b.last)/1e9)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return budgetSign, 0
	}
	if !tcp {
		return budgetTruncate, 0
	}
	// Reserve a token ahead: the debt is paid back by the refill.
	wait := time.Duration((1 - b.tokens) / b.rate * 1e9)
	if wait > maxWait {
		return budgetRefuse, 0
	}
	b.tokens--
	return budgetWait, wait
}

// autoBudget asks for a budget of a quarter of what the server's cores can sign.
const autoBudget = -1

// denialRate returns the budget of the zone signed by s with ks: the configured rate,
// or with autoBudget a quarter of the signatures a second all cores make, measured
// now (with a key made for the probe when the zone's keys come from etcd later).
func (cfg *config) denialRate(s *signer, ks *keySet) float64 {
	if cfg.denialBudget != autoBudget {
		return cfg.denialBudget
	}
	const probes = 32
	wire, _ := packName(make([]byte, 256), "budget-probe."+s.origin)
	nsec := append(append([]byte{1, 0}, wire...), bitmapNXNAME...)
	if ks == nil {
		ks = probeKeys(s.origin)
	}
	out := make([]byte, ks.nz()*sigSize)
	start := time.Now()
	for range probes {
		inc, exp := s.times(start)
		if err := s.signSet(ks, out, wire, dns.TypeNSEC, cfg.ttl, inc, exp, [][]byte{nsec}); err != nil {
			return 0 // the failure shows at the first query; no budget to guess
		}
	}
	per := time.Since(start) / probes
	rate := float64(runtime.GOMAXPROCS(0)) / per.Seconds() / 4
	log.Infof("zone %s: proofs of nonexistence signed within %.0f a second while names that exist are asked for (a quarter of %d cores at %s a signature)",
		s.origin, rate, runtime.GOMAXPROCS(0), per.Round(time.Microsecond))
	return rate
}

// overBudget counts a query over the budget, and logs at most once every ten seconds.
func (s *signer) overBudget(now int64, action string) {
	overBudget.WithLabelValues(s.origin, action).Inc()
	b := s.budget
	n := b.over.Add(1)
	if last := b.loggedAt.Load(); now-last >= 10e9 && b.loggedAt.CompareAndSwap(last, now) {
		b.over.Add(-n)
		log.Warningf("zone %s: %d queries for names that do not exist over the signing budget of %.0f a second since the last report (UDP: TC, TCP: delayed)",
			s.origin, n, b.rate)
	}
}
