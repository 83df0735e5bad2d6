package mqttbroker

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/verify"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/miekg/dns"
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
	o := paho.NewClientOptions().AddBroker("tls://" + tb.Addr()).SetClientID(id).SetAutoReconnect(false).SetConnectRetry(false).
		SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}).
		SetConnectionLostHandler(func(paho.Client, error) { tb.lost <- id })
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
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
	s := tb.Stats()
	if s.RetainedRefused < 15 || s.SubscriptionsRefused != 2 || s.PacketsTooLarge != 1 {
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
