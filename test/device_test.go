package test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	simulator "github.com/deviceid/deviceid/internal/device"
	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"

	"github.com/miekg/dns"
)

// TestDeviceSimulator runs the simulated device against the whole stack: it enrolls
// over EST with its one-time code, connects to the DANE broker authenticating it by
// its service TLSA, publishes telemetry, re-enrolls when its certificate ages (a fake
// clock ages it) and reconnects with the new key, and is cut off when it is revoked;
// then it sees its key revoked in DNS, says so once, and waits a minute and more between
// attempts (once revoked, its timer fires at once; the waits it asks for are counted).
func TestDeviceSimulator(t *testing.T) {
	st := startMQTTStack(t, 2)
	s := serveSigner(t, st.authority, filepath.Join(st.dir, ca.CACertFile), etcdclient.Settings{Endpoints: st.reg.Client.Endpoints()})
	var code httpapi.CodeResponse
	if status := s.admin(t, "POST", "/api/v1/devices/thermo/code", "", &code); status != 201 {
		t.Fatalf("code: %d", status)
	}
	var mu sync.Mutex
	var cut []string
	st.broker.OnDisconnect = func(device string, _ error) { mu.Lock(); cut = append(cut, device); mu.Unlock() }
	u, _ := url.Parse(s.url)
	pool := x509.NewCertPool()
	pool.AddCert(st.authority.Cert)
	var published atomic.Int64
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	var logs lockedBuffer
	var waits []time.Duration // once revoked, guarded by mu
	var revoked atomic.Bool
	after := func(d time.Duration) <-chan time.Time {
		if !revoked.Load() {
			return time.After(d)
		}
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return time.After(10 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	d, err := simulator.New(ctx, simulator.Config{Name: "thermo", Zone: "iot.example", Code: code.Code, Signer: u.Host, SignerCA: pool,
		Broker: st.broker.Addr(), BrokerHost: brokerHost, BrokerPort: 8883, Verifier: st.verifier(), StateDir: t.TempDir(),
		Interval: 100 * time.Millisecond, Published: func(string) { published.Add(1) }, Now: func() time.Time { return time.Unix(0, clock.Load()) },
		After: after, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	first := d.Certificate()
	testenv.Eventually(t, "enrolled in DNS", func() error {
		return answerIs(t, st.dns, "thermo._device.iot.example.", dns.RcodeSuccess, []string{eeOf(first), discoveryOf(first)})
	})
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	testenv.Eventually(t, "telemetry published", func() error {
		if published.Load() == 0 {
			return fmt.Errorf("nothing published")
		}
		return nil
	})
	// Age the certificate past two thirds of its life: the device re-enrolls (a new
	// key, over mutual TLS with the current certificate) and goes on publishing.
	clock.Add(int64(300 * 24 * time.Hour))
	testenv.Eventually(t, "re-enrolled", func() error {
		if d.Certificate().SerialNumber.Cmp(first.SerialNumber) == 0 {
			return fmt.Errorf("still the first certificate")
		}
		return nil
	})
	second := d.Certificate()
	clock.Store(time.Now().UnixNano())
	n := published.Load()
	testenv.Eventually(t, "publishing with the new certificate", func() error {
		if published.Load() <= n {
			return fmt.Errorf("nothing published since the renewal")
		}
		return nil
	})
	if err := answerIs(t, st.dns, "thermo._device.iot.example.", dns.RcodeSuccess, []string{eeOf(first), discoveryOf(first), eeOf(second), discoveryOf(second)}); err != nil {
		t.Errorf("after the renewal: %v", err)
	}
	// Revoked: the broker cuts it off, and it cannot come back.
	revoked.Store(true)
	if status := s.admin(t, "POST", "/api/v1/devices/thermo/revoke", `{"reason": "keyCompromise"}`, nil); status != 200 {
		t.Fatalf("revoke: %d", status)
	}
	testenv.Eventually(t, "disconnected by the broker", func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(cut, "thermo") {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	testenv.Eventually(t, "backing off for its revoked key", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(waits) < 2 || waits[0] != time.Minute || waits[len(waits)-1] < 2*time.Minute {
			return fmt.Errorf("waits %v", waits)
		}
		return nil
	})
	if slices.Contains(st.broker.Connected(), "thermo") {
		t.Error("the revoked device connected again")
	}
	cancel()
	if n := strings.Count(logs.String(), "no longer vouches"); n != 1 {
		t.Errorf("the revocation said %d times, want once:\n%s", n, logs.String())
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// lockedBuffer is a log's destination that goroutines may write to at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
