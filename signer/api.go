package signer

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"
)

// MaxBody bounds the body of an API request; a CSR or a public key is a few KB.
const MaxBody = 64 << 10

// requestTimeout bounds the etcd work of one API request.
const requestTimeout = 10 * time.Second

// API is the admin JSON API for provisioning systems (docs/design.md): enroll, revoke,
// get, list and delete devices, and issue enrollment codes. Every request must carry
// the bearer token, or come over mutual TLS with a client certificate from AdminCAs.
type API struct {
	CA       *CA
	Registry *Registry
	Token    string
	AdminCAs *x509.CertPool // CAs of provisioning systems' client certificates; nil: bearer token only
	Timeout  time.Duration  // of one request's etcd work; 10 s when 0
}

func (a *API) context(r *http.Request) (context.Context, context.CancelFunc) {
	t := a.Timeout
	if t == 0 {
		t = requestTimeout
	}
	return context.WithTimeout(r.Context(), t)
}

// Handler returns the API's routes under /api/v1/.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/devices/{name}/enroll", a.enroll)
	mux.HandleFunc("POST /api/v1/devices/{name}/revoke", a.revoke)
	mux.HandleFunc("GET /api/v1/devices/{name}", a.get)
	mux.HandleFunc("DELETE /api/v1/devices/{name}", a.delete)
	mux.HandleFunc("GET /api/v1/devices", a.list)
	mux.HandleFunc("POST /api/v1/devices/{name}/code", a.code)
	return a.authenticate(mux)
}

func (a *API) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.tokenOK(r) && !a.clientCertOK(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="deviceid"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token, and no admin client certificate"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		next.ServeHTTP(w, r)
	})
}

func (a *API) tokenOK(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && a.Token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(a.Token)) == 1
}

func (a *API) clientCertOK(r *http.Request) bool {
	if a.AdminCAs == nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := r.TLS.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: a.AdminCAs, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// EnrollRequest enrolls a device with a CSR (PEM, or base64 DER) or, for a device
// that has no certificate, a bare public key (PEM, or base64 DER SubjectPublicKeyInfo).
type EnrollRequest struct {
	CSR       string `json:"csr,omitempty"`
	PublicKey string `json:"public_key,omitempty"`
	// Supersede revokes the device's other active keys (reason "superseded") in the
	// same write; otherwise they stay until they expire.
	Supersede bool `json:"supersede,omitempty"`
}

// EnrollResponse is the device's record after enrollment, with the new certificate.
type EnrollResponse struct {
	Certificate string         `json:"certificate,omitempty"` // PEM
	Device      *record.Device `json:"device"`
}

// RevokeRequest revokes the credential whose key has the SHA-256 SPKI digest (as in
// its 3 1 1 record, hex), or all of the device's credentials when it is empty.
type RevokeRequest struct {
	SPKISHA256 string `json:"spki_sha256,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// CodeResponse carries a one-time enrollment code for EST's /simpleenroll.
type CodeResponse struct {
	Code    string    `json:"code"`
	Expires time.Time `json:"expires"`
}

// ListResponse is one page of device names.
type ListResponse struct {
	Devices []string `json:"devices"`
	Next    string   `json:"next,omitempty"`
}

func (a *API) enroll(w http.ResponseWriter, r *http.Request) {
	var req EnrollRequest
	if !readJSON(w, r, &req) {
		return
	}
	e := Enrollment{Device: r.PathValue("name")}
	if req.Supersede {
		e.Supersede = SupersedeOthers
	}
	var err error
	if e.CSR, e.PublicKey, err = req.Decode(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := a.context(r)
	defer cancel()
	done, err := (&Enroller{CA: a.CA, Registry: a.Registry}).Enroll(ctx, e)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	resp, status := EnrollResponse{Device: done.Device}, http.StatusCreated
	if done.Again {
		status = http.StatusOK
	}
	if done.Cert != nil {
		resp.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: done.Cert.Raw}))
	}
	writeJSON(w, status, resp)
}

// Decode parses the request's CSR or public key.
func (req EnrollRequest) Decode() (*x509.CertificateRequest, crypto.PublicKey, error) {
	switch {
	case req.CSR != "" && req.PublicKey != "":
		return nil, nil, errors.New("give either csr or public_key, not both")
	case req.CSR != "":
		der, err := decodePEMOrBase64(req.CSR, "CERTIFICATE REQUEST")
		if err != nil {
			return nil, nil, fmt.Errorf("csr: %v", err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, nil, fmt.Errorf("csr: %v", err)
		}
		return csr, nil, nil
	case req.PublicKey != "":
		der, err := decodePEMOrBase64(req.PublicKey, "PUBLIC KEY")
		if err != nil {
			return nil, nil, fmt.Errorf("public_key: %v", err)
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return nil, nil, fmt.Errorf("public_key: %v", err)
		}
		return nil, pub, nil
	}
	return nil, nil, errors.New("give csr or public_key")
}

func (a *API) revoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeRequest
	if !readJSON(w, r, &req) {
		return
	}
	spki, err := req.Digest()
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := a.context(r)
	defer cancel()
	d, err := a.Registry.Revoke(ctx, r.PathValue("name"), spki, req.Reason, time.Now())
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	slog.Info("revoked", "device", r.PathValue("name"), "all_keys", spki == nil, "reason", req.Reason)
	writeJSON(w, http.StatusOK, d)
}

// Digest decodes the key's SHA-256 digest; nil when the request names no key.
func (req RevokeRequest) Digest() ([]byte, error) {
	if req.SPKISHA256 == "" {
		return nil, nil
	}
	want, err := hex.DecodeString(req.SPKISHA256)
	if err != nil || len(want) != sha256.Size {
		return nil, errors.New("spki_sha256 is not 64 hex digits")
	}
	return want, nil
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.context(r)
	defer cancel()
	d, _, err := a.Registry.Get(ctx, r.PathValue("name"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *API) delete(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.context(r)
	defer cancel()
	if err := a.Registry.Delete(ctx, r.PathValue("name")); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.context(r)
	defer cancel()
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, errors.New("limit is not a number from 1 to 1000"))
			return
		}
		limit = n
	}
	names, next, err := a.Registry.List(ctx, r.URL.Query().Get("after"), limit)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, ListResponse{Devices: names, Next: next})
}

func (a *API) code(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.context(r)
	defer cancel()
	code, err := a.Registry.IssueCode(ctx, r.PathValue("name"), DefaultCodeLifetime)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, CodeResponse{Code: code, Expires: time.Now().Add(DefaultCodeLifetime).UTC()})
}

// decodePEMOrBase64 accepts one PEM block of the given type, or base64 DER.
func decodePEMOrBase64(s, pemType string) ([]byte, error) {
	if b, rest := pem.Decode([]byte(s)); b != nil {
		if b.Type != pemType || strings.TrimSpace(string(rest)) != "" {
			return nil, fmt.Errorf("want one PEM block of type %q", pemType)
		}
		return b.Bytes, nil
	}
	der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("neither PEM nor base64")
	}
	return der, nil
}

// readJSON decodes the request body into v, refusing unknown fields and trailing
// data; on failure it writes the error and returns false.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON object")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", MaxBody))
	} else {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bad JSON: %v", err))
	}
	return false
}

// statusOf maps an error of the registry to an HTTP status: what the caller got
// wrong is 4xx; anything else means etcd could not be reached or kept changing: 503,
// and nothing was written (every write is one transaction).
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNoSuchKey):
		return http.StatusNotFound
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrBadCode):
		return http.StatusUnauthorized
	case errors.Is(err, ErrNotActive):
		return http.StatusForbidden
	case errors.Is(err, ErrRevokedKey):
		return http.StatusConflict
	case errors.Is(err, errStoredInvalid):
		return http.StatusInternalServerError
	}
	return http.StatusServiceUnavailable
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	requestErrors.WithLabelValues(strconv.Itoa(status)).Inc()
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
