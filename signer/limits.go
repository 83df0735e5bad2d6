package signer

import (
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits bound what clients can make the signer hold or do. Zero fields take the
// defaults of DefaultLimits.
type Limits struct {
	// MaxConnections bounds the connections served at once; more wait in the kernel's
	// accept queue.
	MaxConnections int
	// MaxHeaderBytes bounds a request's line and headers (a URL counts here).
	MaxHeaderBytes int
	// FailuresPerSecond and FailureBurst bound the refused requests (401, 403: wrong
	// tokens, codes, certificates) a client address may make to the API and to EST's
	// enrollments: a request takes one from its address's bucket before it is served
	// (429 when there is none) and gives it back unless it was refused.
	FailuresPerSecond float64
	FailureBurst      int
}

// DefaultLimits are the limits of a signer that was given none.
var DefaultLimits = Limits{MaxConnections: 1024, MaxHeaderBytes: 16 << 10, FailuresPerSecond: 10, FailureBurst: 100}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxConnections > 0 {
		d.MaxConnections = l.MaxConnections
	}
	if l.MaxHeaderBytes > 0 {
		d.MaxHeaderBytes = l.MaxHeaderBytes
	}
	if l.FailuresPerSecond > 0 {
		d.FailuresPerSecond = l.FailuresPerSecond
	}
	if l.FailureBurst > 0 {
		d.FailureBurst = l.FailureBurst
	}
	return d
}

// buckets are token buckets by key in a table of fixed size, so that ever new keys
// cannot grow it: a key lives in one set of four slots chosen by a hash with a random
// seed, and a new key takes the slot of its set with the most tokens left. A key that
// has used its tokens is the last to be pushed out, so a flood of new keys neither
// grows the table nor frees a limited key, and clients that collide do not share a
// bucket.
type buckets struct {
	rate, burst float64 // tokens a second, and at most
	now         func() time.Time
	seed        maphash.Seed
	mu          sync.Mutex
	slots       []bucket
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

const bucketWays = 4

func newBuckets(slots int, rate, burst float64, now func() time.Time) *buckets {
	if now == nil {
		now = time.Now
	}
	slots = max(slots, bucketWays) / bucketWays * bucketWays
	return &buckets{rate: rate, burst: burst, now: now, seed: maphash.MakeSeed(), slots: make([]bucket, slots)}
}

// slot returns key's bucket, refilled to now (callers hold mu).
func (b *buckets) slot(key string) *bucket {
	now := b.now()
	sets := len(b.slots) / bucketWays
	set := b.slots[int(maphash.String(b.seed, key)%uint64(sets))*bucketWays:][:bucketWays]
	var fullest *bucket
	for i := range set {
		s := &set[i]
		if s.key != "" {
			s.tokens = min(b.burst, s.tokens+now.Sub(s.last).Seconds()*b.rate)
			s.last = now
		}
		if s.key == key {
			return s
		}
		if fullest == nil || s.key == "" || fullest.key != "" && s.tokens > fullest.tokens {
			fullest = s
		}
	}
	*fullest = bucket{key: key, tokens: b.burst, last: now}
	return fullest
}

// take takes n tokens from key's bucket if it has them.
func (b *buckets) take(key string, n float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	if s.tokens < n {
		return false
	}
	s.tokens -= n
	return true
}

// give gives n tokens back to key's bucket.
func (b *buckets) give(key string, n float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	s.tokens = min(b.burst, s.tokens+n)
}

// wait is how long key's bucket needs to hold n tokens, at least a second.
func (b *buckets) wait(key string, n float64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	return max(time.Second, time.Duration((n-s.tokens)/b.rate*float64(time.Second)))
}

// failureSlots is the size of the failure table (by client address).
const failureSlots = 4096

// failureLimiter limits the refused requests of each client address (IPv6 by /64).
type failureLimiter struct{ b *buckets }

func newFailureLimiter(l Limits, now func() time.Time) *failureLimiter {
	return &failureLimiter{newBuckets(failureSlots, l.FailuresPerSecond, float64(l.FailureBurst), now)}
}

// client is the key of a request's client: its address, an IPv6 one by /64. The
// connection's address only: headers such as X-Forwarded-For are anybody's to write.
func client(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String()
	}
	return host
}

// authenticates reports whether a request is one a credential is checked on: the API
// and EST's enrollments. CA certificates, the console's files, /healthz and /metrics
// are never answered 429.
func authenticates(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/api/") ||
		strings.HasSuffix(r.URL.Path, "/simpleenroll") || strings.HasSuffix(r.URL.Path, "/simplereenroll")
}

// handler answers 429 to a client out of failures. A request takes a failure before
// it is served, so that requests sent at once cannot all be tried, and gets it back
// unless it was refused (401, 403).
func (f *failureLimiter) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !authenticates(r) {
			next.ServeHTTP(w, r)
			return
		}
		key := client(r)
		if !f.b.take(key, 1) {
			tooMany(w, f.b.wait(key, 1), "too many refused requests from this address; try again later")
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status != http.StatusUnauthorized && sw.status != http.StatusForbidden {
			f.b.give(key, 1)
		}
	})
}

// tooMany answers 429 with when to try again.
func tooMany(w http.ResponseWriter, retry time.Duration, why string) {
	rateLimited.Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(retry.Round(time.Second)/time.Second)))
	writeError(w, http.StatusTooManyRequests, errors.New(why))
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Quotas bound the etcd writes of tenants and of devices, so that none can fill etcd
// (its history grows with every write until it is compacted, and a full etcd refuses
// every write, revocations included): a tenant's writes by bytes, a device's own
// enrollments by count. Zero rates are no bound (the operator is never bound).
type Quotas struct {
	TenantBytesPerSecond float64
	TenantBurstBytes     float64
	DeviceWritesPerHour  float64
	DeviceWriteBurst     float64
	once                 sync.Once
	tenants, devices     *buckets
}

// DefaultQuotas are a serving signer's: 256 KiB/s per tenant (a thousand new devices
// a second at a few hundred bytes each) after a burst of 16 MiB, and ten enrollments
// per device, then six an hour (a device renews once a year).
func DefaultQuotas() *Quotas {
	return &Quotas{TenantBytesPerSecond: 256 << 10, TenantBurstBytes: 16 << 20, DeviceWritesPerHour: 6, DeviceWriteBurst: 10}
}

// quotaSlots bounds the tables of tenants and devices.
const quotaSlots = 16384

// ErrRateLimited is a write refused by a quota; errors carrying it are RateLimitErrors.
var ErrRateLimited = errors.New("rate limited")

// RateLimitError says which quota refused a write and when to try again.
type RateLimitError struct {
	What  string
	Retry time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%s: try again in %s", e.What, e.Retry.Round(time.Second))
}

func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// charge takes a write of n bytes by actor on a record of tenant from the quotas.
func (q *Quotas) charge(actor Actor, tenant, device string, n int, now func() time.Time) error {
	if q == nil || actor.Operator {
		return nil
	}
	q.once.Do(func() {
		if q.TenantBytesPerSecond > 0 {
			q.tenants = newBuckets(quotaSlots, q.TenantBytesPerSecond, max(q.TenantBurstBytes, float64(2*MaxBody)), now)
		}
		if q.DeviceWritesPerHour > 0 {
			q.devices = newBuckets(quotaSlots, q.DeviceWritesPerHour/3600, max(q.DeviceWriteBurst, 1), now)
		}
	})
	if actor.isDevice() && q.devices != nil && !q.devices.take(device, 1) {
		return &RateLimitError{"the device enrolls too often", q.devices.wait(device, 1)}
	}
	if actor.Tenant != "" {
		tenant = actor.Tenant
	}
	if tenant != "" && q.tenants != nil && !q.tenants.take(tenant, float64(n)) {
		return &RateLimitError{fmt.Sprintf("tenant %q writes more than its quota", tenant), q.tenants.wait(tenant, float64(n))}
	}
	return nil
}
