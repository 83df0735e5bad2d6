package signer

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/deviceid/deviceid/plugin/record"

	"github.com/smallstep/pkcs7"
)

// EST serves Enrollment over Secure Transport (RFC 7030) for devices:
// /.well-known/est/cacerts, /csrattrs, /simpleenroll (HTTP Basic: the device name and
// a one-time enrollment code) and /simplereenroll (the device's current certificate
// over mutual TLS; with ?supersede=true that certificate's key is revoked, reason
// "superseded", in the same write that adds the new one). The protocol's parts are few (base64 PKCS#10 in, base64 PKCS#7
// certs-only out), and the PKCS#7 encoding comes from a maintained library.
type EST struct {
	CA       *CA
	Registry *Registry
	Timeout  time.Duration // of one request's etcd work; 10 s when 0
}

// Handler returns the EST routes and the PKIX-CD CA discovery route
// /.well-known/ca/<AKI as lowercase hex pairs joined by '-'>.pem.
func (e *EST) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/est/cacerts", e.cacerts)
	mux.HandleFunc("GET /.well-known/est/csrattrs", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent) // no attributes required
	})
	mux.HandleFunc("POST /.well-known/est/simpleenroll", e.simpleenroll)
	mux.HandleFunc("POST /.well-known/est/simplereenroll", e.simplereenroll)
	mux.HandleFunc("GET /.well-known/ca/{file}", e.caDiscovery)
	return mux
}

func (e *EST) context(r *http.Request) (context.Context, context.CancelFunc) {
	t := e.Timeout
	if t == 0 {
		t = requestTimeout
	}
	return context.WithTimeout(r.Context(), t)
}

func (e *EST) cacerts(w http.ResponseWriter, _ *http.Request) {
	der := append([]byte(nil), e.CA.Cert.Raw...)
	for _, c := range e.CA.Chain {
		der = append(der, c.Raw...)
	}
	writeCerts(w, der) // the issuing CA and the chain above it
}

func (e *EST) caDiscovery(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("file") != DashedKeyID(e.CA.Cert.SubjectKeyId)+".pem" {
		http.Error(w, "no such CA", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(e.CA.PEM())
}

// DashedKeyID writes a key identifier as PKIX-CD's URL does: lowercase hex pairs
// joined by '-'.
func DashedKeyID(id []byte) string {
	parts := make([]string, len(id))
	for i, b := range id {
		parts[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(parts, "-")
}

func (e *EST) simpleenroll(w http.ResponseWriter, r *http.Request) {
	device, code, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="deviceid enrollment"`)
		estError(w, http.StatusUnauthorized, errors.New("HTTP Basic authentication with the device name and its enrollment code is required"))
		return
	}
	csr, ok := readCSR(w, r)
	if !ok {
		return
	}
	if _, err := record.DeviceOwner(device, e.CA.Zone); err != nil {
		estError(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := e.context(r)
	defer cancel()
	certDER, err := e.Registry.EnrollWithCode(ctx, device, code, csr.RawSubjectPublicKeyInfo, func() (record.Credential, error) {
		cert, err := e.CA.Issue(device, csr.PublicKey, time.Now())
		if err != nil {
			return record.Credential{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return record.Credential{Cert: cert.Raw}, nil
	})
	switch {
	case errors.Is(err, ErrBadCode):
		estError(w, http.StatusUnauthorized, err)
		return
	case err != nil:
		estError(w, statusOf(err), err)
		return
	}
	enrollments.Inc()
	slog.Info("enrolled over EST", "device", device, "with", "code")
	writeCerts(w, certDER)
}

func (e *EST) simplereenroll(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		estError(w, http.StatusUnauthorized, errors.New("re-enrollment needs the device's current certificate over mutual TLS"))
		return
	}
	current := r.TLS.PeerCertificates[0]
	pool := x509.NewCertPool()
	pool.AddCert(e.CA.Cert)
	if _, err := current.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		estError(w, http.StatusUnauthorized, fmt.Errorf("client certificate: %v", err))
		return
	}
	device, err := e.deviceOf(current)
	if err != nil {
		estError(w, http.StatusUnauthorized, err)
		return
	}
	csr, ok := readCSR(w, r)
	if !ok {
		return
	}
	ctx, cancel := e.context(r)
	defer cancel()
	// The certificate must still be an active credential of the device: a revoked
	// or deleted device cannot renew itself back.
	d, _, err := e.Registry.Get(ctx, device)
	if err != nil {
		estError(w, statusOf(err), err)
		return
	}
	active := false
	for _, c := range d.Credentials {
		if c.Status == record.StatusActive && string(c.Cert) == string(current.Raw) {
			active = true
		}
	}
	if !active {
		estError(w, http.StatusUnauthorized, errors.New("the client certificate is not an active credential of its device"))
		return
	}
	// A retry whose answer was lost gets the certificate already on record for the key.
	if existing := e.Registry.ActiveCert(ctx, device, csr.RawSubjectPublicKeyInfo); existing != nil {
		writeCerts(w, existing)
		return
	}
	var supersede [][]byte
	if r.URL.Query().Get("supersede") == "true" {
		supersede = append(supersede, current.RawSubjectPublicKeyInfo)
	}
	e.issue(ctx, w, device, csr, supersede...)
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

// issue makes the certificate, writes its record, and only then returns it.
func (e *EST) issue(ctx context.Context, w http.ResponseWriter, device string, csr *x509.CertificateRequest, supersede ...[]byte) {
	cert, err := e.CA.Issue(device, csr.PublicKey, time.Now())
	if err != nil {
		estError(w, http.StatusBadRequest, err)
		return
	}
	if _, err := e.Registry.Enroll(ctx, device, record.Credential{Cert: cert.Raw}, supersede...); err != nil {
		estError(w, statusOf(err), err)
		return
	}
	enrollments.Inc()
	slog.Info("enrolled over EST", "device", device, "serial", cert.SerialNumber.Text(16), "superseded_keys", len(supersede))
	writeCerts(w, cert.Raw)
}

// readCSR reads a base64 PKCS#10 body (RFC 7030 §4.2.1) and checks it.
func readCSR(w http.ResponseWriter, r *http.Request) (*x509.CertificateRequest, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		estError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", MaxBody))
		return nil, false
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil {
		estError(w, http.StatusBadRequest, errors.New("the body is not base64"))
		return nil, false
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		estError(w, http.StatusBadRequest, fmt.Errorf("CSR: %v", err))
		return nil, false
	}
	if err := CheckCSR(csr); err != nil {
		estError(w, http.StatusBadRequest, err)
		return nil, false
	}
	return csr, true
}

// writeCerts answers with a base64 PKCS#7 certs-only structure (RFC 7030 §4.1.3).
func writeCerts(w http.ResponseWriter, der []byte) {
	p7, err := pkcs7.DegenerateCertificate(der)
	if err != nil {
		estError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	w.Write(base64Lines(p7))
}

// base64Lines encodes b as MIME base64 (RFC 2045 §6.8): lines of 64 characters ended
// by CRLF, which line-oriented decoders such as openssl's need.
func base64Lines(b []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(b)
	var out []byte
	for len(enc) > 64 {
		out = append(append(out, enc[:64]...), '\r', '\n')
		enc = enc[64:]
	}
	return append(append(out, enc...), '\r', '\n')
}

// estError answers with a JSON error, as the admin API does.
func estError(w http.ResponseWriter, status int, err error) { writeError(w, status, err) }
