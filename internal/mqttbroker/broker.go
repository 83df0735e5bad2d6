// Package mqttbroker is deviceid's demo MQTT broker (cmd/deviceid-mqtt) on
// github.com/mochi-mqtt/server/v2: TLS 1.3, devices authenticated by DANE through
// package verify (their certificate must match the TLSA RRset at their _device name),
// each device's MQTT client id must be its device name, it may use only the topics
// devices/<device>/#, and connected devices are checked again every second, so that a
// revoked or suspended device is disconnected once its cached TLSA answer has lived out
// its TTL, not only refused at its next connection.
package mqttbroker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/verify"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is a running broker.
type Broker struct {
	Server   *mqtt.Server
	Verifier *verify.Verifier
	// Recheck is how often connected devices are checked again (1 s when 0).
	Recheck time.Duration
	// OnDisconnect, when set, is told of each device the re-check disconnects and why
	// (from several goroutines at once).
	OnDisconnect func(device string, err error)

	mu       sync.Mutex
	sessions map[string]*session // by client id
	addr     net.Addr
}

// session is a connected device: its certificate chain and its name.
type session struct {
	client *mqtt.Client
	chain  []*x509.Certificate
	device string
}

// Config says what the broker serves.
type Config struct {
	Listen      string          // host:port for MQTT over TLS, e.g. ":8883"
	Certificate tls.Certificate // the broker's own (its key is published as a service record)
	Verifier    *verify.Verifier
	// ClientCAs, instead of Verifier, authenticates devices by a CA pool (the
	// comparison of BENCHMARKS.md): the device's name is its certificate's _device SAN.
	ClientCAs *x509.CertPool
	Logger    *slog.Logger
}

// Start listens and serves until ctx ends.
func Start(ctx context.Context, c Config) (*Broker, error) {
	if c.Verifier == nil && c.ClientCAs == nil {
		return nil, errors.New("a broker needs a verifier: it authenticates devices by DANE")
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	b := &Broker{Verifier: c.Verifier, sessions: map[string]*session{}}
	if c.ClientCAs != nil {
		b.Verifier = nil // the pool decides, in the handshake
	}
	b.Server = mqtt.New(&mqtt.Options{Logger: log, InlineClient: false})
	if err := b.Server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, err
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{c.Certificate}, MinVersion: tls.VersionTLS13}
	if c.ClientCAs != nil {
		tlsConfig.ClientAuth, tlsConfig.ClientCAs = tls.RequireAndVerifyClientCert, c.ClientCAs
	} else {
		tlsConfig.ClientAuth = tls.RequireAnyClientCert // DANE, not a CA pool, decides
		tlsConfig.VerifyPeerCertificate = c.Verifier.VerifyPeerCertificate
	}
	// The broker's own listener, handed to mochi: its address is known at once (a
	// port of 0 is a free one) and nothing else can take it meanwhile.
	ln, err := tls.Listen("tcp", c.Listen, tlsConfig)
	if err != nil {
		return nil, err
	}
	b.addr = ln.Addr()
	if err := b.Server.AddListener(listeners.NewNet("mqtts", ln)); err != nil {
		ln.Close()
		return nil, err
	}
	if err := b.Server.Serve(); err != nil {
		return nil, err
	}
	if b.Verifier != nil {
		go b.recheck(ctx)
	}
	go func() {
		<-ctx.Done()
		b.Server.Close()
	}()
	return b, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr.String() }

// DeviceOf returns the device name of an identity name: sensor7._device.iot.example. → sensor7.
func DeviceOf(identity string) string {
	device, _, _ := strings.Cut(identity, "._device.")
	return device
}

// sanDevice is the device a certificate names in its _device SAN, or "".
func sanDevice(cert *x509.Certificate) string {
	for _, n := range cert.DNSNames {
		if d := DeviceOf(strings.ToLower(n) + "."); d != strings.ToLower(n)+"." {
			return d
		}
	}
	return ""
}

// recheck verifies every connected device again every Recheck; the verifier's cache
// holds each answer for at most its TTL, so a revocation is seen within the TTL, and a
// device whose key is no longer vouched for is disconnected.
func (b *Broker) recheck(ctx context.Context) {
	every := b.Recheck
	if every == 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		sessions := make([]*session, 0, len(b.sessions))
		for _, s := range b.sessions {
			sessions = append(sessions, s)
		}
		b.mu.Unlock()
		// Most checks are answered from the cache; the ones whose answers expired wait
		// for DNS, in parallel, so that many expiring at once still fit in the round.
		var wg sync.WaitGroup
		slots := make(chan struct{}, recheckParallel)
		for _, s := range sessions {
			slots <- struct{}{}
			wg.Go(func() {
				defer func() { <-slots }()
				b.recheckSession(ctx, s)
			})
		}
		wg.Wait()
	}
}

// recheckParallel bounds the DNS lookups one recheck round has in flight.
const recheckParallel = 64

// recheckSession disconnects s when DNS no longer vouches for its key.
func (b *Broker) recheckSession(ctx context.Context, s *session) {
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := b.Verifier.Verify(vctx, s.chain)
	cancel()
	if err == nil || errors.Is(err, verify.ErrLookupFailed) {
		return // DNS unreachable is no verdict: the session stays
	}
	slog.Info("disconnecting a device DNS no longer vouches for", "device", s.device, "err", err)
	b.Server.DisconnectClient(s.client, packets.ErrNotAuthorized)
	s.client.Stop(err)
	b.forget(s.client.ID, s.client)
	if b.OnDisconnect != nil {
		b.OnDisconnect(s.device, err)
	}
}

func (b *Broker) forget(id string, cl *mqtt.Client) {
	b.mu.Lock()
	if s, ok := b.sessions[id]; ok && s.client == cl {
		delete(b.sessions, id)
	}
	b.mu.Unlock()
}

// Connected lists the devices connected now.
func (b *Broker) Connected() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.sessions))
	for _, s := range b.sessions {
		out = append(out, s.device)
	}
	return out
}

// hook is the broker's authentication and authorisation.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "deviceid-dane" }

func (h *hook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect
}

// OnConnectAuthenticate admits a client whose TLS handshake passed the DANE check
// (VerifyPeerCertificate) and whose client id is its device name.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return false
	}
	chain := tc.ConnectionState().PeerCertificates
	var device string
	if h.b.Verifier == nil {
		device = sanDevice(chain[0]) // the CA pool checked the chain in the handshake
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := h.b.Verifier.Verify(ctx, chain) // cached since the handshake
		if err != nil {
			slog.Info("refused", "client", pk.Connect.ClientIdentifier, "err", err)
			return false
		}
		device = DeviceOf(res.Name)
	}
	if pk.Connect.ClientIdentifier != device {
		slog.Info("refused: the client id is not the device's name", "client", pk.Connect.ClientIdentifier, "device", device)
		return false
	}
	h.b.mu.Lock()
	h.b.sessions[cl.ID] = &session{client: cl, chain: chain, device: device}
	h.b.mu.Unlock()
	return true
}

// OnACLCheck limits a device to its own topics, devices/<device>/#.
// (Wildcards below that prefix stay inside it.)
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, _ bool) bool {
	return strings.HasPrefix(topic, "devices/"+cl.ID+"/")
}

func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.b.forget(cl.ID, cl) }
