package mqttbroker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/verify"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/miekg/dns"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
)

// resolver is a validating resolver on loopback for these tests: it answers TLSA
// queries for the devices in tlsa with AD set, TTL 10, and SERVFAIL while down.
type resolver struct {
	addr string
	mu   sync.Mutex
	tlsa map[string]*dns.TLSA
	down bool
}

func startResolver(t *testing.T) *resolver {
	t.Helper()
	r := &resolver{tlsa: map[string]*dns.TLSA{}}
	r.addr = testenv.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r.mu.Lock()
		defer r.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(q)
		if r.down {
			m.Rcode = dns.RcodeServerFailure
		} else if rr, ok := r.tlsa[q.Question[0].Name]; ok {
			m.AuthenticatedData = true
			m.Answer = []dns.RR{dns.Copy(rr)}
		} else {
			m.AuthenticatedData = true
			m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 10},
				Ns: "ns1.iot.example.", Mbox: "h.iot.example.", Minttl: 10}}
		}
		w.WriteMsg(m)
	}))
	return r
}

// clock is the fake clock of the broker and its verifier.
type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

// testBroker is a broker on loopback whose verifier trusts the resolver, on a fake
// clock, with a re-check that runs only when the test calls recheckRound.
type testBroker struct {
	*Broker
	res   *resolver
	ca    *testenv.CA
	clock *clock
	lost  chan string
}

func startTestBroker(t *testing.T, c Config) *testBroker {
	t.Helper()
	tb := &testBroker{res: startResolver(t), ca: testenv.NewTestCA(t, "device CA"), clock: &clock{}, lost: make(chan string, 16)}
	tb.clock.t.Store(time.Now().UnixNano())
	key := testenv.DeviceKey(t)
	der, err := tb.ca.IssueServer("mqtt.iot.example", key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	c.Listen, c.Certificate = "127.0.0.1:0", tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	c.Verifier = &verify.Verifier{Zones: []string{"iot.example."}, Resolver: tb.res.addr, Now: tb.clock.now}
	c.Now, c.Recheck = tb.clock.now, time.Hour
	c.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if tb.Broker, err = Start(ctx, c); err != nil {
		t.Fatal(err)
	}
	return tb
}

// device enrolls a device (its TLSA record at the resolver) and returns its certificate.
func (tb *testBroker) device(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key := testenv.DeviceKey(t)
	der, err := tb.ca.Issue(name+"._device.iot.example", key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	tb.res.mu.Lock()
	tb.res.tlsa[name+"._device.iot.example."] = &dns.TLSA{Hdr: dns.RR_Header{Name: name + "._device.iot.example.", Rrtype: dns.TypeTLSA,
		Class: dns.ClassINET, Ttl: 10}, Usage: 3, Selector: 1, MatchingType: 1, Certificate: hex.EncodeToString(sum[:])}
	tb.res.mu.Unlock()
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (tb *testBroker) revoke(name string) {
	tb.res.mu.Lock()
	tb.res.tlsa[name+"._device.iot.example."].Usage = 255
	tb.res.mu.Unlock()
}

// connect is a paho client as device id with cert; opts may change its options.
func (tb *testBroker) connect(t *testing.T, id string, cert tls.Certificate, opts ...func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	c, _, err := tb.connectSession(t, id, cert, opts...)
	return c, err
}

// connectSession is connect, and also returns the CONNACK's session present flag.
func (tb *testBroker) connectSession(t *testing.T, id string, cert tls.Certificate, opts ...func(*paho.ClientOptions)) (paho.Client, bool, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tls://" + tb.Addr()).SetClientID(id).SetAutoReconnect(false).SetConnectRetry(false).
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}).
		SetConnectionLostHandler(func(paho.Client, error) { tb.lost <- id })
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, false, fmt.Errorf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, tok.(*paho.ConnectToken).SessionPresent(), nil
}

// gone waits until mochi has forgotten the client id's clean session, which it does
// after it would have published the Will.
func (tb *testBroker) gone(t *testing.T, id string) {
	t.Helper()
	testenv.Eventually(t, id+" gone", func() error {
		if _, ok := tb.Server.Clients.Get(id); ok {
			return fmt.Errorf("still there")
		}
		return nil
	})
}

func (tb *testBroker) connected(device string) bool {
	for _, d := range tb.Connected() {
		if d == device {
			return true
		}
	}
	return false
}

// TestFailClosed: while DNS cannot be reached, a session lives until the answer it
// was verified against has expired plus the grace, then it is cut off, its Will not
// published; one the resolver answers for stays.
func TestFailClosed(t *testing.T) {
	tb := startTestBroker(t, Config{RecheckGrace: 5 * time.Second})
	cert := tb.device(t, "lamp")
	if _, err := tb.connect(t, "lamp", cert, func(o *paho.ClientOptions) {
		o.SetWill("devices/lamp/status", "gone", 1, true)
	}); err != nil {
		t.Fatal(err)
	}
	tb.res.mu.Lock()
	tb.res.down = true
	tb.res.mu.Unlock()
	tb.clock.advance(10*time.Second + 5*time.Second - time.Millisecond) // the TTL and the grace, nearly
	tb.recheckRound(t.Context())
	if !tb.connected("lamp") {
		t.Fatal("disconnected within the TTL and the grace")
	}
	tb.clock.advance(2 * time.Millisecond)
	tb.recheckRound(t.Context())
	if tb.connected("lamp") {
		t.Fatal("still connected with DNS unreachable past the TTL and the grace")
	}
	tb.gone(t, "lamp")
	if s := tb.Stats(); s.Unverified != 1 {
		t.Errorf("stats: %+v", s)
	}
	if _, ok := tb.Server.Topics.Retained.Get("devices/lamp/status"); ok {
		t.Error("the Will of a device cut off was published")
	}
}

// TestRevokedWillDropped: a device the re-check disconnects for its revocation does not
// get its (retained) Will published.
func TestRevokedWillDropped(t *testing.T) {
	tb := startTestBroker(t, Config{})
	cert := tb.device(t, "lamp")
	if _, err := tb.connect(t, "lamp", cert, func(o *paho.ClientOptions) {
		o.SetWill("devices/lamp/status", "gone", 1, true)
	}); err != nil {
		t.Fatal(err)
	}
	if got := gather(t, tb.Broker)["deviceid_mqtt_sessions"]; got != 1 {
		t.Errorf("deviceid_mqtt_sessions %v with one device connected", got)
	}
	tb.revoke("lamp")
	tb.clock.advance(10 * time.Second)
	tb.recheckRound(t.Context())
	if tb.connected("lamp") {
		t.Fatal("the revoked device is still connected")
	}
	tb.gone(t, "lamp")
	if _, ok := tb.Server.Topics.Retained.Get("devices/lamp/status"); ok {
		t.Error("the revoked device's Will was published")
	}
	if s := tb.Stats(); s.Revoked != 1 {
		t.Errorf("stats: %+v", s)
	}
	if _, err := tb.connect(t, "lamp", cert); err == nil {
		t.Fatal("the revoked device connected again")
	}
	m := gather(t, tb.Broker)
	if m["deviceid_mqtt_sessions_revoked_total"] != 1 || m["deviceid_mqtt_handshakes_refused_total"] < 1 || m["deviceid_mqtt_sessions"] != 0 {
		t.Errorf("metrics after the revocation: %v", m)
	}
}

// gather is b's metrics by name, as a scrape reads them.
func gather(t *testing.T, b *Broker) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(b.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			m[f.GetName()] = metric.GetCounter().GetValue() + metric.GetGauge().GetValue()
		}
	}
	return m
}

// TestWillOfAnotherDevice: a Will on another device's topic refuses the connection
// (MQTT 3.1.1 and 5); one on the device's own topic is accepted.
func TestWillOfAnotherDevice(t *testing.T) {
	tb := startTestBroker(t, Config{})
	cert := tb.device(t, "lamp")
	for _, topic := range []string{"devices/fan/cmd", "devices/+/cmd", "$SYS/x", "devices/lamp"} {
		if _, err := tb.connect(t, "lamp", cert, func(o *paho.ClientOptions) { o.SetWill(topic, "x", 1, true) }); err == nil {
			t.Errorf("a Will on %s was accepted", topic)
		}
	}
	if s := tb.Stats(); s.WillsRefused < 4 { // paho tries MQTT 3.1.1, then 3.1
		t.Errorf("stats: %+v", s)
	}
	if _, err := tb.connect(t, "lamp", cert, func(o *paho.ClientOptions) { o.SetWill("devices/lamp/status", "x", 1, true) }); err != nil {
		t.Errorf("a Will on the device's own topic: %v", err)
	}
}

// TestLimits: a device's retained messages, subscriptions and packets stay within
// their limits; over them it is refused (MQTT 3.1.1: QoS 0 dropped, QoS 1 disconnected).
func TestLimits(t *testing.T) {
	tb := startTestBroker(t, Config{MaxRetained: 5, MaxRetainedBytes: 300, MaxSubscriptions: 3, MaxPacketSize: 1024})
	cert := tb.device(t, "lamp")
	c, err := tb.connect(t, "lamp", cert)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		tok := c.Publish(fmt.Sprintf("devices/lamp/r%d", i), 0, true, "x")
		tok.WaitTimeout(5 * time.Second)
	}
	// The same topic again replaces, within the quota.
	if tok := c.Publish("devices/lamp/r0", 1, true, "y"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Errorf("replacing a retained message: %v", tok.Error())
	}
	testenv.Eventually(t, "the retained messages counted", func() error {
		if n := len(tb.Server.Topics.Messages("devices/lamp/#")); n != 5 {
			return fmt.Errorf("%d retained", n)
		}
		return nil
	})
	for i := range 5 {
		if tok := c.Subscribe(fmt.Sprintf("devices/lamp/s%d", i), 0, nil); tok.WaitTimeout(5 * time.Second) {
			code := tok.(*paho.SubscribeToken).Result()[fmt.Sprintf("devices/lamp/s%d", i)]
			if (code == 0x80) != (i >= 3) {
				t.Errorf("subscription %d: code %#x", i, code)
			}
		}
	}
	// A retained QoS 1 message over the quota disconnects an MQTT 3.1.1 client.
	c.Publish("devices/lamp/r99", 1, true, "x")
	select {
	case <-tb.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a QoS 1 retained message over the quota did not disconnect the MQTT 3.1.1 client")
	}
	// A packet over the maximum size closes the connection.
	c, err = tb.connect(t, "lamp", cert)
	if err != nil {
		t.Fatal(err)
	}
	c.Publish("devices/lamp/big", 0, false, strings.Repeat("x", 2000))
	select {
	case <-tb.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a packet over the maximum size did not close the connection")
	}
	// The client may see its connection closed before mochi is done with it.
	testenv.Eventually(t, "the packet counted too large", func() error {
		if s := tb.Stats(); s.PacketsTooLarge != 1 {
			return fmt.Errorf("stats: %+v", s)
		}
		return nil
	})
	if s := tb.Stats(); s.RetainedRefused < 15 || s.SubscriptionsRefused != 2 {
		t.Errorf("stats: %+v", s)
	}
}

// TestRetainedFloodMemory: one device publishing 5,000 retained messages of 1 KiB on
// distinct topics leaves the broker holding its quota of them (64: the bytes bound
// first), and its heap about as it was. The figure is logged (docs/security.md quotes
// it).
func TestRetainedFloodMemory(t *testing.T) {
	tb := startTestBroker(t, Config{})
	cert := tb.device(t, "lamp")
	c, err := tb.connect(t, "lamp", cert)
	if err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	payload := strings.Repeat("x", 1024)
	const flood = 5000
	for i := range flood {
		c.Publish(fmt.Sprintf("devices/lamp/r%d", i), 0, true, payload)
	}
	// A last QoS 1 message, not retained, is acknowledged after every one before it was handled.
	if tok := c.Publish("devices/lamp/done", 1, false, "x"); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	after := heap()
	n := len(tb.Server.Topics.Messages("devices/lamp/#"))
	t.Logf("after %d retained messages of 1 KiB: %d retained, heap %d KiB → %d KiB", flood, n, before>>10, after>>10)
	if want := DefaultMaxRetainedBytes / len(payload); n != want {
		t.Errorf("%d retained, want the quota's %d", n, want)
	}
	if grown := int64(after) - int64(before); grown > 2<<20 {
		t.Errorf("the heap grew by %d KiB", grown>>10)
	}
}

// TestOneZone: a broker takes exactly one zone, and a device is named within it.
func TestOneZone(t *testing.T) {
	v := &verify.Verifier{Zones: []string{"iot.example.", "other.example."}, Resolver: "127.0.0.1:53"}
	if _, err := Start(t.Context(), Config{Listen: "127.0.0.1:0", Verifier: v}); err == nil || !strings.Contains(err.Error(), "exactly one zone") {
		t.Errorf("two zones: %v", err)
	}
	if _, err := Start(t.Context(), Config{Listen: "127.0.0.1:0", ClientCAs: x509.NewCertPool()}); err == nil {
		t.Error("a CA pool without a zone was accepted")
	}
	v.Zones = v.Zones[:1]
	if _, err := Start(t.Context(), Config{Listen: "127.0.0.1:0", Verifier: v, Zone: "other.example"}); err == nil {
		t.Error("a zone other than the verifier's was accepted")
	}
	for _, tc := range []struct {
		identity, zone, device string
	}{
		{"sensor7._device.iot.example.", "iot.example.", "sensor7"},
		{"Sensor7._device.IOT.example", "iot.example", "sensor7"},
		{"c90a.airquality._device.iot.example.", "iot.example.", "c90a.airquality"},
		{"sensor7._device.other.example.", "iot.example.", ""},
		{"sensor7._device.sub.iot.example.", "iot.example.", ""},
		{"a+b._device.iot.example.", "iot.example.", ""},
		{"._device.iot.example.", "iot.example.", ""},
		{"iot.example.", "iot.example.", ""},
	} {
		if d, _ := DeviceOf(tc.identity, tc.zone); d != tc.device {
			t.Errorf("DeviceOf(%q, %q) = %q, want %q", tc.identity, tc.zone, d, tc.device)
		}
	}
}

// TestAllowed: the ACL's decisions, for every path a topic comes by.
func TestAllowed(t *testing.T) {
	for _, tc := range []struct {
		device, topic string
		write, ok     bool
	}{
		{"b", "devices/b/telemetry", true, true},
		{"b", "devices/b/a/b/c", true, true},
		{"b", "devices/b/#", false, true},
		{"b", "devices/b/+/x", false, true},
		{"b", "devices/b/+", false, true},
		{"b", "devices/b/#", true, false},
		{"b", "devices/b/+", true, false},
		{"b", "devices/b/a#", false, false},
		{"b", "devices/b/#/x", false, false},
		{"b", "devices/b/x+", false, false},
		{"b", "devices/b", true, false},
		{"b", "devices/b", false, false},
		{"b", "devices/a/cmd", true, false},
		{"b", "devices/a/#", false, false},
		{"b", "devices/+/cmd", false, false},
		{"b", "devices/#", false, false},
		{"b", "#", false, false},
		{"b", "+/b/x", false, false},
		{"b", "$SYS/#", false, false},
		{"b", "$share/g/devices/a/#", false, false},
		{"b", "$share/g/devices/b/#", false, false},
		{"b", "devices/bb/x", true, false},
		{"b", "devices/b.c/x", true, false},
		{"b", "devices/b/\x00", true, false},
		{"b", "devices/b/\xff", true, false},
		{"b", "", true, false},
		{"+", "devices/+/x", true, false},
		{"#", "devices/#/x", false, false},
		{"", "devices//x", true, false},
		{"a/b", "devices/a/b/x", true, false},
		{"$SYS", "devices/$SYS/x", true, false},
		{"c90a.airquality", "devices/c90a.airquality/t", true, true},
		{"b", "devices/b/" + strings.Repeat("x/", 15) + "x", true, true},
		{"b", "devices/b/" + strings.Repeat("x/", 16) + "x", true, false},
		{"b", "devices/b/" + strings.Repeat("+/", 16) + "#", false, false},
		{"b", "devices/b/" + strings.Repeat("x", 256), true, true},
		{"b", "devices/b/" + strings.Repeat("x", 257), true, false},
	} {
		if got := allowed(tc.device, tc.topic, tc.write); got != tc.ok {
			t.Errorf("allowed(%q, %q, write=%v) = %v, want %v", tc.device, tc.topic, tc.write, got, tc.ok)
		}
	}
}

// quiet is a paho option: connection losses are not reported on tb.lost.
func quiet(o *paho.ClientOptions) { o.SetConnectionLostHandler(func(paho.Client, error) {}) }

// persistent is a paho option: a session kept for reconnection (clean session off).
func persistent(o *paho.ClientOptions) { o.SetCleanSession(false) }

// drop ends the connection the client id has now from the broker's side, without
// DISCONNECT, as a network failure would: mochi then sends its Will.
func (tb *testBroker) drop(t *testing.T, id string) {
	t.Helper()
	cl, ok := tb.Server.Clients.Get(id)
	if !ok {
		t.Fatalf("%s has no session", id)
	}
	cl.Net.Conn.Close()
}

// retained returns the number and payload bytes of the retained messages under filter.
func (tb *testBroker) retained(filter string) (n, size int) {
	for _, m := range tb.Server.Topics.Messages(filter) {
		n, size = n+1, size+len(m.Payload)
	}
	return n, size
}

// raw5 connects as an MQTT 5 client with cert, sending connect (its type, protocol
// name and version filled in), and returns the connection and the CONNACK.
func (tb *testBroker) raw5(t *testing.T, cert tls.Certificate, connect packets.Packet) (*tls.Conn, packets.Packet) {
	t.Helper()
	conn, err := tls.Dial("tcp", tb.Addr(), &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	connect.FixedHeader.Type, connect.ProtocolVersion, connect.Connect.ProtocolName = packets.Connect, 5, []byte("MQTT")
	writePacket(t, conn, connect)
	ack := readPacket(t, conn)
	if ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, not CONNACK", ack.FixedHeader.Type)
	}
	return conn, ack
}

// writePacket writes a CONNECT or DISCONNECT packet of MQTT 5.
func writePacket(t *testing.T, conn net.Conn, pk packets.Packet) {
	t.Helper()
	var buf bytes.Buffer
	pk.ProtocolVersion = 5
	switch pk.FixedHeader.Type {
	case packets.Connect:
		pk.ConnectEncode(&buf)
	case packets.Disconnect:
		pk.DisconnectEncode(&buf)
	default:
		t.Fatalf("writePacket: type %d", pk.FixedHeader.Type)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// readPacket reads one MQTT 5 packet; a CONNACK is decoded.
func readPacket(t *testing.T, conn net.Conn) packets.Packet {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{ProtocolVersion: 5}
	if err := pk.FixedHeader.Decode(b[0]); err != nil {
		t.Fatal(err)
	}
	n, shift := 0, 0
	for {
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			t.Fatal(err)
		}
		n |= int(b[0]&0x7f) << shift
		if b[0]&0x80 == 0 {
			break
		}
		shift += 7
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatal(err)
	}
	pk.FixedHeader.Remaining = n
	if pk.FixedHeader.Type == packets.Connack {
		if err := pk.ConnackDecode(body); err != nil {
			t.Fatal(err)
		}
	}
	return pk
}

// TestRetainedWillQuota: a retained Will counts against the device's retained quota,
// at CONNECT (against what the device retains already) and again when it is sent
// (mochi stores a Will without OnPublish). The review's attack, scaled down: 20
// connections, each with a retained Will on a new topic, dropped without DISCONNECT;
// before the fix the broker held all 20. Then a Will that fitted at CONNECT but not
// when it is sent, the device having filled its quota meanwhile: it is published but
// not retained.
func TestRetainedWillQuota(t *testing.T) {
	tb := startTestBroker(t, Config{MaxRetained: 5, MaxRetainedBytes: 1000})
	lamp := tb.device(t, "lamp")
	refused := 0
	for i := range 20 {
		if _, err := tb.connect(t, "lamp", lamp, quiet, func(o *paho.ClientOptions) {
			o.SetWill(fmt.Sprintf("devices/lamp/w%d", i), strings.Repeat("x", 100), 1, true)
		}); err != nil {
			refused++
			continue
		}
		tb.drop(t, "lamp")
		tb.gone(t, "lamp")
	}
	if n, size := tb.retained("devices/lamp/#"); n != 5 || size != 500 {
		t.Errorf("after 20 connections with a retained Will each: %d retained, %d bytes; want the quota's 5", n, size)
	}
	if refused != 15 {
		t.Errorf("%d connections refused for their retained Will, want 15", refused)
	}

	fan := tb.device(t, "fan")
	c, err := tb.connect(t, "fan", fan, quiet, func(o *paho.ClientOptions) {
		o.SetWill("devices/fan/status", strings.Repeat("w", 300), 1, true)
	})
	if err != nil {
		t.Fatal(err) // nothing retained yet: the Will fits
	}
	for i := range 3 {
		if tok := c.Publish(fmt.Sprintf("devices/fan/r%d", i), 1, true, strings.Repeat("r", 300)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	before := tb.Stats().RetainedRefused
	tb.drop(t, "fan")
	tb.gone(t, "fan")
	if n, size := tb.retained("devices/fan/#"); n != 3 || size != 900 {
		t.Errorf("a Will over the quota when sent: %d retained, %d bytes; want 3, 900", n, size)
	}
	if got := tb.Stats().RetainedRefused - before; got != 1 {
		t.Errorf("%d retained messages refused, want the Will's 1", got)
	}
}

// TestCutOffDeletesSession: a device the re-check cuts off (revoked; unverifiable past
// the grace) loses at once its session, kept for reconnection otherwise, and its
// retained messages, so that nothing of it passes to whoever holds the name next.
func TestCutOffDeletesSession(t *testing.T) {
	for _, why := range []string{"revoked", "unverifiable"} {
		t.Run(why, func(t *testing.T) {
			tb := startTestBroker(t, Config{RecheckGrace: time.Second})
			lamp := tb.device(t, "lamp")
			c, err := tb.connect(t, "lamp", lamp, quiet, persistent)
			if err != nil {
				t.Fatal(err)
			}
			if tok := c.Subscribe("devices/lamp/cmd", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			if tok := c.Publish("devices/lamp/state", 1, true, "lamp's"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			tb.res.mu.Lock()
			if why == "revoked" {
				tb.res.tlsa["lamp._device.iot.example."].Usage = 255
			} else {
				tb.res.down = true
			}
			tb.res.mu.Unlock()
			tb.clock.advance(10*time.Second + time.Second + time.Millisecond)
			tb.recheckRound(t.Context())
			if tb.connected("lamp") {
				t.Fatal("not cut off")
			}
			testenv.Eventually(t, "lamp's session and retained messages deleted", func() error {
				if n, _ := tb.retained("devices/lamp/#"); n != 0 {
					return fmt.Errorf("%d retained", n)
				}
				if n := len(tb.Server.Topics.Subscribers("devices/lamp/cmd").Subscriptions); n != 0 {
					return fmt.Errorf("%d subscriptions in the topic index", n)
				}
				if cl, ok := tb.Server.Clients.Get("lamp"); ok && (cl.State.Subscriptions.Len() != 0 || cl.State.Inflight.Len() != 0) {
					return fmt.Errorf("the session holds %d subscriptions, %d in flight", cl.State.Subscriptions.Len(), cl.State.Inflight.Len())
				}
				return nil
			})
			tb.res.mu.Lock()
			tb.res.down = false
			tb.res.mu.Unlock()
			// Whoever holds the name next (a new key, once the old answer has expired from
			// the verifier's cache) finds no session.
			next := tb.device(t, "lamp")
			tb.clock.advance(10 * time.Second)
			if _, present, err := tb.connectSession(t, "lamp", next, quiet, persistent); err != nil || present {
				t.Errorf("the name's next key: session present %v, %v", present, err)
			}
		})
	}
}

// TestNewKeyCleanStart: a session and the retained messages belong to the key that
// made them. The same key resumes its session (the control); the name's next key
// (revoked and enrolled again, or deleted and registered again by another tenant)
// starts clean, even asking to resume: no session, no subscriptions, no retained
// messages, and the Will of the old key's connection, which it takes over, is not
// published.
func TestNewKeyCleanStart(t *testing.T) {
	tb := startTestBroker(t, Config{})
	old := tb.device(t, "lamp")
	c, err := tb.connect(t, "lamp", old, quiet, persistent)
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Subscribe("devices/lamp/cmd", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("devices/lamp/state", 1, true, "the old holder's"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(100)
	testenv.Eventually(t, "lamp disconnected", func() error {
		if tb.connected("lamp") {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	if _, present, err := tb.connectSession(t, "lamp", old, quiet, persistent, func(o *paho.ClientOptions) {
		o.SetWill("devices/lamp/status", "the old holder's Will", 1, true)
	}); err != nil || !present {
		t.Fatalf("the same key: session present %v, %v", present, err)
	}

	// The name's next key, once the old answer has expired from the verifier's cache;
	// the old key's connection is still up (the re-check has not run).
	next := tb.device(t, "lamp")
	tb.clock.advance(10 * time.Second)
	c, present, err := tb.connectSession(t, "lamp", next, quiet, persistent)
	if err != nil {
		t.Fatal(err)
	}
	if present {
		t.Error("the name's next key resumed the old key's session")
	}
	if n := len(tb.Server.Topics.Subscribers("devices/lamp/cmd").Subscriptions); n != 0 {
		t.Errorf("the next key inherited %d subscriptions", n)
	}
	var mu sync.Mutex
	var got []string
	if tok := c.Subscribe("devices/lamp/#", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got = append(got, string(m.Payload()))
		mu.Unlock()
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("devices/lamp/mark", 1, false, "mark"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	testenv.Eventually(t, "the mark received", func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(got, "mark") {
			return fmt.Errorf("got %q", got)
		}
		return nil
	})
	mu.Lock()
	if len(got) != 1 {
		t.Errorf("the name's next key received %q", got)
	}
	mu.Unlock()
	if n, _ := tb.retained("devices/lamp/#"); n != 0 {
		t.Errorf("%d retained messages of the old key", n)
	}
	if s := tb.Stats(); s.CleanStarts != 1 {
		t.Errorf("stats: %+v", s)
	}
}

// TestSessionExpiryCapped: an MQTT 5 session outlives its connection at most
// MaxSessionExpiry, whatever its CONNECT or its DISCONNECT asks for.
func TestSessionExpiryCapped(t *testing.T) {
	tb := startTestBroker(t, Config{})
	lamp := tb.device(t, "lamp")
	max := uint32(DefaultMaxSessionExpiry / time.Second)
	for _, tc := range []struct{ connect, disconnect uint32 }{{60, 0xFFFFFFFF}, {0xFFFFFFFF, 0xFFFFFFFF}, {60, max + 1}, {60, 120}} {
		conn, ack := tb.raw5(t, lamp, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "lamp", Clean: true, Keepalive: 30},
			Properties: packets.Properties{SessionExpiryInterval: tc.connect, SessionExpiryIntervalFlag: true}})
		if ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
		cl, ok := tb.Server.Clients.Get("lamp")
		if !ok {
			t.Fatal("no session")
		}
		writePacket(t, conn, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			Properties: packets.Properties{SessionExpiryInterval: tc.disconnect, SessionExpiryIntervalFlag: true}})
		testenv.Eventually(t, "disconnected", func() error {
			if !cl.Closed() {
				return fmt.Errorf("still open")
			}
			return nil
		})
		want := min(tc.disconnect, max)
		if got := cl.Properties.Props.SessionExpiryInterval; got != want {
			t.Errorf("CONNECT %d s, DISCONNECT %d s: the session expires %d s after, want %d", tc.connect, tc.disconnect, got, want)
		}
	}
}

// TestWillDelayBounded: a Will's delay ends with its session (MQTT 5, 3.1.2.11.2),
// and so within MaxSessionExpiry: a session that ends with its connection sends its
// Will at once, whatever delay it asked for.
func TestWillDelayBounded(t *testing.T) {
	tb := startTestBroker(t, Config{})
	lamp := tb.device(t, "lamp")
	will := packets.ConnectParams{ClientIdentifier: "lamp", Clean: true, Keepalive: 30, WillFlag: true, WillRetain: true, WillQos: 1,
		WillTopic: "devices/lamp/status", WillPayload: []byte("gone"), WillProperties: packets.Properties{WillDelayInterval: 0xFFFFFFFF}}
	conn, _ := tb.raw5(t, lamp, packets.Packet{Connect: will})
	conn.Close()
	testenv.Eventually(t, "the Will sent", func() error {
		if _, ok := tb.Server.Topics.Retained.Get("devices/lamp/status"); !ok {
			return fmt.Errorf("not retained")
		}
		return nil
	})
	// A session kept longer than the cap asks for: the delay is the cap at most.
	_, _ = tb.raw5(t, lamp, packets.Packet{Connect: will, Properties: packets.Properties{SessionExpiryInterval: 0xFFFFFFFF, SessionExpiryIntervalFlag: true}})
	cl, _ := tb.Server.Clients.Get("lamp")
	if got, max := cl.Properties.Will.WillDelayInterval, uint32(DefaultMaxSessionExpiry/time.Second); got > max {
		t.Errorf("the Will's delay is %d s, beyond the session's cap %d s", got, max)
	}
}

// TestRetainedCheckedOnceStored: a retained message is checked again once mochi has
// stored it (OnRetainMessage), whatever path it came by: one stored by a connection
// whose key no longer holds the name, or over the quota (two of a device's connections
// racing past it together), is deleted; one within the quota, of the name's key, stays.
func TestRetainedCheckedOnceStored(t *testing.T) {
	tb := startTestBroker(t, Config{MaxRetained: 2})
	h := &hook{b: tb.Broker}
	retain := func(cl *mqtt.Client, topic string) bool {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: topic, Payload: []byte("x"), Origin: cl.ID}
		tb.Server.Topics.RetainMessage(pk)
		h.OnRetainMessage(cl, pk, 1)
		_, ok := tb.Server.Topics.Retained.Get(topic)
		return ok
	}
	if _, err := tb.connect(t, "lamp", tb.device(t, "lamp"), quiet); err != nil {
		t.Fatal(err)
	}
	old, _ := tb.Server.Clients.Get("lamp")
	if !retain(old, "devices/lamp/a") || !retain(old, "devices/lamp/b") {
		t.Error("a retained message within the quota was deleted")
	}
	if retain(old, "devices/lamp/c") {
		t.Error("a retained message over the quota stayed")
	}
	next := tb.device(t, "lamp")
	tb.clock.advance(10 * time.Second)
	if _, err := tb.connect(t, "lamp", next, quiet); err != nil {
		t.Fatal(err)
	}
	if retain(old, "devices/lamp/d") {
		t.Error("a retained message of the old key's connection, stored after the new key's clean start, stayed")
	}
	cur, _ := tb.Server.Clients.Get("lamp")
	if !retain(cur, "devices/lamp/e") {
		t.Error("the new key's retained message was deleted")
	}
}

// TestOwnersPruned: the broker forgets the key of a device that has nothing left
// there (not connected, no session, no retained message), and keeps the others'.
func TestOwnersPruned(t *testing.T) {
	tb := startTestBroker(t, Config{})
	owner := func(device string) bool {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		_, ok := tb.owners[device]
		return ok
	}
	for _, name := range []string{"gone", "kept", "session", "here"} {
		c, err := tb.connect(t, name, tb.device(t, name), quiet, func(o *paho.ClientOptions) { o.SetCleanSession(name != "session") })
		if err != nil {
			t.Fatal(err)
		}
		if name == "kept" {
			if tok := c.Publish("devices/kept/x", 1, true, "x"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
		if name != "here" {
			c.Disconnect(100)
		}
	}
	tb.gone(t, "gone")
	tb.gone(t, "kept")
	testenv.Eventually(t, "disconnected", func() error {
		if tb.connected("session") {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	tb.pruneOwners()
	for name, want := range map[string]bool{"gone": false, "kept": true, "session": true, "here": true} {
		if owner(name) != want {
			t.Errorf("%s: key on record %v, want %v", name, !want, want)
		}
	}
}
