// Package mqttbroker is deviceid's demo MQTT broker (cmd/deviceid-mqtt) on
// github.com/mochi-mqtt/server/v2: TLS 1.3, devices authenticated by DANE through
// package verify (their certificate must match the TLSA RRset at their _device name).
//
// A broker serves exactly one zone (Config.Zone): a device's MQTT client id must be its
// device name, the part of <device>._device.<zone> before ._device, and names are only
// unique within a zone, so accepting two zones would let sensor7 of one take over the
// session and the topics of sensor7 of the other. Start refuses more than one.
//
// Isolation. One function, allowed, decides every topic a device touches: a device may
// publish and subscribe under devices/<device>/ only (at most 16 levels and 256 bytes
// below it), wildcards only below that prefix and only as whole levels; $SYS, shared
// subscriptions ($share/...) and other devices' topics are refused. It is applied to publishes (after a topic alias is resolved;
// MQTT 5 topic aliases are off: the maximum is 0), to subscriptions, to every message
// delivered, and to the Will at CONNECT: a Will on a topic the device may not publish
// to refuses the connection (CONNACK 0x87 not authorized, 0x05 in MQTT 3.1.1). A device
// the broker disconnects because DNS no longer vouches for it has its Will dropped.
//
// A name's data belongs to a key. A session and the retained messages under
// devices/<device>/ belong to the key (the certificate's SPKI) that made them: a device
// that connects with another key (its key revoked and a new one enrolled, or the name
// deleted and registered again, by another tenant too) starts clean, whatever it asks
// for: the old key's session (subscriptions, messages in flight, Will) and retained
// messages are deleted, and CONNACK says no session is present. A device the re-check
// cuts off loses its session and retained messages at once.
//
// Revocation. Connected devices are verified again every second (Config.Recheck), so a
// revoked or suspended device is disconnected once its cached TLSA answer has lived out
// its TTL, not only refused at its next connection. While DNS cannot be reached a
// session lives on only until the answer it was last verified against has expired
// plus Config.RecheckGrace (fail closed): a device revoked while DNS was down is cut off
// by then. Cut off, its session and retained messages are deleted.
//
// Bounded resources. Config's limits (each with a safe default) bound what one device
// can make the broker hold: packet size (larger packets close the connection; MQTT 5
// clients are told the limit in CONNACK), retained messages per device and their
// bytes, subscriptions per device, messages in flight, queued writes, how long a
// session outlives its connection (whatever an MQTT 5 CONNECT or DISCONNECT asks for;
// a Will's delay ends with its session), how long a message is kept, and how many
// clients are connected. The retained quota counts every retained message however it
// comes: a publish, checked before it is stored (so that the client is told), a Will,
// counted at CONNECT against what the device holds and again when it is sent (over the
// quota then, it is published but not retained), and every message once stored, which
// is deleted if two of a device's connections raced past the quota together. A refused
// publish is answered with its MQTT 5 reason code (0x97 quota exceeded, 0x87 not
// authorized) on QoS 1 and 2; MQTT 3.1.1 has no negative acknowledgement, so such a
// client is disconnected; a QoS 0 message is dropped. Refusals are logged and counted
// (Stats).
package mqttbroker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/deviceid/deviceid/verify"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Default limits, for a broker of up to 10,000 devices sending telemetry.
const (
	DefaultMaxPacketSize    = 64 << 10 // bytes, the fixed header included
	DefaultMaxRetained      = 100      // retained messages per device
	DefaultMaxRetainedBytes = 64 << 10 // payload bytes of a device's retained messages
	DefaultMaxSubscriptions = 100      // topic filters per device
	DefaultReceiveMaximum   = 32       // QoS 1 and 2 messages a device may have unacknowledged
	DefaultMaxInflight      = 64       // QoS 1 and 2 messages to a device held unacknowledged
	DefaultMaxPendingWrites = 256      // messages queued for writing to a device
	DefaultMaxSessionExpiry = time.Hour
	DefaultMaxMessageExpiry = 24 * time.Hour
	DefaultMaxClients       = 10_000
	DefaultRecheckGrace     = 10 * time.Second
)

// Config says what the broker serves.
type Config struct {
	Listen      string          // host:port for MQTT over TLS, e.g. ":8883"
	Certificate tls.Certificate // the broker's own (its key is published as a service record)
	Verifier    *verify.Verifier
	// ClientCAs, instead of Verifier, authenticates devices by a CA pool (the
	// comparison of BENCHMARKS.md): the device's name is its certificate's _device SAN.
	ClientCAs *x509.CertPool
	// Zone is the one zone whose devices may connect; with a Verifier it defaults to
	// the verifier's one zone and must equal it.
	Zone   string
	Logger *slog.Logger

	// Limits; 0 means the default.
	MaxPacketSize    uint32        // largest packet a client may send, bytes
	MaxRetained      int           // retained messages per device
	MaxRetainedBytes int           // payload bytes of one device's retained messages
	MaxSubscriptions int           // topic filters one device may subscribe to
	ReceiveMaximum   uint16        // QoS 1 and 2 publishes a device may have unacknowledged
	MaxInflight      uint16        // QoS 1 and 2 messages held for a device until it acknowledges
	MaxPendingWrites int32         // messages queued for writing to one device
	MaxSessionExpiry time.Duration // how long a session outlives its connection
	MaxMessageExpiry time.Duration // how long a message (a retained one too) is kept
	MaxClients       int64         // connected clients
	// Recheck is how often connected devices are verified again (1 s when 0).
	Recheck time.Duration
	// RecheckGrace is how long past the expiry of the answer a session was last
	// verified against it may stay while DNS cannot be reached.
	RecheckGrace time.Duration
	// Now is the broker's clock for the re-check (time.Now when nil); tests set it,
	// with the verifier's.
	Now func() time.Time
}

// orDefault sets *p to d unless it is positive.
func orDefault[T int | int32 | int64 | uint16 | uint32 | time.Duration](p *T, d T) {
	if *p <= 0 {
		*p = d
	}
}

func (c *Config) setDefaults() {
	orDefault(&c.MaxPacketSize, DefaultMaxPacketSize)
	orDefault(&c.MaxRetained, DefaultMaxRetained)
	orDefault(&c.MaxRetainedBytes, DefaultMaxRetainedBytes)
	orDefault(&c.MaxSubscriptions, DefaultMaxSubscriptions)
	orDefault(&c.ReceiveMaximum, DefaultReceiveMaximum)
	orDefault(&c.MaxInflight, DefaultMaxInflight)
	orDefault(&c.MaxPendingWrites, DefaultMaxPendingWrites)
	orDefault(&c.MaxSessionExpiry, DefaultMaxSessionExpiry)
	orDefault(&c.MaxMessageExpiry, DefaultMaxMessageExpiry)
	orDefault(&c.MaxClients, DefaultMaxClients)
	orDefault(&c.Recheck, time.Second)
	orDefault(&c.RecheckGrace, DefaultRecheckGrace)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Broker is a running broker.
type Broker struct {
	Server   *mqtt.Server
	Verifier *verify.Verifier
	// OnDisconnect, when set, is told of each device the re-check disconnects and why
	// (from several goroutines at once).
	OnDisconnect func(device string, err error)

	cfg      Config
	zone     string // fully qualified, lower case
	log      *slog.Logger
	mu       sync.Mutex
	sessions map[string]*session // by client id
	// owners holds, by device, the key (SHA-256 of the SPKI) its session and retained
	// messages belong to; a device with nothing at the broker has none (pruneOwners).
	owners map[string]spki
	addr   net.Addr
	stats  struct {
		willsRefused, publishesRefused, retainedRefused, subscriptionsRefused, tooLarge, revoked, unverified, cleanStarts, handshakesRefused atomic.Int64
	}
}

// spki is the SHA-256 digest of a certificate's SubjectPublicKeyInfo.
type spki [sha256.Size]byte

// keyOf is the key of the certificate a client authenticated with.
func keyOf(cl *mqtt.Client) (spki, bool) {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return spki{}, false
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return spki{}, false
	}
	return sha256.Sum256(certs[0].RawSubjectPublicKeyInfo), true
}

// session is a connected device: its certificate chain, its key and its name.
type session struct {
	client *mqtt.Client
	chain  []*x509.Certificate
	key    spki
	device string
	// newKey: the name's data belonged to another key, or to none, when it connected;
	// fresh: so a session it would have resumed was emptied, and CONNACK says none.
	newKey, fresh bool
	// cut: the re-check cut it off; it stays in Broker.sessions, not Connected, until
	// mochi is done with it (OnDisconnect).
	cut atomic.Bool
	// validUntil is when the answer the device was last verified against expires
	// (Unix nanoseconds): with DNS away, the session ends RecheckGrace after it.
	validUntil atomic.Int64
	// overQuota holds, by SUBSCRIBE packet id, the filters refused for the
	// subscription limit, so that their SUBACK says quota exceeded.
	mu        sync.Mutex
	overQuota map[uint16][]int
}

// Stats counts what the broker refused and cut off since it started.
type Stats struct {
	WillsRefused         int64 // connections refused for their Will
	PublishesRefused     int64 // publishes refused by the ACL (after topic alias)
	RetainedRefused      int64 // retained publishes over the device's quota
	SubscriptionsRefused int64 // topic filters over the device's quota
	PacketsTooLarge      int64 // connections closed for a packet over MaxPacketSize
	Revoked              int64 // sessions cut off because DNS no longer vouches for them
	Unverified           int64 // sessions cut off because DNS could not be reached past their grace
	CleanStarts          int64 // connections started clean: the name's session or retained messages were another key's, or a cut-off session's
	HandshakesRefused    int64 // TLS handshakes refused by DANE: a key revoked, unknown or not vouched for, or DNS unreachable
	Retained             int64 // retained messages held now, $SYS included
	Sessions             int64 // devices connected now
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.Lock()
	sessions := len(b.sessions)
	b.mu.Unlock()
	return Stats{
		WillsRefused:         b.stats.willsRefused.Load(),
		PublishesRefused:     b.stats.publishesRefused.Load(),
		RetainedRefused:      b.stats.retainedRefused.Load(),
		SubscriptionsRefused: b.stats.subscriptionsRefused.Load(),
		PacketsTooLarge:      b.stats.tooLarge.Load(),
		Revoked:              b.stats.revoked.Load(),
		Unverified:           b.stats.unverified.Load(),
		CleanStarts:          b.stats.cleanStarts.Load(),
		HandshakesRefused:    b.stats.handshakesRefused.Load(),
		Retained:             int64(b.Server.Topics.Retained.Len()),
		Sessions:             int64(sessions),
	}
}

// zoneOf checks that the broker has exactly one zone and returns it, fully qualified.
func zoneOf(c Config) (string, error) {
	zone := c.Zone
	if c.Verifier != nil {
		if len(c.Verifier.Zones) != 1 {
			return "", fmt.Errorf("a broker serves exactly one zone, and the verifier accepts %d (%v): device names, which are MQTT client ids and topics, are unique only within a zone", len(c.Verifier.Zones), c.Verifier.Zones)
		}
		vz := c.Verifier.Zones[0]
		if zone == "" {
			zone = vz
		} else if fqdn(zone) != fqdn(vz) {
			return "", fmt.Errorf("the broker's zone %s is not the verifier's %s", zone, vz)
		}
	}
	if zone == "" {
		return "", errors.New("a broker serves exactly one zone: set Config.Zone")
	}
	return fqdn(zone), nil
}

func fqdn(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) + "." }

// Start listens and serves until ctx ends.
func Start(ctx context.Context, c Config) (*Broker, error) {
	if c.Verifier == nil && c.ClientCAs == nil {
		return nil, errors.New("a broker needs a verifier: it authenticates devices by DANE")
	}
	zone, err := zoneOf(c)
	if err != nil {
		return nil, err
	}
	if c.Verifier != nil && c.ClientCAs == nil {
		if err := c.Verifier.Check(); err != nil {
			return nil, err
		}
	}
	c.setDefaults()
	b := &Broker{Verifier: c.Verifier, cfg: c, zone: zone, log: c.Logger, sessions: map[string]*session{}, owners: map[string]spki{}}
	if c.ClientCAs != nil {
		b.Verifier = nil // the pool decides, in the handshake
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = c.MaxPacketSize
	caps.ReceiveMaximum = c.ReceiveMaximum
	caps.MaximumInflight = c.MaxInflight
	caps.MaximumClientWritesPending = c.MaxPendingWrites
	caps.MaximumSessionExpiryInterval = uint32(c.MaxSessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = int64(c.MaxMessageExpiry / time.Second)
	caps.MaximumClients = c.MaxClients
	caps.TopicAliasMaximum = 0  // an alias table per client is memory, and the ACL sees names
	caps.SharedSubAvailable = 0 // $share/... is refused by the ACL; said so in CONNACK
	b.Server = mqtt.New(&mqtt.Options{Logger: c.Logger, InlineClient: false, Capabilities: caps})
	if err := b.Server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, err
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{c.Certificate}, MinVersion: tls.VersionTLS13}
	if c.ClientCAs != nil {
		tlsConfig.ClientAuth, tlsConfig.ClientCAs = tls.RequireAndVerifyClientCert, c.ClientCAs
	} else {
		tlsConfig.ClientAuth = tls.RequireAnyClientCert // DANE, not a CA pool, decides
		tlsConfig.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := c.Verifier.VerifyPeerCertificate(raw, chains)
			if err != nil {
				b.stats.handshakesRefused.Add(1) // a revoked device that keeps trying shows here
			}
			return err
		}
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
	go b.prune(ctx)
	go func() {
		<-ctx.Done()
		b.Server.Close()
	}()
	return b, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr.String() }

// DeviceOf returns the device name of an identity name in zone, e.g. sensor7 for
// sensor7._device.iot.example. in iot.example., and whether it is one: a name in
// another zone is not, nor one whose device part breaks the naming rules.
func DeviceOf(identity, zone string) (string, bool) {
	device, ok := strings.CutSuffix(fqdn(identity), "._device."+fqdn(zone))
	if !ok || !validDevice(device) {
		return "", false
	}
	return device, true
}

// validDevice reports whether s is a device name: labels of a-z, 0-9 and '-', not
// starting or ending with '-', 1 to 63 characters each. So a name can never hold an
// MQTT separator or wildcard ('/', '+', '#'), '$', or NUL.
func validDevice(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// The part of a topic below devices/<device>/ is at most maxTopicRest bytes and
// maxTopicLevels levels: mochi's topic index takes time quadratic in a topic's levels
// (a 64 KiB filter of 32,000 levels cost it seconds of CPU per SUBSCRIBE and per
// matching PUBLISH), and no device needs such topics.
const (
	maxTopicRest   = 256
	maxTopicLevels = 16
)

// allowed is the broker's one ACL: whether device may publish to (write) or
// subscribe to and receive from topic, a topic name or a topic filter. Only topics
// under devices/<device>/ are, within maxTopicRest and maxTopicLevels; a published
// topic has no wildcards, and in a filter '+' and '#' stand only for whole levels
// below the prefix, '#' last. So $SYS, $share/<group>/..., '#', devices/+/... and every
// other device's topics are refused, whatever path a topic comes by (publish,
// subscribe, delivery, Will).
func allowed(device, topic string, write bool) bool {
	if !validDevice(device) || !utf8.ValidString(topic) || strings.ContainsRune(topic, 0) {
		return false
	}
	rest, ok := strings.CutPrefix(topic, "devices/"+device+"/")
	if !ok || len(rest) > maxTopicRest || strings.Count(rest, "/") >= maxTopicLevels {
		return false
	}
	if write {
		return !strings.ContainsAny(rest, "+#")
	}
	levels := strings.Split(rest, "/")
	for i, level := range levels {
		if strings.ContainsAny(level, "+#") && level != "+" && !(level == "#" && i == len(levels)-1) {
			return false
		}
	}
	return true
}

// sanDevice is the device a certificate names in its _device SAN in zone, or "".
func sanDevice(cert *x509.Certificate, zone string) string {
	for _, n := range cert.DNSNames {
		if d, ok := DeviceOf(n, zone); ok {
			return d
		}
	}
	return ""
}

// recheck verifies every connected device again every Recheck; the verifier's cache
// holds each answer for at most its TTL, so a revocation is seen within the TTL, and a
// device whose key is no longer vouched for is disconnected.
func (b *Broker) recheck(ctx context.Context) {
	t := time.NewTicker(b.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.recheckRound(ctx)
	}
}

// recheckRound verifies every connected device once.
func (b *Broker) recheckRound(ctx context.Context) {
	b.mu.Lock()
	sessions := make([]*session, 0, len(b.sessions))
	for _, s := range b.sessions {
		if !s.cut.Load() {
			sessions = append(sessions, s)
		}
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

// recheckParallel bounds the DNS lookups one recheck round has in flight.
const recheckParallel = 64

// errUnverified cuts off a session DNS could not vouch for in time.
var errUnverified = errors.New("DNS could not be reached to verify the device again")

// recheckSession disconnects s when DNS no longer vouches for its key, or when DNS
// has been unreachable past the expiry of the answer s was last verified against
// plus the grace period (fail closed: a revocation may have happened meanwhile).
func (b *Broker) recheckSession(ctx context.Context, s *session) {
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := b.Verifier.Verify(vctx, s.chain)
	cancel()
	if err == nil {
		s.validUntil.Store(res.Expires.UnixNano())
		return
	}
	counter := &b.stats.revoked
	if errors.Is(err, verify.ErrLookupFailed) {
		expired := time.Unix(0, s.validUntil.Load())
		if b.cfg.Now().Before(expired.Add(b.cfg.RecheckGrace)) {
			return // DNS away for less than the grace: no verdict yet
		}
		err = fmt.Errorf("%w since its answer expired at %s (grace %s): %w", errUnverified, expired.Format(time.RFC3339), b.cfg.RecheckGrace, err)
		counter = &b.stats.unverified
	}
	n := counter.Add(1)
	b.log.Info("disconnecting a device DNS no longer vouches for; its session and retained messages deleted", "device", s.device, "err", err, "count", n)
	// Its Will is not published: the broker, not the device, ends this session, and a
	// device that may be revoked speaks no more.
	s.cut.Store(true)
	atomic.StoreUint32(&s.client.Properties.Will.Flag, 0)
	b.Server.DisconnectClient(s.client, packets.ErrNotAuthorized)
	s.client.Stop(err)
	b.cutOff(s)
	if b.OnDisconnect != nil {
		b.OnDisconnect(s.device, err)
	}
}

// cutOff deletes what a session cut off leaves: the session kept for reconnection
// (subscriptions, messages in flight) and, unless another key holds the name by now,
// the device's retained messages and its key, so that nothing of it passes to whoever
// holds the name next. OnDisconnect clears the session again once mochi is done with
// the client (a packet in process meanwhile may have subscribed).
func (b *Broker) cutOff(s *session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clearSession(s.client)
	if owner, ok := b.owners[s.device]; ok && owner == s.key {
		b.deleteRetained(s.device)
		delete(b.owners, s.device)
	}
}

// clearSession empties the session mochi keeps for cl: no Will, no subscriptions, no
// messages in flight. (The empty session expires as any other; a client that resumes
// it is told none is present.)
func (b *Broker) clearSession(cl *mqtt.Client) {
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
	b.Server.UnsubscribeClient(cl)
	cl.ClearInflights()
}

// deleteRetained deletes the device's retained messages and returns how many there were.
func (b *Broker) deleteRetained(device string) int {
	msgs := b.Server.Topics.Messages("devices/" + device + "/#")
	for _, m := range msgs {
		b.Server.Topics.RetainMessage(packets.Packet{TopicName: m.TopicName}) // an empty payload deletes
	}
	atomic.StoreInt64(&b.Server.Info.Retained, int64(b.Server.Topics.Retained.Len()))
	return len(msgs)
}

// retainedUsage returns how many retained messages device holds, and their payload
// bytes, leaving out the one on topic except (which a new one there replaces).
func (b *Broker) retainedUsage(device, except string) (count, size int) {
	for _, m := range b.Server.Topics.Messages("devices/" + device + "/#") {
		if m.TopicName != except {
			count, size = count+1, size+len(m.Payload)
		}
	}
	return count, size
}

// fits reports whether count retained messages of size bytes are within the quota.
func (b *Broker) fits(count, size int) bool {
	return count <= b.cfg.MaxRetained && size <= b.cfg.MaxRetainedBytes
}

// pruneEvery is how often pruneOwners runs.
const pruneEvery = time.Minute

func (b *Broker) prune(ctx context.Context) {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.pruneOwners()
	}
}

// pruneOwners forgets the key of each device that has nothing left at the broker: not
// connected, no session kept, no retained message. (Its next connection, with any key,
// starts clean, which finds nothing to delete.)
func (b *Broker) pruneOwners() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for device := range b.owners {
		if _, ok := b.sessions[device]; ok {
			continue
		}
		if _, ok := b.Server.Clients.Get(device); ok {
			continue
		}
		if len(b.Server.Topics.Messages("devices/"+device+"/#")) > 0 {
			continue
		}
		delete(b.owners, device)
	}
}

func (b *Broker) forget(id string, cl *mqtt.Client) {
	b.mu.Lock()
	if s, ok := b.sessions[id]; ok && s.client == cl {
		delete(b.sessions, id)
	}
	b.mu.Unlock()
}

func (b *Broker) session(cl *mqtt.Client) *session {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.sessions[cl.ID]; ok && s.client == cl {
		return s
	}
	return nil
}

// Connected lists the devices connected now.
func (b *Broker) Connected() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.sessions))
	for _, s := range b.sessions {
		if !s.cut.Load() {
			out = append(out, s.device)
		}
	}
	return out
}

// hook is the broker's authentication, authorisation and quotas.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "deviceid-dane" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablished, mqtt.OnACLCheck, mqtt.OnDisconnect,
		mqtt.OnPublish, mqtt.OnSubscribe, mqtt.OnPacketEncode, mqtt.OnPacketRead, mqtt.OnWill, mqtt.OnRetainMessage:
		return true
	}
	return false
}

// refuseConnect answers a CONNECT with code (its MQTT 3.1.1 form v3 for older
// clients) and ends the connection.
func (h *hook) refuseConnect(cl *mqtt.Client, code, v3 packets.Code) error {
	if cl.Properties.ProtocolVersion < 5 {
		code = v3
	}
	h.b.Server.SendConnack(cl, code, false, nil)
	return code
}

// OnConnect refuses a Will the device could not publish itself: its topic must pass
// the ACL, and a retained one must fit the device's retained quota with the retained
// messages the device holds (those of its key; another key's are deleted as it
// connects). The client id is the device's name, which OnConnectAuthenticate checks
// next. A Will's delay is bounded by its session's expiry.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	h.boundWillDelay(cl)
	if !pk.Connect.WillFlag {
		return nil
	}
	refused := ""
	code := packets.ErrNotAuthorized
	switch {
	case !allowed(cl.ID, pk.Connect.WillTopic, true):
		refused = "its Will's topic is not the device's"
	case pk.Connect.WillRetain && len(pk.Connect.WillPayload) > 0 && !h.willFits(cl, pk.Connect.WillTopic, len(pk.Connect.WillPayload)):
		refused, code = "its retained Will does not fit the device's retained quota", packets.ErrQuotaExceeded
	default:
		return nil
	}
	n := h.b.stats.willsRefused.Add(1)
	h.b.log.Info("refused: "+refused, "client", cl.ID, "will_topic", pk.Connect.WillTopic, "count", n)
	return h.refuseConnect(cl, code, packets.Err3NotAuthorized)
}

// willFits reports whether a retained Will of size bytes on topic fits cl's device's
// quota with the retained messages its key holds there now.
func (h *hook) willFits(cl *mqtt.Client, topic string, size int) bool {
	count, held := 0, 0
	key, ok := keyOf(cl)
	h.b.mu.Lock()
	if owner, found := h.b.owners[cl.ID]; ok && found && owner == key {
		count, held = h.b.retainedUsage(cl.ID, topic)
	}
	h.b.mu.Unlock()
	return h.b.fits(count+1, held+size)
}

// boundWillDelay ends an MQTT 5 Will's delay with the session (MQTT 5 3.1.2.11.2): at
// most the session expiry the client asks for (0, sent at once, when it asks for none)
// and MaxSessionExpiry. mochi bounds it by the former only when the CONNECT gives one,
// and before capping that, so a Will could wait 2^32 s, held in memory.
func (h *hook) boundWillDelay(cl *mqtt.Client) {
	limit := uint32(0)
	if cl.Properties.Props.SessionExpiryIntervalFlag {
		limit = min(cl.Properties.Props.SessionExpiryInterval, h.b.Server.Options.Capabilities.MaximumSessionExpiryInterval)
	}
	if cl.Properties.Will.WillDelayInterval > limit {
		cl.Properties.Will.WillDelayInterval = limit
	}
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
	validUntil := time.Unix(0, 1<<62) // the CA pool's verdict has no expiry to re-check
	if h.b.Verifier == nil {
		device = sanDevice(chain[0], h.b.zone) // the CA pool checked the chain in the handshake
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := h.b.Verifier.Verify(ctx, chain) // cached since the handshake
		if err != nil {
			h.b.log.Info("refused", "client", pk.Connect.ClientIdentifier, "err", err)
			return false
		}
		device, _ = DeviceOf(res.Name, h.b.zone)
		validUntil = res.Expires
	}
	if device == "" || pk.Connect.ClientIdentifier != device {
		h.b.log.Info("refused: the client id is not the device's name", "client", pk.Connect.ClientIdentifier, "device", device)
		return false
	}
	s := &session{client: cl, chain: chain, device: device, key: sha256.Sum256(chain[0].RawSubjectPublicKeyInfo)}
	s.validUntil.Store(validUntil.UnixNano())
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if owner, ok := h.b.owners[device]; !ok || owner != s.key {
		h.b.cleanStart(s, ok)
	}
	h.b.owners[device] = s.key
	h.b.sessions[cl.ID] = s
	return true
}

// cleanStart makes s's device start clean: the name's data, if any, belongs to another
// key (had: a key is on record) or to none (a cut-off device's leftover). The session
// mochi would resume is emptied now, before mochi takes it over (mochi cannot be told
// to start clean, so CONNACK is corrected in OnPacketEncode), and the retained messages
// are deleted, here and again in OnSessionEstablished. b.mu is held.
func (b *Broker) cleanStart(s *session, had bool) {
	s.newKey = true
	if old, ok := b.Server.Clients.Get(s.device); ok {
		b.clearSession(old) // its Will too: the connection taken over may still be up
		s.fresh = true
	}
	if n := b.deleteRetained(s.device); had || s.fresh || n > 0 {
		count := b.stats.cleanStarts.Add(1)
		b.log.Info("starting clean: the device's name held the session or retained messages of another key, or of a session cut off; deleted",
			"device", s.device, "another_key", had, "session", s.fresh, "retained", n, "count", count)
	}
}

// OnSessionEstablished deletes again, for a device that started clean, the retained
// messages of the name's old key: one may have been stored since cleanStart (a publish
// racing in on the connection taken over, a delayed Will sent as mochi took it over).
// The device has sent nothing yet; mochi has forgotten the delayed Will.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s := h.b.session(cl)
	if s == nil || !s.newKey {
		return
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if h.b.owners[s.device] == s.key {
		h.b.deleteRetained(s.device)
	}
}

// OnACLCheck applies allowed to publishes, subscriptions and deliveries.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return allowed(cl.ID, topic, write)
}

// OnPublish checks a publish again on its final topic (mochi's ACL check comes before
// a topic alias is resolved), and keeps a device's retained messages within its quota:
// MaxRetained messages of MaxRetainedBytes in all. Replacing or deleting a retained
// message is always allowed.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !allowed(cl.ID, pk.TopicName, true) {
		n := h.b.stats.publishesRefused.Add(1)
		h.b.log.Info("refused a publish", "client", cl.ID, "topic", pk.TopicName, "count", n)
		return pk, h.refusePublish(cl, pk, packets.ErrNotAuthorized)
	}
	if !pk.FixedHeader.Retain || len(pk.Payload) == 0 {
		return pk, nil
	}
	count, size := h.b.retainedUsage(cl.ID, pk.TopicName)
	if h.b.fits(count+1, size+len(pk.Payload)) {
		return pk, nil
	}
	n := h.b.stats.retainedRefused.Add(1)
	h.b.log.Info("refused a retained message over the device's quota", "client", cl.ID, "topic", pk.TopicName,
		"retained", count, "bytes", size, "count", n)
	return pk, h.refusePublish(cl, pk, packets.ErrQuotaExceeded)
}

// OnWill keeps a retained Will within the device's retained quota when it is sent
// (mochi stores it without OnPublish): over the quota then, it is published but not
// retained. OnConnect counted it against what the device held at CONNECT; since then
// the device may have retained more, or another of its connections' Wills been sent.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !will.Retain || len(will.Payload) == 0 {
		return will, nil
	}
	count, size := h.b.retainedUsage(cl.ID, will.TopicName)
	if h.b.fits(count+1, size+len(will.Payload)) {
		return will, nil
	}
	will.Retain = false
	n := h.b.stats.retainedRefused.Add(1)
	h.b.log.Info("a retained Will over the device's quota is published, not retained", "client", cl.ID, "topic", will.TopicName,
		"retained", count, "bytes", size, "count", n)
	return will, nil
}

// OnRetainMessage checks a retained message again once mochi has stored it, whatever
// path it came by (a publish, a Will, a delayed Will): one over the device's quota, or
// stored by a connection whose key no longer holds the name, is deleted. The checks
// before storing (OnPublish, OnWill) are what a client is told; this one holds when a
// device's connections race each other (a Will sent on take-over as the new connection
// publishes; the old key's connection publishing as a new key starts clean).
func (h *hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, _ int64) {
	if cl == nil || cl.Net.Inline || len(pk.Payload) == 0 {
		return
	}
	key, ok := keyOf(cl)
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	owner, held := h.b.owners[cl.ID]
	count, size := h.b.retainedUsage(cl.ID, "")
	why := ""
	switch {
	case !ok || !held || owner != key:
		why = "stored by a connection whose key no longer holds the device's name"
	case !h.b.fits(count, size):
		why = "over the device's quota"
		h.b.stats.retainedRefused.Add(1)
	default:
		return
	}
	if cur, ok := h.b.Server.Topics.Retained.Get(pk.TopicName); ok && cur.Origin == pk.Origin && bytes.Equal(cur.Payload, pk.Payload) {
		h.b.Server.Topics.RetainMessage(packets.Packet{TopicName: pk.TopicName})
		atomic.StoreInt64(&h.b.Server.Info.Retained, int64(h.b.Server.Topics.Retained.Len()))
		h.b.log.Info("deleted a retained message "+why, "client", cl.ID, "topic", pk.TopicName, "retained", count, "bytes", size)
	}
}

// OnPacketRead caps the session expiry an MQTT 5 DISCONNECT may set at
// MaxSessionExpiry: mochi caps the CONNECT's (in CONNACK) but takes the DISCONNECT's
// as it is, up to 2^32-1 s.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if limit := h.b.Server.Options.Capabilities.MaximumSessionExpiryInterval; pk.FixedHeader.Type == packets.Disconnect &&
		pk.Properties.SessionExpiryIntervalFlag && pk.Properties.SessionExpiryInterval > limit {
		h.b.log.Debug("capped the session expiry of a DISCONNECT", "client", cl.ID, "asked", pk.Properties.SessionExpiryInterval, "cap", limit)
		pk.Properties.SessionExpiryInterval = limit
	}
	return pk, nil
}

// refusePublish answers a publish the broker will not take, with code where the
// protocol can say it: MQTT 5 acknowledges QoS 1 and 2 with the reason code; MQTT 3.1.1
// has no negative acknowledgement, so the client is disconnected rather than left
// resending; a QoS 0 message is dropped. The message goes no further.
func (h *hook) refusePublish(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	switch {
	case pk.FixedHeader.Qos == 0:
	case cl.Properties.ProtocolVersion == 5:
		ack := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			ack = packets.Pubrec // a failed PUBREC ends the QoS 2 flow
		}
		cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: ack}, PacketID: pk.PacketID,
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: code.Reason}})
	default:
		h.b.Server.DisconnectClient(cl, code)
	}
	return packets.ErrRejectPacket
}

// quotaFilter replaces a filter over the subscription quota: the ACL refuses it, and
// OnPacketEncode turns its SUBACK code into quota exceeded.
const quotaFilter = "$deviceid/over-quota"

// OnSubscribe keeps a device within MaxSubscriptions topic filters: the filters of a
// SUBSCRIBE beyond it are refused (SUBACK 0x97 quota exceeded, 0x80 in MQTT 3.1.1).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	have := cl.State.Subscriptions.GetAll()
	var over []int
	filters := make(packets.Subscriptions, len(pk.Filters))
	for i, sub := range pk.Filters {
		filters[i] = sub
		if _, ok := have[sub.Filter]; ok {
			continue
		}
		if len(have) >= h.b.cfg.MaxSubscriptions {
			filters[i].Filter = quotaFilter
			over = append(over, i)
			continue
		}
		have[sub.Filter] = sub
	}
	if len(over) == 0 {
		return pk
	}
	n := h.b.stats.subscriptionsRefused.Add(int64(len(over)))
	h.b.log.Info("refused subscriptions over the device's quota", "client", cl.ID, "refused", len(over), "count", n)
	if s := h.b.session(cl); s != nil {
		s.mu.Lock()
		if s.overQuota == nil {
			s.overQuota = map[uint16][]int{}
		}
		s.overQuota[pk.PacketID] = over
		s.mu.Unlock()
	}
	pk.Filters = filters
	return pk
}

// OnPacketEncode tells MQTT 5 clients the broker's limits in CONNACK (maximum packet
// size, no shared subscriptions; no topic aliases, by leaving their maximum out), says
// no session is present to a device that started clean (cleanStart), and gives the
// filters refused for the subscription quota their reason code.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		if pk.ReasonCode == packets.CodeSuccess.Code && cl.Properties.ProtocolVersion == 5 {
			pk.Properties.MaximumPacketSize = h.b.cfg.MaxPacketSize
			pk.Properties.SharedSubAvailable, pk.Properties.SharedSubAvailableFlag = 0, true
		}
		if s := h.b.session(cl); s != nil && s.fresh {
			pk.SessionPresent = false
		}
	case packets.Suback:
		s := h.b.session(cl)
		if s == nil {
			break
		}
		s.mu.Lock()
		over := s.overQuota[pk.PacketID]
		delete(s.overQuota, pk.PacketID)
		s.mu.Unlock()
		if cl.Properties.ProtocolVersion == 5 {
			codes := append([]byte(nil), pk.ReasonCodes...)
			for _, i := range over {
				if i < len(codes) {
					codes[i] = packets.ErrQuotaExceeded.Code
				}
			}
			pk.ReasonCodes = codes
		}
	}
	return pk
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		n := h.b.stats.tooLarge.Add(1)
		h.b.log.Info("disconnected a client that sent a packet over the maximum size", "client", cl.ID,
			"max", h.b.cfg.MaxPacketSize, "count", n)
	}
	if s := h.b.session(cl); s != nil && s.cut.Load() {
		h.b.mu.Lock()
		h.b.clearSession(cl)
		h.b.mu.Unlock()
	}
	h.b.forget(cl.ID, cl)
}
