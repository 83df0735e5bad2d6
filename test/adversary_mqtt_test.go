package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/mqttbroker"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/registry"
	"github.com/deviceid/deviceid/verify"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/miekg/dns"
)

// advMQTTDevice is an enrolled device's certificate and key files, for mosquitto.
type advMQTTDevice struct {
	name, cert, key string
	tls             tls.Certificate
}

func advMQTTEnroll(t *testing.T, st *mqttStack, name string) advMQTTDevice {
	t.Helper()
	cert, certFile, keyFile := st.device(t, name)
	return advMQTTDevice{name, certFile, keyFile, cert}
}

// advMQTTCommand is a mosquitto client (mosquitto_pub or mosquitto_sub) as device d,
// connecting to the broker at addr with d's certificate (OpenSSL).
func advMQTTCommand(st *mqttStack, addr, tool string, d advMQTTDevice, args ...string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	return exec.Command(tool, append([]string{"-h", host, "-p", port, "--cafile", filepath.Join(st.dir, "broker-ca.pem"),
		"--insecure", "--cert", d.cert, "--key", d.key, "-i", d.name}, args...)...)
}

// advMQTTRun runs a mosquitto client to its end and returns what it printed.
func advMQTTRun(st *mqttStack, addr, tool string, d advMQTTDevice, args ...string) (string, error) {
	out, err := advMQTTCommand(st, addr, tool, d, args...).CombinedOutput()
	return string(out), err
}

// advMQTTStart starts a mosquitto client that stays connected (mosquitto_pub -l reads
// its standard input, left open) and returns it and its output so far.
func advMQTTStart(t *testing.T, st *mqttStack, addr, tool string, d advMQTTDevice, args ...string) (*exec.Cmd, *advMQTTOutput) {
	t.Helper()
	cmd := advMQTTCommand(st, addr, tool, d, args...)
	out := &advMQTTOutput{}
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s (Debian package mosquitto-clients): %v", tool, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-done
	})
	return cmd, out
}

type advMQTTOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *advMQTTOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *advMQTTOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func advMQTTConnected(b *mqttbroker.Broker, device string) bool {
	return slices.Contains(b.Connected(), device)
}

// advMQTTRetained returns the retained messages the broker holds under filter.
func advMQTTRetained(b *mqttbroker.Broker, filter string) int {
	return len(b.Server.Topics.Messages(filter))
}

// TestAdversaryMQTT attacks the DANE broker with mosquitto's clients (OpenSSL), over
// MQTT 3.1.1 and 5, in the scenario's stack (etcd, CoreDNS signing with TTL 2 s, the
// signer's registry): a Will across devices, the Will of a revoked device,
// subscriptions outside the device's topics and over its quota, a flood of retained
// messages, and an oversized packet. TestAdversaryMQTTDNSDown has the broker lose DNS.
func TestAdversaryMQTT(t *testing.T) {
	st := startMQTTStack(t, 2)
	addr := st.broker.Addr()
	alpha := advMQTTEnroll(t, st, "alpha")

	t.Run("will across devices", func(t *testing.T) {
		bravo := advMQTTEnroll(t, st, "bravo")
		_, seen := advMQTTStart(t, st, addr, "mosquitto_sub", alpha, "-t", "devices/alpha/#", "-v")
		testenv.Eventually(t, "alpha subscribed", func() error {
			if len(st.broker.Server.Topics.Subscribers("devices/alpha/cmd").Subscriptions) == 0 {
				return fmt.Errorf("no subscription")
			}
			return nil
		})
		for _, version := range []string{"mqttv311", "mqttv5"} {
			// bravo connects with a Will on alpha's command topic, and dies.
			attack, out := advMQTTStart(t, st, addr, "mosquitto_pub", bravo, "-V", version, "-t", "devices/bravo/x", "-l",
				"--will-topic", "devices/alpha/cmd", "--will-payload", "pwned-"+version, "--will-retain", "--will-qos", "1")
			testenv.Eventually(t, "bravo connected or refused", func() error {
				if advMQTTConnected(st.broker, "bravo") || strings.Contains(strings.ToLower(out.String()), "not authori") {
					return nil
				}
				return fmt.Errorf("neither: %q", out.String())
			})
			attack.Process.Kill()
			if !strings.Contains(strings.ToLower(out.String()), "not authori") {
				t.Errorf("%s: a Will on another device's topic was not refused: %q", version, out.String())
			}
		}
		// The control: a Will on bravo's own topic is published when bravo dies.
		own, _ := advMQTTStart(t, st, addr, "mosquitto_pub", bravo, "-t", "devices/bravo/x", "-l",
			"--will-topic", "devices/bravo/status", "--will-payload", "gone", "--will-retain")
		testenv.Eventually(t, "bravo connected", func() error {
			if !advMQTTConnected(st.broker, "bravo") {
				return fmt.Errorf("not connected")
			}
			return nil
		})
		own.Process.Kill()
		testenv.Eventually(t, "bravo's own Will", func() error {
			if advMQTTRetained(st.broker, "devices/bravo/status") != 1 {
				return fmt.Errorf("not retained")
			}
			return nil
		})
		if strings.Contains(seen.String(), "pwned") {
			t.Errorf("alpha received another device's Will: %q", seen.String())
		}
		if n := advMQTTRetained(st.broker, "devices/alpha/#"); n != 0 {
			t.Errorf("%d retained messages on alpha's topics", n)
		}
		if out, _ := advMQTTRun(st, addr, "mosquitto_sub", alpha, "-t", "devices/alpha/#", "--retained-only", "-W", "2", "-v"); strings.Contains(out, "pwned") {
			t.Errorf("a retained Will on alpha's topic: %q", out)
		}
	})

	t.Run("revoked device's will", func(t *testing.T) {
		delta := advMQTTEnroll(t, st, "delta")
		advMQTTStart(t, st, addr, "mosquitto_pub", delta, "-t", "devices/delta/x", "-l",
			"--will-topic", "devices/delta/status", "--will-payload", "offline", "--will-retain")
		testenv.Eventually(t, "delta connected", func() error {
			if !advMQTTConnected(st.broker, "delta") {
				return fmt.Errorf("not connected")
			}
			return nil
		})
		if _, err := st.reg.Revoke(t.Context(), registry.OperatorActor("test"), "delta", nil, "keyCompromise"); err != nil {
			t.Fatal(err)
		}
		// mochi forgets a clean session after its Will would have been sent.
		testenv.Eventually(t, "the revoked delta cut off", func() error {
			if _, ok := st.broker.Server.Clients.Get("delta"); ok || advMQTTConnected(st.broker, "delta") {
				return fmt.Errorf("still connected")
			}
			return nil
		})
		if n := advMQTTRetained(st.broker, "devices/delta/status"); n != 0 {
			t.Error("the revoked device's Will was published")
		}
	})

	t.Run("subscriptions", func(t *testing.T) {
		charlie := advMQTTEnroll(t, st, "charlie")
		for _, version := range []string{"mqttv311", "mqttv5"} {
			out, err := advMQTTRun(st, addr, "mosquitto_sub", charlie, "-V", version, "-W", "5", "-C", "1",
				"-t", "$share/g/devices/alpha/#", "-t", "$SYS/#", "-t", "#", "-t", "devices/+/cmd", "-t", "+/alpha/#",
				"-t", "$share/g/devices/charlie/#", "-t", "devices/alpha/#")
			if !strings.Contains(out, "All subscription requests were denied") {
				t.Errorf("%s: %q %v", version, out, err)
			}
		}
		// Past the quota of topic filters (100), the rest are refused.
		args := []string{"-E"}
		for i := range mqttbroker.DefaultMaxSubscriptions + 5 {
			args = append(args, "-t", fmt.Sprintf("devices/charlie/s%d", i))
		}
		before := st.broker.Stats().SubscriptionsRefused
		if out, err := advMQTTRun(st, addr, "mosquitto_sub", charlie, args...); err != nil {
			t.Errorf("subscribing 105 filters: %q %v", out, err)
		}
		if got := st.broker.Stats().SubscriptionsRefused - before; got != 5 {
			t.Errorf("%d filters over the quota refused, want 5", got)
		}
	})

	t.Run("retained flood", func(t *testing.T) {
		echo := advMQTTEnroll(t, st, "echo")
		opts := paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID("echo").SetAutoReconnect(false).
			SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{echo.tls}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		c := paho.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		const flood = 2000
		payload := strings.Repeat("x", 100)
		for i := range flood {
			c.Publish(fmt.Sprintf("devices/echo/r%d", i), 0, true, payload)
		}
		if tok := c.Publish("devices/echo/done", 1, false, "x"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		c.Disconnect(100)
		// One more, with mosquitto_pub: MQTT 5 gets quota exceeded, MQTT 3.1.1 a disconnection.
		out, err := advMQTTRun(st, addr, "mosquitto_pub", echo, "-V", "mqttv5", "-q", "1", "-r", "-t", "devices/echo/more", "-m", "x")
		if !strings.Contains(strings.ToLower(out), "quota exceeded") {
			t.Errorf("MQTT 5, a retained message over the quota: %q %v", out, err)
		}
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", echo, "-q", "1", "-r", "-t", "devices/echo/more", "-m", "x"); err == nil {
			t.Errorf("MQTT 3.1.1, a retained message over the quota was acknowledged: %q", out)
		}
		out, _ = advMQTTRun(st, addr, "mosquitto_sub", echo, "-t", "devices/echo/#", "--retained-only", "-W", "3", "-v")
		got := strings.Count(out, "devices/echo/r")
		t.Logf("after %d retained messages: %d read back, the broker holds %d (%+v)", flood, got,
			advMQTTRetained(st.broker, "devices/echo/#"), st.broker.Stats())
		if got != mqttbroker.DefaultMaxRetained || advMQTTRetained(st.broker, "devices/echo/#") != mqttbroker.DefaultMaxRetained {
			t.Errorf("%d retained messages read back, the broker holds %d; want the quota %d", got,
				advMQTTRetained(st.broker, "devices/echo/#"), mqttbroker.DefaultMaxRetained)
		}
	})

	t.Run("retained wills", func(t *testing.T) {
		// The review's attack: connection after connection of one device, each with a
		// retained Will of 20 KiB on a new topic, killed without DISCONNECT. Before the
		// fix the broker retained every Will (8 × 20 KiB, over the 64 KiB quota).
		india := advMQTTEnroll(t, st, "india")
		will := strings.Repeat("w", 20<<10)
		refused := 0
		for i := range 8 {
			attack, out := advMQTTStart(t, st, addr, "mosquitto_pub", india, "-t", "devices/india/x", "-l",
				"--will-topic", fmt.Sprintf("devices/india/w%d", i), "--will-payload", will, "--will-retain", "--will-qos", "1")
			testenv.Eventually(t, "india connected or refused", func() error {
				if advMQTTConnected(st.broker, "india") || strings.Contains(strings.ToLower(out.String()), "not authori") {
					return nil
				}
				return fmt.Errorf("neither: %q", out.String())
			})
			if strings.Contains(strings.ToLower(out.String()), "not authori") {
				refused++
			}
			attack.Process.Kill()
			testenv.Eventually(t, "india gone", func() error {
				if _, ok := st.broker.Server.Clients.Get("india"); ok {
					return fmt.Errorf("still there")
				}
				return nil
			})
		}
		n, size := 0, 0
		for _, m := range st.broker.Server.Topics.Messages("devices/india/#") {
			n, size = n+1, size+len(m.Payload)
		}
		t.Logf("after 8 connections with a retained Will of 20 KiB each: %d retained, %d bytes; %d refused at CONNECT", n, size, refused)
		if n != 3 || size > mqttbroker.DefaultMaxRetainedBytes || refused != 5 {
			t.Errorf("%d retained, %d bytes, %d connections refused; want 3 within %d bytes, 5 refused", n, size, refused, mqttbroker.DefaultMaxRetainedBytes)
		}
		// MQTT 5 is told why.
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", india, "-V", "mqttv5", "-t", "devices/india/x", "-m", "x",
			"--will-topic", "devices/india/w9", "--will-payload", will, "--will-retain"); !strings.Contains(strings.ToLower(out), "quota exceeded") {
			t.Errorf("MQTT 5, a retained Will over the quota: %q %v", out, err)
		}
	})

	t.Run("retained will over the quota when sent", func(t *testing.T) {
		// juliet's retained Will (20 KiB) fits at CONNECT; then juliet retains 50 KiB
		// and is killed: its Will is sent but not retained.
		juliet := advMQTTEnroll(t, st, "juliet")
		cmd := advMQTTCommand(st, addr, "mosquitto_pub", juliet, "-t", "devices/juliet/data", "-r", "-q", "1", "-l",
			"--will-topic", "devices/juliet/status", "--will-payload", strings.Repeat("w", 20<<10), "--will-retain")
		out := &advMQTTOutput{}
		cmd.Stdout, cmd.Stderr = out, out
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		testenv.Eventually(t, "juliet connected", func() error {
			if !advMQTTConnected(st.broker, "juliet") {
				return fmt.Errorf("not connected: %q", out.String())
			}
			return nil
		})
		if _, err := io.WriteString(stdin, strings.Repeat("d", 50<<10)+"\n"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "juliet's 50 KiB retained", func() error {
			if m, ok := st.broker.Server.Topics.Retained.Get("devices/juliet/data"); !ok || len(m.Payload) != 50<<10 {
				return fmt.Errorf("not retained: %q", out.String())
			}
			return nil
		})
		cmd.Process.Kill()
		testenv.Eventually(t, "juliet gone", func() error {
			if _, ok := st.broker.Server.Clients.Get("juliet"); ok {
				return fmt.Errorf("still there")
			}
			return nil
		})
		if advMQTTRetained(st.broker, "devices/juliet/status") != 0 {
			t.Error("the Will, over the retained quota when it was sent, was retained")
		}
	})

	t.Run("name passes to the next holder", func(t *testing.T) {
		// kilo keeps a session (a subscription) and a retained message; kilo is deleted
		// and the name registered again, with a new key: the new kilo finds neither.
		kilo := advMQTTEnroll(t, st, "kilo")
		if out, err := advMQTTRun(st, addr, "mosquitto_sub", kilo, "-c", "-q", "1", "-t", "devices/kilo/cmd", "-E"); err != nil {
			t.Fatalf("%q %v", out, err)
		}
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", kilo, "-c", "-q", "1", "-r", "-t", "devices/kilo/state", "-m", "kilo's secret"); err != nil {
			t.Fatalf("%q %v", out, err)
		}
		// The session's subscription to devices/kilo/cmd (the next kilo subscribes to
		// devices/kilo/#, which matches the topic too).
		subscribed := func() bool {
			cl, ok := st.broker.Server.Clients.Get("kilo")
			if !ok {
				return false
			}
			_, ok = cl.State.Subscriptions.Get("devices/kilo/cmd")
			return ok
		}
		if advMQTTRetained(st.broker, "devices/kilo/#") != 1 || !subscribed() {
			t.Fatalf("kilo's retained message or session missing")
		}
		if err := st.reg.Delete(t.Context(), registry.OperatorActor("test"), "kilo"); err != nil {
			t.Fatal(err)
		}
		next := advMQTTEnroll(t, st, "kilo")
		var out string
		testenv.Eventually(t, "the next kilo connected", func() error { // once the old answer has left the broker's cache
			o, _ := advMQTTRun(st, addr, "mosquitto_sub", next, "-c", "-q", "1", "-t", "devices/kilo/#", "--retained-only", "-W", "2", "-v")
			if strings.Contains(o, "rror") || strings.Contains(o, "efused") {
				return fmt.Errorf("%q", o)
			}
			out = o
			return nil
		})
		if strings.Contains(out, "secret") {
			t.Errorf("the next holder of the name received the old one's retained message: %q", out)
		}
		if n := advMQTTRetained(st.broker, "devices/kilo/#"); n != 0 || subscribed() {
			t.Errorf("the old kilo's data at the broker: %d retained, subscribed %v", n, subscribed())
		}
	})

	t.Run("cut off device's data", func(t *testing.T) {
		// lima, with a retained message and a session kept for reconnection, is revoked:
		// the broker cuts it off and deletes both at once.
		lima := advMQTTEnroll(t, st, "lima")
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", lima, "-q", "1", "-r", "-t", "devices/lima/state", "-m", "lima's"); err != nil {
			t.Fatalf("%q %v", out, err)
		}
		advMQTTStart(t, st, addr, "mosquitto_sub", lima, "-c", "-q", "1", "-t", "devices/lima/cmd")
		subscribers := func() int { return len(st.broker.Server.Topics.Subscribers("devices/lima/cmd").Subscriptions) }
		testenv.Eventually(t, "lima subscribed", func() error {
			if subscribers() != 1 {
				return fmt.Errorf("no subscription")
			}
			return nil
		})
		if _, err := st.reg.Revoke(t.Context(), registry.OperatorActor("test"), "lima", nil, "keyCompromise"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "lima cut off, its data deleted", func() error {
			if advMQTTConnected(st.broker, "lima") {
				return fmt.Errorf("still connected")
			}
			if n := advMQTTRetained(st.broker, "devices/lima/#"); n != 0 || subscribers() != 0 {
				return fmt.Errorf("%d retained, %d subscriptions", n, subscribers())
			}
			return nil
		})
	})

	t.Run("session expiry", func(t *testing.T) {
		// MQTT 5: CONNECT with a session expiry of 60 s, DISCONNECT with 2^32-1 s.
		mike := advMQTTEnroll(t, st, "mike")
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", mike, "-V", "mqttv5", "-x", "60", "-D", "disconnect", "session-expiry-interval", "4294967295",
			"-t", "devices/mike/x", "-m", "x"); err != nil {
			t.Fatalf("%q %v", out, err)
		}
		cl, ok := st.broker.Server.Clients.Get("mike")
		if !ok {
			t.Fatal("no session kept")
		}
		testenv.Eventually(t, "mike disconnected", func() error {
			if !cl.Closed() {
				return fmt.Errorf("still open")
			}
			return nil
		})
		if got, limit := cl.Properties.Props.SessionExpiryInterval, uint32(mqttbroker.DefaultMaxSessionExpiry/time.Second); got != limit {
			t.Errorf("the session expires %d s after the DISCONNECT, want the cap %d s", got, limit)
		}
	})

	t.Run("oversized packet", func(t *testing.T) {
		golf := advMQTTEnroll(t, st, "golf")
		big := filepath.Join(t.TempDir(), "big")
		if err := os.WriteFile(big, bytes.Repeat([]byte("x"), mqttbroker.DefaultMaxPacketSize+1), 0o600); err != nil {
			t.Fatal(err)
		}
		before := st.broker.Stats().PacketsTooLarge
		// MQTT 3.1.1: the broker closes the connection.
		if out, err := advMQTTRun(st, addr, "mosquitto_pub", golf, "-q", "1", "-r", "-t", "devices/golf/big", "-f", big); err == nil {
			t.Errorf("MQTT 3.1.1: a packet over the maximum size was acknowledged: %q", out)
		}
		// MQTT 5: CONNACK gave the maximum, and the client does not send it.
		advMQTTRun(st, addr, "mosquitto_pub", golf, "-V", "mqttv5", "-q", "1", "-r", "-t", "devices/golf/big", "-f", big)
		if n := advMQTTRetained(st.broker, "devices/golf/#"); n != 0 {
			t.Errorf("the oversized message was retained")
		}
		if st.broker.Stats().PacketsTooLarge == before {
			t.Errorf("no packet counted too large: %+v", st.broker.Stats())
		}
	})
}

// TestAdversaryMQTTDNSDown: a broker whose DNS goes away disconnects a connected device
// once the answer it was verified against has expired (TTL 2 s) and the grace (1 s)
// has passed: it fails closed, as a revocation may have happened meanwhile.
func TestAdversaryMQTTDNSDown(t *testing.T) {
	st := startMQTTStack(t, 2)
	relay := startAdvVerifyRelay(t, st.dns.UDP)
	key := mustKey()
	der, err := st.brokerCA.IssueServer(brokerHost, key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	b, err := mqttbroker.Start(ctx, mqttbroker.Config{Listen: "127.0.0.1:0", Certificate: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		Verifier: &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{st.ds}, Server: relay.addr}, RecheckGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	foxtrot := advMQTTEnroll(t, st, "foxtrot")
	hotel := advMQTTEnroll(t, st, "hotel")
	advMQTTStart(t, st, b.Addr(), "mosquitto_sub", foxtrot, "-t", "devices/foxtrot/#")
	testenv.Eventually(t, "foxtrot connected", func() error {
		if !advMQTTConnected(b, "foxtrot") {
			return fmt.Errorf("not connected")
		}
		return nil
	})
	relay.down.Store(true)
	testenv.Eventually(t, "foxtrot cut off with DNS down", func() error {
		if advMQTTConnected(b, "foxtrot") {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	if s := b.Stats(); s.Unverified != 1 {
		t.Errorf("stats: %+v", s)
	}
	// DNS back: devices connect again.
	relay.down.Store(false)
	if out, err := advMQTTRun(st, b.Addr(), "mosquitto_pub", hotel, "-q", "1", "-t", "devices/hotel/x", "-m", "back"); err != nil {
		t.Errorf("with DNS back: %q %v", out, err)
	}
}
