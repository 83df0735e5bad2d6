package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves everything the signer offers over HTTPS: EST and CA discovery under
// /.well-known/, the admin API under /api/ (only with a token or admin CAs), /healthz,
// which reports whether etcd answers, and /metrics.
func Handler(ca *CA, reg *Registry, token string, adminCAs *x509.CertPool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/.well-known/", (&EST{CA: ca, Registry: reg}).Handler())
	if token != "" || adminCAs != nil {
		mux.Handle("/api/", (&API{CA: ca, Registry: reg, Token: token, AdminCAs: adminCAs}).Handler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := reg.Client.Get(ctx, "health"); err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.Handler())
	return mux
}

// TLSConfig is the server's TLS configuration: its certificate, and client
// certificates asked for but neither required nor checked during the handshake: the
// handlers that use them (re-enrollment, the admin API) check them, and answer a
// wrong one with a JSON error instead of a failed handshake.
func TLSConfig(serverCert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

// ServerCertificate issues an HTTPS server certificate from the CA for hosts (names or
// IP addresses), for a signer that was given none: devices that trust the CA for
// /cacerts trust the server too.
func (ca *CA) ServerCertificate(hosts []string, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "deviceid-signer"},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ca.Lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key}, nil
}
