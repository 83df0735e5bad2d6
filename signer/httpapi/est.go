package httpapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/globalsign/est"
)

// EST serves Enrollment over Secure Transport (RFC 7030) for devices with
// github.com/globalsign/est, which speaks the protocol: the routes under
// /.well-known/est/ (cacerts, csrattrs, simpleenroll, simplereenroll), base64 PKCS#10
// in and base64 PKCS#7 certs-only out, and RFC 7030 §4.2.2's rule that a re-enrollment
// CSR repeats the Subject and SubjectAltName of the certificate it renews. Our CA and
// registry sit behind its CA interface (estCA): /simpleenroll is authenticated by HTTP
// Basic with the device name and a one-time enrollment code, /simplereenroll by the
// device's current, active certificate over mutual TLS (with ?supersede=true that
// certificate's key is revoked, reason "superseded", in the same write that adds the
// new one).
type EST struct {
	CA       *ca.CA
	Registry *registry.Registry
	Timeout  time.Duration // of one request; 10 s when 0
}

// Handler returns the EST routes and the PKIX-CD CA discovery route
// /.well-known/ca/<AKI as lowercase hex pairs joined by '-'>.pem.
func (e *EST) Handler() http.Handler {
	timeout := e.Timeout
	if timeout == 0 {
		timeout = requestTimeout
	}
	router, err := est.NewRouter(&est.ServerConfig{CA: estCA{e}, Timeout: timeout, CheckBasicAuth: checkBasicAuth})
	if err != nil {
		panic(err) // only for a configuration without a CA
	}
	// Only the operations offered, at their paths without an additional path segment:
	// the library keeps a CA cache entry per segment and never evicts one, so its
	// /.well-known/est/{segment}/... routes would let anybody grow the signer's memory.
	// Anything else under /.well-known/est/ is 404 before the library sees it.
	mux := http.NewServeMux()
	for _, route := range estRoutes {
		mux.Handle(route, limitBody(router))
	}
	mux.HandleFunc("GET /.well-known/ca/{file}", e.caDiscovery)
	return mux
}

// estRoutes are the EST operations the signer offers (RFC 7030 §3.2.2), without the
// optional additional path segment, which the signer does not use.
var estRoutes = []string{
	"GET /.well-known/est/cacerts",
	"GET /.well-known/est/csrattrs",
	"POST /.well-known/est/simpleenroll",
	"POST /.well-known/est/simplereenroll",
}

// limitBody answers a body over MaxBody with 413 before the EST library reads it (the
// library answers one over its own limit with 500).
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
		if err != nil {
			requestErrors.WithLabelValues(strconv.Itoa(http.StatusRequestEntityTooLarge)).Inc()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			fmt.Fprintf(w, "%d request body larger than %d bytes\n", http.StatusRequestEntityTooLarge, MaxBody)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// checkBasicAuth lets a request through the library's authentication check: a
// re-enrollment that presents a client certificate (estCA.Reenroll checks it), or an
// enrollment with a name and a code (estCA.Enroll checks and uses up the code in the
// same etcd write as the record, which a check here could not).
func checkBasicAuth(_ context.Context, r *http.Request, _, user, code string) error {
	if strings.HasSuffix(r.URL.Path, "/simplereenroll") && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return nil
	}
	if user == "" || code == "" {
		return errors.New("HTTP Basic authentication with the device name and its enrollment code is required")
	}
	return nil
}

// estCA puts the CA and the registry behind the EST library's CA interface.
type estCA struct{ *EST }

// estStatus is an error with the HTTP status the EST library answers with.
type estStatus struct {
	status int
	err    error
}

func (e estStatus) Error() string   { return e.err.Error() }
func (e estStatus) Unwrap() error   { return e.err }
func (e estStatus) StatusCode() int { return e.status }
func (e estStatus) RetryAfter() int {
	if limited, ok := errors.AsType[*registry.RateLimitError](e.err); ok {
		return int(limited.Retry.Round(time.Second) / time.Second)
	}
	return 0
}

// estFail counts and logs a refused EST request and returns its error for the library.
func estFail(status int, err error) error {
	requestErrors.WithLabelValues(strconv.Itoa(status)).Inc()
	if status >= 500 {
		slog.Error("EST request failed", "status", status, "err", err)
	}
	return estStatus{status, err}
}

// CACerts answers /cacerts with the issuing CA and the chain above it. The library
// also asks it for the CAs a re-enrolling device's certificate must chain to (and
// keeps the answer 5 minutes): there the zone's other published CAs are added, so a
// device re-enrolls across a CA rotation with the certificate of the old CA, for as
// long as the operator keeps that CA's record. The certificate must still be an active
// credential on the device's record, whichever CA issued it.
func (c estCA) CACerts(ctx context.Context, _ string, r *http.Request) ([]*x509.Certificate, error) {
	certs := append([]*x509.Certificate{c.CA.Cert}, c.CA.Chain...)
	if r == nil || !strings.HasSuffix(r.URL.Path, "/simplereenroll") {
		return certs, nil
	}
	published, err := c.Registry.CAs(ctx)
	if err != nil {
		return nil, estFail(http.StatusServiceUnavailable, err)
	}
	for _, p := range published {
		if !p.Equal(c.CA.Cert) {
			certs = append(certs, p)
		}
	}
	return certs, nil
}

func (c estCA) CSRAttrs(context.Context, string, *http.Request) (est.CSRAttrs, error) {
	return est.CSRAttrs{}, nil // no attributes required
}

func (c estCA) Enroll(ctx context.Context, csr *x509.CertificateRequest, _ string, r *http.Request) (*x509.Certificate, error) {
	device, code, _ := r.BasicAuth()
	return c.enroll(ctx, registry.Enrollment{Device: device, CSR: csr, Code: code})
}

func (c estCA) Reenroll(ctx context.Context, current *x509.Certificate, csr *x509.CertificateRequest, _ string, r *http.Request) (*x509.Certificate, error) {
	// The library has checked that current chains to one of the zone's CAs for client
	// authentication (see CACerts) and that the CSR repeats its Subject and SubjectAltName.
	device, err := c.deviceOf(current)
	if err != nil {
		return nil, estFail(http.StatusForbidden, err)
	}
	e := registry.Enrollment{Device: device, CSR: csr, Current: current}
	if r.URL.Query().Get("supersede") == "true" {
		e.Supersede = registry.SupersedeCurrent
	}
	return c.enroll(ctx, e)
}

// enroll runs the workflow and gives its errors the status EST answers with.
func (c estCA) enroll(ctx context.Context, e registry.Enrollment) (*x509.Certificate, error) {
	done, err := (&registry.Enroller{CA: c.CA, Registry: c.Registry}).Enroll(ctx, e)
	if err != nil {
		return nil, estFail(statusOf(err), err)
	}
	return done.Cert, nil
}

func (estCA) ServerKeyGen(context.Context, *x509.CertificateRequest, string, *http.Request) (*x509.Certificate, []byte, error) {
	return nil, nil, estFail(http.StatusNotImplemented, errors.New("server-side key generation is not offered: a device's key never leaves it"))
}

func (estCA) TPMEnroll(context.Context, *x509.CertificateRequest, []*x509.Certificate, []byte, []byte, string, *http.Request) ([]byte, []byte, []byte, error) {
	return nil, nil, nil, estFail(http.StatusNotImplemented, errors.New("TPM enrollment is not offered"))
}

func (e *EST) caDiscovery(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("file") != ca.DashedKeyID(e.CA.Cert.SubjectKeyId)+".pem" {
		http.Error(w, "no such CA", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(e.CA.PEM())
}

// deviceOf returns the device a certificate of this CA names in its SAN.
func (e *EST) deviceOf(cert *x509.Certificate) (string, error) {
	suffix := "." + record.DeviceLabel + "." + strings.TrimSuffix(e.CA.Zone, ".")
	for _, n := range cert.DNSNames {
		if device, ok := strings.CutSuffix(strings.ToLower(n), suffix); ok {
			return record.DeviceName(device)
		}
	}
	return "", errors.New("the client certificate names no device of this zone")
}
