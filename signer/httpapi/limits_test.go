package httpapi

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca/catest"
)

// The API and EST's enrollments are behind the failure limiter: a client that keeps
// failing authentication is answered 429, others are not, its bucket refills, and
// requests sent at once cannot all be tried. /healthz is never limited.
func TestFailureLimiter(t *testing.T) {
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	s := &Server{API: API{CA: catest.New(t), Registry: testRegistry(t), Token: "0123456789abcdef0123"}, Now: clock.Now,
		Limits: Limits{FailuresPerSecond: 1, FailureBurst: 3}}
	h := s.Handler()
	ask := func(addr, path, token string) int {
		req := httptest.NewRequest("GET", path, nil)
		req.RemoteAddr = addr
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	const whoami, good = "/api/v1/whoami", "0123456789abcdef0123"
	for range 10 {
		if code := ask("192.0.2.1:1000", whoami, good); code != http.StatusOK {
			t.Fatalf("successes cost nothing: %d", code)
		}
	}
	for i := range 3 {
		if code := ask("192.0.2.1:1000", whoami, "wrong"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, code)
		}
	}
	if code := ask("192.0.2.1:1001", whoami, good); code != http.StatusTooManyRequests {
		t.Errorf("after the burst of failures: %d, want 429", code)
	}
	if code := ask("192.0.2.1:1001", "/healthz", ""); code == http.StatusTooManyRequests {
		t.Error("/healthz answered 429")
	}
	if code := ask("192.0.2.2:1000", whoami, good); code != http.StatusOK {
		t.Errorf("another client: %d", code)
	}
	clock.Add(time.Second)
	if code := ask("192.0.2.1:1002", whoami, good); code != http.StatusOK {
		t.Errorf("after a second: %d", code)
	}
}

// A request takes its failure before it is served: of many sent at once, no more than
// the burst are tried.
func TestFailureLimiterConcurrent(t *testing.T) {
	l := newFailureLimiter(Limits{FailuresPerSecond: 1, FailureBurst: 5}, func() time.Time { return time.Unix(0, 0) })
	release := make(chan struct{})
	var tried atomic.Int32
	h := l.handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tried.Add(1)
		<-release
		w.WriteHeader(http.StatusUnauthorized)
	}))
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			req := httptest.NewRequest("GET", "/api/v1/whoami", nil)
			req.RemoteAddr = "192.0.2.1:1"
			h.ServeHTTP(httptest.NewRecorder(), req)
		})
	}
	for tried.Load() < 5 {
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	if n := tried.Load(); n != 5 {
		t.Errorf("%d requests tried at once, burst 5", n)
	}
}
