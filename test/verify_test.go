package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"
	"github.com/deviceid/deviceid/verify"

	"github.com/miekg/dns"
)

// TestVerify authenticates clients by DANE through the verify package, in both of its
// modes: trusting a validating resolver's AD bit (unbound), and validating locally from
// the zone's DS. Everything on the path is real: etcd, CoreDNS signing, the signer's CA
// and registry, unbound.
func TestVerify(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	ksk := genZoneKey(t, dir, dns.ECDSAP256SHA256, true)
	other := genZoneKey(t, dir, dns.ECDSAP256SHA256, true) // a DS that vouches for nothing served
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefile(port, etcd.URL(), ksk))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)

	authority, err := ca.InitCA(t.TempDir(), "device CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := ca.InitCA(t.TempDir(), "another CA", zone, elliptic.P256(), "")
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	ctx := context.Background()
	keys := map[*x509.Certificate]*ecdsa.PrivateKey{}
	device := func(name string, from *ca.CA, enroll bool) []*x509.Certificate {
		key := mustKey()
		cert, err := from.Issue(name, key.Public(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		keys[cert] = key
		if enroll {
			testenv.Put(t, reg.Client, deviceKey(name), deviceJSON(credentialJSON(&device{cert: cert.Raw}, "active")))
		}
		return []*x509.Certificate{cert}
	}
	good := device("good", authority, true)
	revoked := device("gone", authority, true)
	if _, err := reg.Revoke(ctx, registry.OperatorActor("test"), "gone", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	unknown := device("nobody", authority, false)
	foreign := device("good", otherCA, false) // the right name, another CA, another key
	device("twin", authority, true)
	mismatch := device("twin", authority, false) // a valid certificate for twin, but not the enrolled key
	outside, _ := otherCA.Issue("x", mustKey().Public(), time.Now())
	outside.DNSNames = []string{"x._device.elsewhere.example"}
	testenv.Eventually(t, "devices in DNS", func() error {
		return answerIs(t, c, "gone._device.iot.example.", dns.RcodeSuccess, []string{revokedOf(revoked[0])})
	})

	modes := map[string]*verify.Verifier{
		"resolver AD":      {Zones: []string{zone}, Resolver: unbound},
		"local validation": {Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: c.UDP},
	}
	for mode, v := range modes {
		for _, tc := range []struct {
			name  string
			chain []*x509.Certificate
			want  error // nil: accepted
		}{
			{"enrolled device", good, nil},
			{"revoked device", revoked, verify.ErrRevoked},
			{"name not in DNS", unknown, verify.ErrNoMatch},
			{"certificate from another CA", foreign, verify.ErrNoMatch},
			{"key that does not match", mismatch, verify.ErrNoMatch},
			{"name outside the accepted zones", []*x509.Certificate{outside}, verify.ErrNoIdentity},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				_, err := v.Verify(ctx, tc.chain)
				if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("got %v, want %v", err, tc.want)
				}
			})
		}
	}
	t.Run("no AD from the resolver", func(t *testing.T) {
		v := &verify.Verifier{Zones: []string{zone}, Resolver: c.UDP} // an authoritative server sets no AD
		if _, err := v.Verify(ctx, good); !errors.Is(err, verify.ErrNotValidated) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("trust anchor that vouches for no key", func(t *testing.T) {
		v := &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{other.ds}, Server: c.UDP}
		if _, err := v.Verify(ctx, good); !errors.Is(err, verify.ErrNotValidated) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("TLS handshake", func(t *testing.T) {
		v := modes["resolver AD"]
		for _, tc := range []struct {
			chain []*x509.Certificate
			ok    bool
		}{{good, true}, {revoked, false}} {
			client := tls.Certificate{Certificate: [][]byte{tc.chain[0].Raw}, PrivateKey: keys[tc.chain[0]]}
			if err := handshake(t, authority, v, client); (err == nil) != tc.ok {
				t.Errorf("handshake with %s: %v", tc.chain[0].DNSNames[0], err)
			}
		}
	})
}

func mustKey() *ecdsa.PrivateKey {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return k
}

// handshake runs a TLS 1.3 handshake between a client presenting client and a server
// that authenticates clients by DANE, and returns the server's verdict.
func handshake(t testing.TB, authority *ca.CA, v *verify.Verifier, client tls.Certificate) error {
	t.Helper()
	serverCert, err := authority.ServerCertificate([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	server := tls.Server(sc, &tls.Config{
		Certificates:          []tls.Certificate{serverCert},
		ClientAuth:            tls.RequireAnyClientCert, // DANE, not a CA pool, decides
		VerifyPeerCertificate: v.VerifyPeerCertificate,
		MinVersion:            tls.VersionTLS13,
	})
	pool := x509.NewCertPool()
	pool.AddCert(authority.Cert)
	cc.SetDeadline(time.Now().Add(20 * time.Second)) // a pipe blocks forever otherwise
	sc.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		c := tls.Client(cc, &tls.Config{Certificates: []tls.Certificate{client}, RootCAs: pool, ServerName: "127.0.0.1"})
		if c.Handshake() == nil {
			io.Copy(io.Discard, c) // read what the server still sends (a pipe has no buffer)
		}
	}()
	return server.Handshake()
}

// TestVerifyRevocationWithinTTL: a server authenticating by DANE accepts a device,
// and refuses it once revoked as soon as the answer it cached has lived out its TTL
// (2 s here) — checked one second after that, in both modes.
func TestVerifyRevocationWithinTTL(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	ksk := genZoneKey(t, dir, dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	const ttl = 2
	c := testenv.StartCoreDNS(t, signedCorefileTTL(port, etcd.URL(), ttl, ksk))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)
	authority, err := ca.InitCA(t.TempDir(), "device CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	key := mustKey()
	cert, _ := authority.Issue("lamp", key.Public(), time.Now())
	testenv.Put(t, reg.Client, deviceKey("lamp"), deviceJSON(credentialJSON(&device{cert: cert.Raw}, "active")))
	client := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
	verifiers := map[string]*verify.Verifier{
		"resolver AD":      {Zones: []string{zone}, Resolver: unbound},
		"local validation": {Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: c.UDP},
	}
	for mode, v := range verifiers {
		testenv.Eventually(t, mode+": accepted", func() error { return handshake(t, authority, v, client) })
	}
	if _, err := reg.Revoke(t.Context(), registry.OperatorActor("test"), "lamp", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "revocation in DNS", func() error {
		return answerIs(t, c, "lamp._device.iot.example.", dns.RcodeSuccess, []string{revokedOf(cert)})
	})
	time.Sleep((ttl + 1) * time.Second) // the bound under test: TTL + a second
	for mode, v := range verifiers {
		if err := handshake(t, authority, v, client); err == nil || !errors.Is(err, verify.ErrRevoked) {
			t.Errorf("%s: handshake after revocation + TTL + 1 s: %v, want %v", mode, err, verify.ErrRevoked)
		}
	}
}

// tamperingProxy forwards DNS queries to upstream and spoils every RRSIG over a TLSA
// RRset or an NSEC in the answers: what an attacker on the path would serve, to
// vouch for a key or to deny one.
func tamperingProxy(t testing.TB, upstream string) string {
	t.Helper()
	return testenv.RelayDNS(t, upstream, func(resp *dns.Msg) bool {
		for _, rr := range append(resp.Answer, resp.Ns...) {
			if sig, ok := rr.(*dns.RRSIG); ok && (sig.TypeCovered == dns.TypeTLSA || sig.TypeCovered == dns.TypeNSEC) {
				// Another valid base64 character at one place: still a signature of the
				// right length, no longer the right one.
				b := []byte(sig.Signature)
				if b[10] == 'A' {
					b[10] = 'B'
				} else {
					b[10] = 'A'
				}
				sig.Signature = string(b)
			}
		}
		return true
	})
}

// TestVerifyBogusSignature: a TLSA answer whose signature does not verify is refused,
// whether the server validates itself or trusts a validating resolver.
func TestVerifyBogusSignature(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefile(port, etcd.URL(), ksk))
	waitLoaded(t, c)
	proxy := tamperingProxy(t, fmt.Sprintf("127.0.0.1:%d", port))
	_, proxyPort, _ := net.SplitHostPort(proxy)
	var pp int
	fmt.Sscan(proxyPort, &pp)
	unbound := startUnbound(t, pp, ksk.ds) // its stub zone is the tampering proxy

	authority, _ := ca.InitCA(t.TempDir(), "device CA", zone, elliptic.P256(), "")
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	cert, _ := authority.Issue("lamp", mustKey().Public(), time.Now())
	testenv.Put(t, reg.Client, deviceKey("lamp"), deviceJSON(credentialJSON(&device{cert: cert.Raw}, "active")))
	testenv.Eventually(t, "device in DNS", func() error {
		return answerIs(t, c, "lamp._device.iot.example.", dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})
	local := &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: proxy}
	if _, err := local.Verify(t.Context(), []*x509.Certificate{cert}); !errors.Is(err, verify.ErrNotValidated) {
		t.Errorf("local validation of a bogus signature: %v, want %v", err, verify.ErrNotValidated)
	}
	viaResolver := &verify.Verifier{Zones: []string{zone}, Resolver: unbound}
	if _, err := viaResolver.Verify(t.Context(), []*x509.Certificate{cert}); !errors.Is(err, verify.ErrNotValidated) {
		t.Errorf("a bogus answer through the validating resolver: %v, want %v", err, verify.ErrNotValidated)
	}
	// A denial with a spoilt signature proves nothing.
	nobody, _ := authority.Issue("nobody", mustKey().Public(), time.Now())
	if _, err := local.Verify(t.Context(), []*x509.Certificate{nobody}); !errors.Is(err, verify.ErrNotValidated) {
		t.Errorf("local validation of a bogus denial: %v, want %v", err, verify.ErrNotValidated)
	}
	// The same verifiers accept the device from the untampered server, and find the
	// proof that nobody has no key.
	honest := &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: c.UDP}
	if _, err := honest.Verify(t.Context(), []*x509.Certificate{cert}); err != nil {
		t.Errorf("untampered: %v", err)
	}
	if _, err := honest.Verify(t.Context(), []*x509.Certificate{nobody}); !errors.Is(err, verify.ErrNoMatch) {
		t.Errorf("untampered denial: %v, want %v", err, verify.ErrNoMatch)
	}
}

// TestVerifyNegativeTTL: a device refused because it was not enrolled yet is accepted
// once the refusal's negative TTL (the zone's, 60 s) has passed on the verifier's
// clock, validated locally against the real signed zone.
func TestVerifyNegativeTTL(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefile(port, etcd.URL(), ksk))
	waitLoaded(t, c)
	authority, _ := ca.InitCA(t.TempDir(), "device CA", zone, elliptic.P256(), "")
	cert, _ := authority.Issue("late", mustKey().Public(), time.Now())
	now := time.Now()
	v := &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: c.UDP, Now: func() time.Time { return now }}
	chain := []*x509.Certificate{cert}
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, verify.ErrNoMatch) {
		t.Fatalf("before enrollment: %v, want %v", err, verify.ErrNoMatch)
	}
	testenv.Put(t, etcd.Client(), deviceKey("late"), deviceJSON(credentialJSON(&device{cert: cert.Raw}, "active")))
	testenv.Eventually(t, "device in DNS", func() error {
		return answerIs(t, c, "late._device.iot.example.", dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})
	now = now.Add(59 * time.Second)
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, verify.ErrNoMatch) {
		t.Errorf("within the negative TTL: %v, want the cached refusal", err)
	}
	now = now.Add(time.Second)
	if _, err := v.Verify(t.Context(), chain); err != nil {
		t.Errorf("after the negative TTL: %v", err)
	}
}

// TestVerifyServer authenticates a TLS server by DANE from the device side, in both
// modes: its key published as a service record through the signer's registry, served
// signed by CoreDNS, validated by unbound (AD) or locally from the DS. A rotation
// (the new key beside the old, then the old revoked) moves trust from one key to the
// other, and a real TLS handshake follows the verdict.
func TestVerifyServer(t *testing.T) {
	etcd, c, ksk, port := signedZone(t, 60)
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	ctx := t.Context()
	const host = "mqtt.acme.iot.example"
	brokerCA := testenv.NewTestCA(t, "broker CA")
	server := func() tls.Certificate {
		key := mustKey()
		der, err := brokerCA.IssueServer(host, key.Public(), time.Now().AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	oldCert, newCert, stranger := server(), server(), server()
	spkiOf := func(c tls.Certificate) []byte {
		leaf, _ := x509.ParseCertificate(c.Certificate[0])
		return leaf.RawSubjectPublicKeyInfo
	}
	operator := registry.OperatorActor("test")
	if _, err := reg.PublishServiceKey(ctx, operator, "_8883._tcp.mqtt.acme", "", spkiOf(oldCert)); err != nil {
		t.Fatal(err)
	}
	owner := "_8883._tcp." + host + "."
	testenv.Eventually(t, "service in DNS", func() error {
		return answerIs(t, c, owner, dns.RcodeSuccess, []string{eeOf(mustParse(t, oldCert))})
	})
	// Fresh caches for each step, the resolver's too: a client sees a rotation once the
	// cached answer has lived out its TTL, which the test does not wait for.
	modes := func() map[string]*verify.Verifier {
		return map[string]*verify.Verifier{
			"resolver AD":      {Zones: []string{zone}, Resolver: startUnbound(t, port, ksk.ds)},
			"local validation": {Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: c.UDP},
		}
	}
	check := func(step string, cert tls.Certificate, want error) {
		t.Helper()
		for mode, v := range modes() {
			err := serverHandshake(t, v, host, cert)
			if want == nil && err != nil || want != nil && !errors.Is(err, want) {
				t.Errorf("%s, %s: %v, want %v", step, mode, err, want)
			}
		}
	}
	check("published key", oldCert, nil)
	check("a key DNS does not know", stranger, verify.ErrNoMatch)
	// Rotation: the new key beside the old, then the old one revoked.
	if _, err := reg.PublishServiceKey(ctx, operator, "_8883._tcp.mqtt.acme", "", spkiOf(newCert)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "both keys", func() error {
		return answerIs(t, c, owner, dns.RcodeSuccess, []string{eeOf(mustParse(t, oldCert)), eeOf(mustParse(t, newCert))})
	})
	check("new key beside the old", newCert, nil)
	check("old key beside the new", oldCert, nil)
	sum := sha256.Sum256(spkiOf(oldCert))
	if _, err := reg.RevokeServiceKey(ctx, operator, "_8883._tcp.mqtt.acme", sum[:], "superseded"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "old key revoked", func() error {
		return answerIs(t, c, owner, dns.RcodeSuccess, []string{revokedOf(mustParse(t, oldCert)), eeOf(mustParse(t, newCert))})
	})
	check("rotated-out key", oldCert, verify.ErrRevoked)
	check("new key", newCert, nil)
	// An endpoint with no service record at all.
	for mode, v := range modes() {
		if err := serverHandshakeAt(t, v, host, 443, newCert); !errors.Is(err, verify.ErrNoTLSA) {
			t.Errorf("no service at 443, %s: %v", mode, err)
		}
	}
}

func mustParse(t *testing.T, c tls.Certificate) *x509.Certificate {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// serverHandshake connects a device-side TLS client that authenticates the server by
// DANE (verify.ClientConfig) to a TLS 1.3 server presenting cert, and returns the
// client's verdict.
func serverHandshake(t *testing.T, v *verify.Verifier, host string, cert tls.Certificate) error {
	return serverHandshakeAt(t, v, host, 8883, cert)
}

func serverHandshakeAt(t *testing.T, v *verify.Verifier, host string, port int, cert tls.Certificate) error {
	t.Helper()
	// Over loopback TCP, not net.Pipe: a client that refuses the server stops reading
	// and writes an alert, which an unbuffered pipe would deadlock on.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if sc, err := ln.Accept(); err == nil {
			sc.(*tls.Conn).Handshake()
			sc.Close()
		}
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := tls.Client(cc, v.ClientConfig(host, port))
	hctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return client.HandshakeContext(hctx)
}
