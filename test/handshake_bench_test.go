package test

import (
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/verify"

	"github.com/miekg/dns"
)

// The handshake benchmark of BENCHMARKS.md: TLS 1.3 handshakes with client
// authentication by DANE (answers cached, or looked up at unbound for every handshake)
// against the same server verifying client certificates against a CA pool.

func BenchmarkHandshakeCAPool(b *testing.B) {
	authority, client := benchDevice(b, nil)
	pool := x509.NewCertPool()
	pool.AddCert(authority.Cert)
	benchHandshakes(b, authority, client, &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool})
}

func BenchmarkHandshakeDANECached(b *testing.B) {
	benchmarkDANE(b, 60)
}

// BenchmarkHandshakeDANEUncached gives the device a TTL of 0, so every handshake asks
// the resolver.
func BenchmarkHandshakeDANEUncached(b *testing.B) {
	benchmarkDANE(b, 0)
}

func benchmarkDANE(b *testing.B, deviceTTL uint32) {
	etcd := testenv.StartEtcd(b)
	dir := b.TempDir()
	ksk := genZoneKey(b, dir, dns.ECDSAP256SHA256, true)
	port := dnsPort(b)
	c := testenv.StartCoreDNS(b, signedCorefile(port, etcd.URL(), ksk))
	waitLoaded(b, c)
	unbound := startUnbound(b, port, ksk.ds)
	authority, client := benchDevice(b, func(cert *x509.Certificate) {
		d := record.Device{Version: record.Version, TTL: &deviceTTL,
			Credentials: []record.Credential{{Cert: cert.Raw, Status: record.StatusActive}}}
		v, _ := json.Marshal(d)
		testenv.Put(b, etcd.Client(), deviceKey("bench"), string(v))
	})
	v := &verify.Verifier{Zones: []string{zone}, Resolver: unbound}
	testenv.Eventually(b, "device validated", func() error {
		leaf, _ := x509.ParseCertificate(client.Certificate[0])
		_, err := v.Verify(b.Context(), []*x509.Certificate{leaf})
		return err
	})
	benchHandshakes(b, authority, client, &tls.Config{ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: v.VerifyPeerCertificate})
}

// benchDevice makes a CA and a device certificate; enroll, if given, publishes it.
func benchDevice(b *testing.B, enroll func(*x509.Certificate)) (*ca.CA, tls.Certificate) {
	authority, err := ca.InitCA(b.TempDir(), "bench CA", zone, elliptic.P256(), "")
	if err != nil {
		b.Fatal(err)
	}
	key := mustKey()
	cert, err := authority.Issue("bench", key.Public(), time.Now())
	if err != nil {
		b.Fatal(err)
	}
	if enroll != nil {
		enroll(cert)
	}
	return authority, tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
}

// benchHandshakes runs full TLS 1.3 handshakes (no resumption) over loopback against
// a server with cfg, from as many clients as there are CPUs.
func benchHandshakes(b *testing.B, authority *ca.CA, client tls.Certificate, cfg *tls.Config) {
	serverCert, err := authority.ServerCertificate([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{serverCert}
	cfg.MinVersion = tls.VersionTLS13
	cfg.SessionTicketsDisabled = true
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte{1}) // the client waits for it: its handshake ends before the server's check
				}
			}()
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(authority.Cert)
	clientCfg := &tls.Config{Certificates: []tls.Certificate{client}, RootCAs: pool, ServerName: "127.0.0.1", SessionTicketsDisabled: true}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := tls.Dial("tcp", ln.Addr().String(), clientCfg)
			if err != nil {
				b.Error(err)
				return
			}
			one := make([]byte, 1)
			if _, err := io.ReadFull(c, one); err != nil {
				b.Errorf("refused: %v", err)
			}
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
