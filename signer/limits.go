package signer

import (
	"hash/maphash"
	"net"
	"net/http"
	"strconv"
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
	// tokens, codes, certificates) a client address may make: beyond them it is
	// answered 429 before its request is looked at, until its bucket refills.
	FailuresPerSecond float64
	FailureBurst      int
}

// DefaultLimits are the limits of a signer that was given none.
var DefaultLimits = Limits{MaxConnections: 1024, MaxHeaderBytes: 16 << 10, FailuresPerSecond: 10, FailureBurst: 50}

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

// failureSlots is the size of the failure table: fixed, so that clients with ever new
// addresses cannot grow it. Addresses that hash to one slot share its bucket.
const failureSlots = 4096

// failureLimiter is a token bucket per client address (IPv6 by /64), in a fixed table.
type failureLimiter struct {
	rate  float64
	burst float64
	now   func() time.Time
	seed  maphash.Seed
	mu    sync.Mutex
	slots [failureSlots]bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newFailureLimiter(l Limits, now func() time.Time) *failureLimiter {
	if now == nil {
		now = time.Now
	}
	return &failureLimiter{rate: l.FailuresPerSecond, burst: float64(l.FailureBurst), now: now, seed: maphash.MakeSeed()}
}

// slot returns the bucket of a request's client, refilled to now.
func (f *failureLimiter) slot(r *http.Request) *bucket {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	key := host
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		key = ip.Mask(net.CIDRMask(64, 128)).String()
	}
	b := &f.slots[maphash.String(f.seed, key)%failureSlots]
	now := f.now()
	if b.last.IsZero() {
		b.tokens = f.burst
	} else {
		b.tokens = min(f.burst, b.tokens+now.Sub(b.last).Seconds()*f.rate)
	}
	b.last = now
	return b
}

// allowed reports whether the client has failures left.
func (f *failureLimiter) allowed(r *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slot(r).tokens >= 1
}

// failed takes one failure from the client's bucket.
func (f *failureLimiter) failed(r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.slot(r)
	b.tokens = max(0, b.tokens-1)
}

// handler answers 429 to a client out of failures, and counts the requests that
// fail authentication or authorization.
func (f *failureLimiter) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.allowed(r) {
			rateLimited.Inc()
			requestErrors.WithLabelValues(strconv.Itoa(http.StatusTooManyRequests)).Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(max(1, 1/f.rate))))
			writeJSON(w, http.StatusTooManyRequests, ErrorResponse{Error: "too many refused requests from this address; try again later"})
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == http.StatusUnauthorized || sw.status == http.StatusForbidden {
			f.failed(r)
		}
	})
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
