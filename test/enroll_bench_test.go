package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
)

// The enrollment benchmark of BENCHMARKS.md: devices enrolled with a CSR through the
// admin API (HTTPS, CSR check, certificate issued, compare-revision transaction), and
// raw etcd puts of records of the same size, both into one single-node etcd with the
// same number of concurrent clients. make bench prints the ratio.

const enrollClients = 16

func BenchmarkEnrollAdminAPI(b *testing.B) {
	benchmarkEnroll(b, func(key *ecdsa.PrivateKey) httpapi.EnrollRequest {
		return httpapi.EnrollRequest{CSR: testenv.CSRPEM(b, key, "")}
	})
}

// BenchmarkEnrollAdminAPIBareKey enrolls bare public keys: no CSR to verify and no
// certificate to sign, which shows what the cryptography costs.
func BenchmarkEnrollAdminAPIBareKey(b *testing.B) {
	benchmarkEnroll(b, func(key *ecdsa.PrivateKey) httpapi.EnrollRequest {
		der, _ := x509.MarshalPKIXPublicKey(key.Public())
		return httpapi.EnrollRequest{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	})
}

// BenchmarkEnrollAdminAPIHSM enrolls CSRs with the CA key in SoftHSM: every
// certificate is signed through PKCS#11.
func BenchmarkEnrollAdminAPIHSM(b *testing.B) {
	benchmarkEnrollKey(b, testenv.SoftHSM(b).URI("ca"), func(key *ecdsa.PrivateKey) httpapi.EnrollRequest {
		return httpapi.EnrollRequest{CSR: testenv.CSRPEM(b, key, "")}
	})
}

func benchmarkEnroll(b *testing.B, request func(*ecdsa.PrivateKey) httpapi.EnrollRequest) {
	benchmarkEnrollKey(b, "", request)
}

func benchmarkEnrollKey(b *testing.B, caKey string, request func(*ecdsa.PrivateKey) httpapi.EnrollRequest) {
	etcd := testenv.StartEtcd(b)
	s := startSignerKey(b, etcd, caKey)
	csrs := make([]string, 256)
	for i := range csrs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		body, _ := json.Marshal(request(key))
		csrs[i] = string(body)
	}
	var n atomic.Int64
	b.SetParallelism(enrollClients / 2) // × GOMAXPROCS (2) clients
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/devices/dev%d/enroll", s.url, i), strings.NewReader(csrs[i%int64(len(csrs))]))
			req.Header.Set("Authorization", "Bearer "+adminToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := s.client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrollments/s")
}

func BenchmarkRawEtcdPut(b *testing.B) {
	etcd := testenv.StartEtcd(b)
	authority, err := ca.InitCA(b.TempDir(), "bench CA", zone, elliptic.P256(), "")
	if err != nil {
		b.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, _ := authority.Issue("dev", key.Public(), time.Now())
	d := record.Device{Version: record.Version, Credentials: []record.Credential{{Cert: cert.Raw, Status: record.StatusActive}}}
	d.Validate()
	value, _ := json.Marshal(d) // the same size as an enrolled record
	cli := etcd.Client()
	var n atomic.Int64
	b.SetParallelism(enrollClients / 2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if _, err := cli.Put(context.Background(), fmt.Sprintf("/deviceid/iot.example/device/dev%d", i), string(value)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
}
