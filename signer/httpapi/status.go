package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/deviceid/deviceid/signer/registry"
)

// statuses gives each error of the registry (registry/errors.go) its HTTP status, the
// first that matches: what the caller got wrong is 4xx.
var statuses = []struct {
	err    error
	status int
}{
	{registry.ErrNotFound, http.StatusNotFound},
	{registry.ErrNoSuchKey, http.StatusNotFound},
	{registry.ErrNoTenant, http.StatusNotFound},
	{registry.ErrNoService, http.StatusNotFound},
	{registry.ErrForbidden, http.StatusForbidden},
	{registry.ErrBadTransferCode, http.StatusForbidden},
	{registry.ErrConflict, http.StatusConflict},
	{registry.ErrTenantDisabled, http.StatusConflict},
	{registry.ErrBadToken, http.StatusUnauthorized},
	{registry.ErrInvalid, http.StatusBadRequest},
	{registry.ErrBadCode, http.StatusUnauthorized},
	{registry.ErrNotActive, http.StatusForbidden},
	{registry.ErrRevokedKey, http.StatusConflict},
	{registry.ErrStoredInvalid, http.StatusInternalServerError},
	{registry.ErrRateLimited, http.StatusTooManyRequests},
}

// statusOf maps an error of the registry to an HTTP status (statuses); anything else
// means etcd could not be reached or kept changing: 503, and nothing was written
// (every write is one transaction).
func statusOf(err error) int {
	for _, s := range statuses {
		if errors.Is(err, s.err) {
			return s.status
		}
	}
	return http.StatusServiceUnavailable
}

// invalid marks err as the caller's mistake (400).
func invalid(err error) error { return fmt.Errorf("%w: %w", registry.ErrInvalid, err) }

// setRetryAfter tells a client refused by a quota when to try again.
func setRetryAfter(w http.ResponseWriter, err error) {
	if limited, ok := errors.AsType[*registry.RateLimitError](err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(limited.Retry.Round(time.Second)/time.Second)))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	requestErrors.WithLabelValues(strconv.Itoa(status)).Inc()
	writeJSON(w, status, ErrorResponse{Error: err.Error()})
}

// jsonMisses answers what mux has no route for as every other API error: ServeMux
// answers it in plain text (404, or 405 with an Allow header it keeps).
func jsonMisses(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		miss := &statusOnly{ResponseWriter: w}
		h.ServeHTTP(miss, r)
		msg := "no such route: " + r.URL.Path
		if miss.status == http.StatusMethodNotAllowed {
			msg = r.Method + " is not allowed on " + r.URL.Path + "; allowed: " + w.Header().Get("Allow")
		}
		writeError(w, miss.status, errors.New(msg))
	})
}

// statusOnly keeps the status (and headers) a handler sets and drops its body.
type statusOnly struct {
	http.ResponseWriter
	status int
}

func (s *statusOnly) WriteHeader(status int)      { s.status = status }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }

// secureHeaders sets the headers that keep a browser from sniffing, framing or
// leaking what the signer serves.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Strict-Transport-Security", "max-age=31536000") // served over HTTPS only
		next.ServeHTTP(w, r)
	})
}
