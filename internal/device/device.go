// Package device is deviceid's device simulator (cmd/deviceid-device): it does what a
// real device does. It makes a key, enrolls over EST (RFC 7030, with
// github.com/globalsign/est's client) with its one-time code, connects to its MQTT
// broker authenticating the broker by the TLSA RRset at _<port>._tcp.<host> (package
// verify, the device side), publishes telemetry on devices/<name>/telemetry,
// re-enrolls before its certificate expires, and reconnects with backoff.
package device

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/deviceid/deviceid/verify"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/globalsign/est"
)

// Config is one simulated device.
type Config struct {
	Name   string // the device name, e.g. sensor7
	Zone   string // e.g. iot.example
	Code   string // the one-time enrollment code, for the first enrollment
	Signer string // host:port of the signer's EST
	// SignerCA trusts the signer's HTTPS certificate (EST's explicit anchor).
	SignerCA *x509.CertPool
	Broker   string // host:port to connect to
	// BrokerHost and BrokerPort name the broker's TLSA RRset (_<port>._tcp.<host>).
	BrokerHost string
	BrokerPort int
	Verifier   *verify.Verifier // trusts DNS: a validating resolver's AD, or the zone's DS
	StateDir   string           // the key and the certificate live here
	Interval   time.Duration    // between telemetry messages (5 s when 0)
	Logger     *slog.Logger
	// Published is told of each telemetry message the broker acknowledged; tests use it.
	Published func(topic string)
	// Now is the device's clock for its certificate's age (time.Now when nil).
	Now func() time.Time
	// After is the device's timer for the waits between connections (time.After when
	// nil); tests pass a fake one.
	After func(time.Duration) <-chan time.Time
}

func (d *Device) now() time.Time {
	if d.c.Now != nil {
		return d.c.Now()
	}
	return time.Now()
}

// Device is a running simulated device.
type Device struct {
	c    Config
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	log  *slog.Logger
	// connected: the last session got as far as a connection (the backoff starts over).
	connected bool
	mu        sync.Mutex // guards cert and key against Certificate's readers
	// connect runs one session and refused says why DNS no longer vouches for the
	// device's key (nil while it does): d.session and d.refused, or a test's.
	connect, refused func(context.Context) error
}

// New loads the device's key and certificate from its state directory, making a key
// and enrolling with the code when it has none.
func New(ctx context.Context, c Config) (*Device, error) {
	d := &Device{c: c, log: c.Logger}
	d.connect, d.refused = d.session, d.notVouched
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("device", c.Name)
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nil, err
	}
	if err := d.loadKey(); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(d.file("device.pem")); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			d.cert, _ = x509.ParseCertificate(blk.Bytes)
		}
	}
	if d.cert == nil {
		if c.Code == "" {
			return nil, errors.New("no certificate yet and no enrollment code to get one")
		}
		if err := d.enroll(ctx, false); err != nil {
			return nil, fmt.Errorf("enrolling over EST: %w", err)
		}
	}
	return d, nil
}

func (d *Device) file(name string) string { return filepath.Join(d.c.StateDir, name) }

func (d *Device) loadKey() error {
	if b, err := os.ReadFile(d.file("device.key")); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return fmt.Errorf("%s: not PEM", d.file("device.key"))
		}
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		d.key = k
		return err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, _ := x509.MarshalECPrivateKey(k)
	d.key = k
	return os.WriteFile(d.file("device.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// Certificate is the device's current certificate.
func (d *Device) Certificate() *x509.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cert
}

// enroll gets a certificate over EST: /simpleenroll with the code, or /simplereenroll
// with the current certificate (for a new key, kept until the new certificate is in).
func (d *Device) enroll(ctx context.Context, renew bool) error {
	identity := d.c.Name + "._device." + d.c.Zone
	key := d.key
	if renew {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return err
		}
	}
	// RFC 7030 §4.2.2: a re-enrollment repeats the Subject and SubjectAltName.
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: identity}, DNSNames: []string{identity}}, key)
	if err != nil {
		return err
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	client := &est.Client{Host: d.c.Signer, ExplicitAnchor: d.c.SignerCA, Username: d.c.Name, Password: d.c.Code}
	var cert *x509.Certificate
	if renew {
		client.Username, client.Password = "", ""
		client.Certificates, client.PrivateKey = []*x509.Certificate{d.cert}, d.key
		cert, err = client.Reenroll(ctx, csr)
	} else {
		cert, err = client.Enroll(ctx, csr)
	}
	if err != nil {
		return err
	}
	der, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(d.file("device.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(d.file("device.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return err
	}
	d.mu.Lock()
	d.key, d.cert = key, cert
	d.mu.Unlock()
	d.log.Info("enrolled", "renewal", renew, "not_after", cert.NotAfter)
	return nil
}

// renewDue reports whether the certificate has less than a third of its life left.
func (d *Device) renewDue(now time.Time) bool {
	life := d.cert.NotAfter.Sub(d.cert.NotBefore)
	return d.cert.NotAfter.Sub(now) < life/3
}

// errRenewal ends a session for a re-enrollment.
var errRenewal = errors.New("the certificate is due for renewal")

// The waits between connections: from retryMin doubling to retryMax; and once DNS no
// longer vouches for the device's own key (revoked, suspended, deleted), when the broker
// will refuse every attempt until an operator acts, from refusedMin doubling to
// refusedMax, said once in the log rather than at every attempt.
const (
	retryMin, retryMax     = time.Second, 30 * time.Second
	refusedMin, refusedMax = time.Minute, time.Hour
)

// nextDelay is the wait after a failed session, the previous wait being prev (0 after a
// session that connected).
func nextDelay(prev time.Duration, refused bool) time.Duration {
	lo, hi := retryMin, retryMax
	if refused {
		lo, hi = refusedMin, refusedMax
	}
	return min(max(2*prev, lo), hi)
}

// Run connects and publishes until ctx ends, reconnecting with backoff (nextDelay) and
// re-enrolling when the certificate nears its end.
func (d *Device) Run(ctx context.Context) error {
	after := d.c.After
	if after == nil {
		after = time.After
	}
	var delay time.Duration
	var wasRefused bool
	for ctx.Err() == nil {
		if !wasRefused && d.renewDue(d.now()) { // a refused key is refused a renewal too
			if err := d.enroll(ctx, true); err != nil {
				d.log.Warn("re-enrollment failed", "err", err)
			}
		}
		d.connected = false
		err := d.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if d.connected {
			delay = 0
		}
		if errors.Is(err, errRenewal) {
			continue // re-enroll and reconnect at once
		}
		why := d.refused(ctx)
		delay = nextDelay(delay, why != nil)
		switch {
		case why != nil && !wasRefused:
			d.log.Error("DNS no longer vouches for this device's key, so the broker refuses it: retrying ever more rarely, until it is enrolled again (a revoked key) or an operator resumes it (a suspended device)",
				"reason", why, "retry_in", delay, "retry_at_most_every", refusedMax)
		case why != nil:
			d.log.Debug("still refused", "err", err, "retry_in", delay)
		default:
			if wasRefused {
				d.log.Info("DNS vouches for this device's key again")
			}
			d.log.Warn("disconnected", "err", err, "retry_in", delay)
		}
		wasRefused = why != nil
		select {
		case <-ctx.Done():
			return nil
		case <-after(delay):
		}
	}
	return nil
}

// notVouched asks DNS about the device's own certificate, as its broker does: the
// reason it is refused (its key revoked, or no record matching it), or nil when DNS
// vouches for it or cannot be asked (the usual backoff then).
func (d *Device) notVouched(ctx context.Context) error {
	_, err := d.c.Verifier.Verify(ctx, []*x509.Certificate{d.Certificate()})
	if errors.Is(err, verify.ErrRevoked) || errors.Is(err, verify.ErrNoMatch) {
		return err
	}
	return nil
}

// session is one connection: publish telemetry until it breaks or a renewal is due.
func (d *Device) session(ctx context.Context) error {
	tlsCert := tls.Certificate{Certificate: [][]byte{d.cert.Raw}, PrivateKey: d.key}
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().AddBroker("tls://" + d.c.Broker).SetClientID(d.c.Name).
		SetTLSConfig(d.c.Verifier.ClientConfig(d.c.BrokerHost, d.c.BrokerPort, tlsCert)).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	client := paho.NewClient(opts)
	if tok := client.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connecting to %s: %v", d.c.Broker, tok.Error())
	}
	defer client.Disconnect(250)
	d.connected = true
	d.log.Info("connected", "broker", d.c.Broker, "authenticated_by", verify.ServiceName(d.c.BrokerHost, d.c.BrokerPort))
	interval := d.c.Interval
	if interval == 0 {
		interval = 5 * time.Second
	}
	topic := "devices/" + d.c.Name + "/telemetry"
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 0; ; n++ {
		value := strconv.Itoa(20 + n%10)
		tok := client.Publish(topic, 1, false, value)
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			d.log.Info("published", "topic", topic, "value", value)
			if d.c.Published != nil {
				d.c.Published(topic)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			return err
		case <-t.C:
			if d.renewDue(d.now()) {
				return errRenewal
			}
		}
	}
}
