package test

import (
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/mqttbroker"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"
	"github.com/deviceid/deviceid/verify"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/miekg/dns"
)

const brokerHost = "mqtt.acme.iot.example"

// mqttStack is the MQTT scenario's parts: etcd, CoreDNS signing the zone with a short
// TTL (so that a revocation reaches the broker's cache quickly), the signer's CA and
// registry, and the DANE broker with its key published as a service record.
type mqttStack struct {
	dns       *testenv.CoreDNS
	ds        *dns.DS
	reg       *registry.Registry
	authority *ca.CA
	broker    *mqttbroker.Broker
	brokerCA  *testenv.CA
	dir       string
	lost      chan string
	brokerDER []byte // the broker's certificate
}

func (st *mqttStack) brokerCert(*testing.T) []byte { return st.brokerDER }

func startMQTTStack(t testing.TB, ttl int) *mqttStack {
	t.Helper()
	etcd, c, ksk, _ := signedZone(t, ttl)
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "device CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	st := &mqttStack{dns: c, ds: ksk.ds, reg: &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}, authority: authority, dir: dir,
		brokerCA: testenv.NewTestCA(t, "broker CA"), lost: make(chan string, 16)}
	key := mustKey()
	der, err := st.brokerCA.IssueServer(brokerHost, key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	st.brokerDER = der
	leaf, _ := x509.ParseCertificate(der)
	if _, err := st.reg.PublishServiceKey(t.Context(), registry.OperatorActor("test"), "_8883._tcp.mqtt.acme", "", leaf.RawSubjectPublicKeyInfo); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st.broker, err = mqttbroker.Start(ctx, mqttbroker.Config{Listen: "127.0.0.1:0", Certificate: cert, Verifier: st.verifier()})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteFile(t, filepath.Join(dir, "broker-ca.pem"), st.brokerCA.PEM())
	return st
}

// verifier validates locally from the zone's DS.
func (st *mqttStack) verifier() *verify.Verifier {
	return &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{st.ds}, Server: st.dns.UDP}
}

// device enrolls a device and writes its key and certificate as PEM files.
func (st *mqttStack) device(t testing.TB, name string) (tls.Certificate, string, string) {
	t.Helper()
	key := mustKey()
	csr, err := x509.ParseCertificateRequest(testenv.CSR(t, key, ""))
	if err != nil {
		t.Fatal(err)
	}
	done, err := (&registry.Enroller{CA: st.authority, Registry: st.reg}).Enroll(t.Context(), registry.Enrollment{Actor: registry.OperatorActor("test"), Device: name, CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(st.dir, name+".pem"), filepath.Join(st.dir, name+".key")
	testenv.WriteFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: done.Cert.Raw}))
	der, _ := x509.MarshalECPrivateKey(key)
	testenv.WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	testenv.Eventually(t, name+" in DNS", func() error {
		return answerIs(t, st.dns, name+"._device.iot.example.", dns.RcodeSuccess, []string{eeOf(done.Cert), discoveryOf(done.Cert)})
	})
	return tls.Certificate{Certificate: [][]byte{done.Cert.Raw}, PrivateKey: key}, certFile, keyFile
}

// connect is a Go device: paho, authenticating the broker by DANE (verify.ClientConfig).
func (st *mqttStack) connect(t testing.TB, clientID string, cert tls.Certificate) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker("tls://" + st.broker.Addr()).SetClientID(clientID).
		SetTLSConfig(st.verifier().ClientConfig(brokerHost, 8883, cert)).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectionLostHandler(func(paho.Client, error) { st.lost <- clientID })
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// TestMQTT runs the scenario: a device and the broker authenticate each other by
// DNSSEC-validated TLSA records; the device publishes on its own topics only; its
// client id must be its name; a revocation disconnects it within the TTL and a second;
// mosquitto's clients (OpenSSL) are accepted with the enrolled certificate and refused
// once it is revoked.
func TestMQTT(t *testing.T) {
	st := startMQTTStack(t, 2)
	cert, _, _ := st.device(t, "sensor1")
	other, certFile, keyFile := st.device(t, "sensor2")
	c, err := st.connect(t, "sensor1", cert)
	if err != nil {
		t.Fatalf("the device could not connect: %v", err)
	}
	if tok := c.Publish("devices/sensor1/telemetry", 1, false, "21.5"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Errorf("publish on its own topic: %v", tok.Error())
	}
	sub := c.Subscribe("devices/sensor2/#", 1, nil)
	sub.WaitTimeout(5 * time.Second)
	if st, ok := sub.(*paho.SubscribeToken); !ok || st.Result()["devices/sensor2/#"] != 0x80 {
		t.Errorf("subscribing to another device's topics was not refused: %v", sub.(*paho.SubscribeToken).Result())
	}
	if _, err := st.connect(t, "sensor3", other); err == nil {
		t.Error("a client id that is not the device's name was accepted")
	}

	// mosquitto_pub (OpenSSL) as another device, with its enrolled certificate (as
	// sensor1 it would take sensor1's session over).
	_, port, _ := strings.Cut(st.broker.Addr(), ":")
	mosquittoTool := func(tool, id string, args ...string) (string, error) {
		args = append([]string{"-h", "127.0.0.1", "-p", port, "--cafile", filepath.Join(st.dir, "broker-ca.pem"), "--insecure",
			"--cert", certFile, "--key", keyFile, "-i", id, "-q", "1"}, args...)
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%v: %s", err, out)
		}
		return string(out), nil
	}
	mosquitto := func(id string) error {
		_, err := mosquittoTool("mosquitto_pub", id, "-t", "devices/"+id+"/telemetry", "-m", "hello")
		return err
	}
	if err := mosquitto("sensor2"); err != nil {
		t.Errorf("mosquitto_pub with the enrolled certificate: %v", err)
	}
	// mosquitto_sub reads back, on the device's own topics, what it left retained; another
	// device's topics are refused to it.
	if _, err := mosquittoTool("mosquitto_pub", "sensor2", "-t", "devices/sensor2/status", "-m", "online", "-r"); err != nil {
		t.Errorf("mosquitto_pub -r: %v", err)
	}
	if out, err := mosquittoTool("mosquitto_sub", "sensor2", "-t", "devices/sensor2/#", "-C", "1", "-W", "10", "-v"); err != nil || strings.TrimSpace(out) != "devices/sensor2/status online" {
		t.Errorf("mosquitto_sub on its own topics: %q %v", out, err)
	}
	if out, err := mosquittoTool("mosquitto_sub", "sensor2", "-t", "devices/sensor1/#", "-C", "1", "-W", "5"); err != nil || !strings.Contains(out, "All subscription requests were denied") {
		t.Errorf("mosquitto_sub on another device's topics: %q %v", out, err)
	}

	// Revoke: the connected session is cut within the TTL (2 s) and the re-check (1 s).
	start := time.Now()
	if _, err := st.reg.Revoke(t.Context(), registry.OperatorActor("test"), "sensor1", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-st.lost:
		if id != "sensor1" {
			t.Errorf("%s lost its connection", id)
		}
		t.Logf("disconnected %v after the revocation", time.Since(start).Round(10*time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked device is still connected")
	}
	if _, err := st.connect(t, "sensor1", cert); err == nil {
		t.Error("the revoked device connected again")
	}
	// Suspended: DNS stops vouching for it, and the broker cuts it off the same way.
	cert4, _, _ := st.device(t, "sensor4")
	if _, err := st.connect(t, "sensor4", cert4); err != nil {
		t.Fatal(err)
	}
	if _, err := st.reg.SetSuspended(t.Context(), registry.OperatorActor("test"), "sensor4", true); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-st.lost:
		if id != "sensor4" {
			t.Errorf("%s lost its connection", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the suspended device is still connected")
	}
	if _, err := st.reg.Revoke(t.Context(), registry.OperatorActor("test"), "sensor2", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "mosquitto_pub refused once revoked", func() error {
		if err := mosquitto("sensor2"); err == nil {
			return errors.New("accepted")
		}
		return nil
	})
	if out, err := mosquittoTool("mosquitto_sub", "sensor2", "-t", "devices/sensor2/#", "-C", "1", "-W", "5"); err == nil {
		t.Errorf("mosquitto_sub connected once revoked: %q", out)
	}
}

// TestBrokerDANEInterop: independent DANE implementations accept the broker's
// certificate from the service TLSA RRset we publish (fetched and validated by delv),
// and reject it once its key is rotated out: OpenSSL's DANE verifier (s_client
// -dane_tlsa_rrdata) in a real handshake with the broker, and GnuTLS's danetool, whose
// TLSA record for the certificate must be one DNS serves (danetool --check resolves
// through the system's resolver, which cannot be pointed at a test zone).
func TestBrokerDANEInterop(t *testing.T) {
	st := startMQTTStack(t, 2)
	_, certFile, keyFile := st.device(t, "sensor1")
	_, dnsPort, _ := strings.Cut(st.dns.UDP, ":")
	port := 0
	fmt.Sscan(dnsPort, &port)
	owner := "_8883._tcp." + brokerHost + "."
	brokerPEM := filepath.Join(st.dir, "broker.pem")
	leafDER := st.brokerCert(t)
	testenv.WriteFile(t, brokerPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}))
	served := func() []string { // the validated TLSA rdata, as delv prints it
		out := delv(t, port, st.ds, owner, dns.TypeTLSA)
		if !strings.Contains(out, "; fully validated") {
			t.Fatalf("delv did not validate %s:\n%s", owner, out)
		}
		var rdata []string
		for line := range strings.SplitSeq(out, "\n") {
			if f := strings.Fields(line); len(f) >= 8 && f[3] == "TLSA" {
				rdata = append(rdata, strings.Join(f[4:7], " ")+" "+strings.Join(f[7:], ""))
			}
		}
		return rdata
	}
	openssl := func(rdata []string) (string, error) {
		args := []string{"s_client", "-connect", st.broker.Addr(), "-servername", brokerHost, "-dane_tlsa_domain", brokerHost,
			"-verify_return_error", "-cert", certFile, "-key", keyFile, "-brief"}
		for _, r := range rdata {
			args = append(args, "-dane_tlsa_rrdata", r)
		}
		cmd := exec.Command("openssl", args...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	danetool := func() string {
		out, err := exec.Command("danetool", "--tlsa-rr", "--load-certificate", brokerPEM, "--host", brokerHost, "--port", "8883", "--proto", "tcp").CombinedOutput()
		if err != nil {
			t.Fatalf("danetool (Debian package gnutls-bin): %v\n%s", err, out)
		}
		// "_8883._tcp.mqtt.acme.iot.example. IN TLSA ( 03 01 01 <hex> )"
		f := strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(string(out)))
		for i, w := range f {
			if w == "TLSA" && i+4 < len(f) {
				u, s, m := strings.TrimLeft(f[i+1], "0"), strings.TrimLeft(f[i+2], "0"), strings.TrimLeft(f[i+3], "0")
				return u + " " + s + " " + m + " " + strings.ToLower(f[i+4])
			}
		}
		t.Fatalf("no TLSA record in danetool's output:\n%s", out)
		return ""
	}
	rdata := served()
	if out, err := openssl(rdata); err != nil || !strings.Contains(out, "DANE TLSA 3 1 1") {
		t.Errorf("openssl s_client refused the broker with the served TLSA %v: %v\n%s", rdata, err, out)
	}
	if rr := danetool(); !containsFold(rdata, rr) {
		t.Errorf("danetool's record %q for the broker's certificate is not among the served %v", rr, rdata)
	}
	// Rotate the broker's key out: a new key published, the old one revoked.
	newKey := mustKey()
	newDER, _ := st.brokerCA.IssueServer(brokerHost, newKey.Public(), time.Now().AddDate(1, 0, 0))
	newLeaf, _ := x509.ParseCertificate(newDER)
	old, _ := x509.ParseCertificate(leafDER)
	operator := registry.OperatorActor("test")
	if _, err := st.reg.PublishServiceKey(t.Context(), operator, "_8883._tcp.mqtt.acme", "", newLeaf.RawSubjectPublicKeyInfo); err != nil {
		t.Fatal(err)
	}
	sum := sha256Sum(old.RawSubjectPublicKeyInfo)
	if _, err := st.reg.RevokeServiceKey(t.Context(), operator, "_8883._tcp.mqtt.acme", sum, "superseded"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "rotated in DNS", func() error {
		return answerIs(t, st.dns, owner, dns.RcodeSuccess, []string{eeOf(newLeaf), revokedOf(old)})
	})
	rdata = served()
	if out, err := openssl(rdata); err == nil {
		t.Errorf("openssl s_client accepted the rotated-out broker certificate with %v:\n%s", rdata, out)
	}
	if rr := danetool(); containsFold(rdata, rr) {
		t.Errorf("danetool's record %q for the rotated-out certificate is still served: %v", rr, rdata)
	}
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}
