package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/mqttbroker"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/registry"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/miekg/dns"
)

// The MQTT figures of BENCHMARKS.md: broker connections per second (TLS 1.3 with a
// client certificate, MQTT CONNECT, DISCONNECT) with DANE client authentication, its
// answers cached or looked up for every connection, against the same broker verifying
// client certificates with a CA pool; and the time from a revocation to the broker
// cutting the device off, over 100 devices.

func BenchmarkBrokerConnect(b *testing.B) {
	for _, mode := range []string{"ca-pool", "dane-cached", "dane-uncached"} {
		b.Run(mode, func(b *testing.B) {
			st := startMQTTStack(b, 60)
			cert, _, _ := st.device(b, "bench1")
			if mode == "dane-uncached" {
				// The device's records with a TTL of 0: the verifier caches nothing, every
				// connection is a lookup and a validation.
				d, _, err := st.reg.Get(b.Context(), "bench1")
				if err != nil {
					b.Fatal(err)
				}
				zero := uint32(0)
				d.TTL = &zero
				v, _ := json.Marshal(d)
				testenv.Put(b, st.reg.Client, deviceKey("bench1"), string(v))
				testenv.Eventually(b, "TTL 0 in DNS", func() error {
					if r := st.dns.Query(b, "bench1._device.iot.example.", dns.TypeTLSA); len(r.Answer) == 0 || r.Answer[0].Header().Ttl != 0 {
						return fmt.Errorf("%v", r.Answer)
					}
					return nil
				})
			}
			addr := st.broker.Addr()
			if mode == "ca-pool" {
				pool := x509.NewCertPool()
				pool.AddCert(st.authority.Cert)
				ctx, cancel := context.WithCancel(context.Background())
				b.Cleanup(cancel)
				key := mustKey()
				der, _ := st.brokerCA.IssueServer(brokerHost, key.Public(), time.Now().AddDate(1, 0, 0))
				pb, err := mqttbroker.Start(ctx, mqttbroker.Config{Listen: "127.0.0.1:0", ClientCAs: pool, Zone: zone,
					Certificate: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}})
				if err != nil {
					b.Fatal(err)
				}
				addr = pb.Addr()
			}
			// The client side is the same in every mode: the broker's cost is measured.
			opts := paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID("bench1").SetAutoReconnect(false).
				SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			connect := func() {
				c := paho.NewClient(opts)
				if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					b.Fatalf("connect: %v", tok.Error())
				}
				c.Disconnect(0)
			}
			connect() // warms the cache in the cached mode
			b.ResetTimer()
			for b.Loop() {
				connect()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connections/s")
		})
	}
}

// BenchmarkRevocationToDisconnect connects 100 devices, revokes them all, and reports
// the 50th and 99th percentile of the time from each revocation's write to the broker
// cutting that device off, with a zone TTL of 5 s (the bound is TTL + the 1 s re-check).
func BenchmarkRevocationToDisconnect(b *testing.B) {
	const n, ttl = 100, 5
	for b.Loop() {
		st := startMQTTStack(b, ttl)
		var mu sync.Mutex
		lostAt := map[string]time.Time{}
		st.broker.OnDisconnect = func(device string, _ error) { mu.Lock(); lostAt[device] = time.Now(); mu.Unlock() }
		for i := range n {
			name := fmt.Sprintf("dev%03d", i)
			cert, _, _ := st.device(b, name)
			if _, err := st.connect(b, name, cert); err != nil {
				b.Fatal(err)
			}
		}
		revokedAt := map[string]time.Time{}
		for i := range n {
			name := fmt.Sprintf("dev%03d", i)
			revokedAt[name] = time.Now()
			if _, err := st.reg.Revoke(b.Context(), registry.OperatorActor("bench"), name, nil, "keyCompromise"); err != nil {
				b.Fatal(err)
			}
		}
		testenv.Eventually(b, "every device cut off", func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(lostAt) < n {
				return fmt.Errorf("%d of %d cut off", len(lostAt), n)
			}
			return nil
		})
		var d []float64
		for name, at := range revokedAt {
			d = append(d, lostAt[name].Sub(at).Seconds()*1000)
		}
		slices.Sort(d)
		b.ReportMetric(d[len(d)/2], "p50-ms")
		b.ReportMetric(d[len(d)*99/100], "p99-ms")
		b.ReportMetric(d[len(d)-1], "max-ms")
		b.ReportMetric(ttl*1000, "ttl-ms")
	}
}
