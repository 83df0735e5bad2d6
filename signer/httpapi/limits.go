package httpapi

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/deviceid/deviceid/signer/registry"
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

// failureSlots is the size of the failure table (by client address).
const failureSlots = 4096

// failureLimiter limits the refused requests of each client address (IPv6 by /64).
type failureLimiter struct{ b *registry.Buckets }

func newFailureLimiter(l Limits, now func() time.Time) *failureLimiter {
	return &failureLimiter{registry.NewBuckets(failureSlots, l.FailuresPerSecond, float64(l.FailureBurst), now)}
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
		if !f.b.Take(key, 1) {
			tooMany(w, f.b.Wait(key, 1), "too many refused requests from this address; try again later")
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status != http.StatusUnauthorized && sw.status != http.StatusForbidden {
			f.b.Give(key, 1)
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
