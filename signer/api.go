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
	"io"
	"log/slog"
	"mime"
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

// API is the admin JSON API (docs/api.md, its OpenAPI document at
// /api/v1/openapi.json) for the registry operator and its tenants. The operator
// authenticates with the admin bearer token or a client certificate from AdminCAs;
// a tenant with one of its tokens or a client certificate from TenantCAs whose
// Subject Organization names it.
type API struct {
	CA         *CA
	Registry   *Registry
	Token      string         // the operator's bearer token; "" for none
	OperatorID string         // the audit trail's name for the operator's token; "operator" when ""
	AdminCAs   *x509.CertPool // CAs of the operator's client certificates; nil for none
	TenantCAs  *x509.CertPool // CAs of tenants' client certificates (O = tenant); nil for none
	DNS        string         // host:port of a CoreDNS serving the zone, for the records DNS serves now
	Timeout    time.Duration  // of one request's etcd work; 10 s when 0
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
	for _, rt := range routes {
		mux.Handle(rt.method+" "+rt.path, a.authenticate(rt))
	}
	doc := OpenAPIDocument()
	mux.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	return secureHeaders(mux)
}

// secureHeaders sets the headers that keep a browser from sniffing, framing or
// leaking what the signer serves.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Strict-Transport-Security", "max-age=31536000") // served over HTTPS only
		next.ServeHTTP(w, r)
	})
}

// authenticate finds the request's actor and runs the route for it. A body must be
// JSON (Content-Type application/json): a browser cannot send that across sites
// without the API's consent, and the API gives none (no CORS), so no other site's
// page can make a signed-in console's browser change anything.
func (a *API) authenticate(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := a.context(r)
		defer cancel()
		actor, status, err := a.actor(ctx, r)
		if err != nil {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="deviceid"`)
			}
			writeError(w, status, err)
			return
		}
		if rt.operator && !actor.Operator {
			writeError(w, http.StatusForbidden, errors.New("only the registry operator may do this"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// An empty body needs the header too when a client certificate authenticated
			// the request: a browser sends the certificate to any site's form.
			ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if ct != "application/json" && (r.ContentLength != 0 || actor.byCertificate) {
				writeError(w, http.StatusUnsupportedMediaType, errors.New("the request must be JSON (Content-Type: application/json), even with an empty body when authenticated by a client certificate"))
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		rt.handle(&apiCall{api: a, w: w, r: r, ctx: ctx, actor: actor})
	})
}

// actor authenticates a request: the operator's token, a tenant's token, or a client
// certificate of the operator or of a tenant.
func (a *API) actor(ctx context.Context, r *http.Request) (Actor, int, error) {
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if a.Token != "" && subtle.ConstantTimeCompare([]byte(bearer), []byte(a.Token)) == 1 {
			id := a.OperatorID
			if id == "" {
				id = "operator"
			}
			return OperatorActor(id), 0, nil
		}
		actor, err := a.Registry.Authenticate(ctx, bearer)
		switch {
		case err == nil:
			return actor, 0, nil
		case errors.Is(err, ErrTenantDisabled):
			return Actor{}, http.StatusForbidden, err
		case errors.Is(err, ErrBadToken), errors.Is(err, ErrNoTenant):
			return Actor{}, http.StatusUnauthorized, ErrBadToken
		}
		return Actor{}, http.StatusServiceUnavailable, err
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert := r.TLS.PeerCertificates[0]
		subject := "cert:" + cert.Subject.String()
		if verified(a.AdminCAs, r.TLS.PeerCertificates) {
			actor := OperatorActor(subject)
			actor.byCertificate = true
			return actor, 0, nil
		}
		if verified(a.TenantCAs, r.TLS.PeerCertificates) && len(cert.Subject.Organization) == 1 {
			tenant := cert.Subject.Organization[0]
			if err := a.Registry.TenantEnabled(ctx, tenant); err != nil {
				if errors.Is(err, ErrTenantDisabled) {
					return Actor{}, http.StatusForbidden, err
				}
				return Actor{}, http.StatusUnauthorized, fmt.Errorf("the client certificate's organization names no tenant: %w", err)
			}
			return Actor{ID: subject, Tenant: tenant, byCertificate: true}, 0, nil
		}
	}
	return Actor{}, http.StatusUnauthorized, errors.New("missing or wrong bearer token, and no admin or tenant client certificate")
}

// verified reports whether chain's leaf chains to roots for client authentication.
func verified(roots *x509.CertPool, chain []*x509.Certificate) bool {
	if roots == nil {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// call is one authenticated request.
type apiCall struct {
	api   *API
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context
	actor Actor
}

func (c *apiCall) reg() *Registry        { return c.api.Registry }
func (c *apiCall) name() string          { return c.r.PathValue("name") }
func (c *apiCall) query(k string) string { return c.r.URL.Query().Get(k) }

// read decodes the JSON body into v; an empty body is an empty object.
func (c *apiCall) read(v any) bool { return readJSON(c.w, c.r, v) }

// reply writes v with status, or the error's status.
func (c *apiCall) reply(status int, v any, err error) {
	if err != nil {
		setRetryAfter(c.w, err)
		writeError(c.w, statusOf(err), err)
		return
	}
	if v == nil {
		c.w.WriteHeader(status)
		return
	}
	writeJSON(c.w, status, v)
}

// Requests and answers of the API.
type (
	// EnrollRequest enrolls a device with a CSR (PEM, or base64 DER) or, for a device
	// that has no certificate, a bare public key (PEM, or base64 DER SubjectPublicKeyInfo).
	EnrollRequest struct {
		CSR       string `json:"csr,omitempty"`
		PublicKey string `json:"public_key,omitempty"`
		// Supersede revokes the device's other active keys (reason "superseded") in the
		// same write; otherwise they stay until they expire.
		Supersede bool `json:"supersede,omitempty"`
		// Tenant registers a new device for this tenant (the operator only).
		Tenant string `json:"tenant,omitempty"`
		// Attributes, when given, replace the device's attributes in the same write.
		Attributes map[string]string `json:"attributes,omitempty"`
	}
	// EnrollResponse is the device's record after enrollment, with the new certificate.
	EnrollResponse struct {
		Certificate string     `json:"certificate,omitempty"` // PEM
		Device      DeviceView `json:"device"`
	}
	// RevokeRequest revokes the credential whose key has the SHA-256 SPKI digest (as in
	// its 3 1 1 record, hex), or all of the device's credentials when it is empty.
	RevokeRequest struct {
		SPKISHA256 string `json:"spki_sha256,omitempty"`
		Reason     string `json:"reason,omitempty"`
	}
	// RegisterRequest reserves a name for a tenant (the caller's own; the operator names one).
	RegisterRequest struct {
		Tenant     string            `json:"tenant,omitempty"`
		Attributes map[string]string `json:"attributes,omitempty"`
	}
	// CodeRequest asks for an enrollment code; Tenant registers a new device for it (the operator only).
	CodeRequest struct {
		Tenant string `json:"tenant,omitempty"`
	}
	// CodeResponse carries a one-time code: an enrollment code for EST's
	// /simpleenroll, or a transfer code for the gaining tenant.
	CodeResponse struct {
		Code    string    `json:"code"`
		Expires time.Time `json:"expires"`
	}
	// AttributesRequest replaces a device's attributes.
	AttributesRequest struct {
		Attributes map[string]string `json:"attributes"`
	}
	// AcceptRequest completes a transfer with the code of the losing tenant.
	AcceptRequest struct {
		Code     string `json:"code"`
		KeepKeys bool   `json:"keep_keys,omitempty"`
		Tenant   string `json:"tenant,omitempty"` // the gaining tenant, when the operator accepts
	}
	// AssignRequest gives a device to a tenant by the operator's decision.
	AssignRequest struct {
		Tenant   string `json:"tenant"`
		KeepKeys bool   `json:"keep_keys,omitempty"`
	}
	// ListResponse is one page of devices.
	ListResponse struct {
		Devices []DeviceSummary `json:"devices"`
		Next    string          `json:"next,omitempty"`
	}
	// DeviceSummary is one device in a list.
	DeviceSummary struct {
		Name       string            `json:"name"`
		Tenant     string            `json:"tenant,omitempty"`
		State      string            `json:"state"`
		Attributes map[string]string `json:"attributes,omitempty"`
		Active     int               `json:"active_keys"`
		Revoked    int               `json:"revoked_keys"`
		Invalid    string            `json:"invalid,omitempty"` // why the stored record is invalid
	}
	// DeviceView is a device's record with its name and its keys' digests.
	DeviceView struct {
		Name string `json:"name"`
		record.Device
		Keys []KeyView `json:"keys"`
	}
	// KeyView is one credential as DNS publishes it.
	KeyView struct {
		SPKISHA256 string     `json:"spki_sha256"`
		Status     string     `json:"status"`
		NotAfter   *time.Time `json:"not_after"`
		Reason     string     `json:"reason,omitempty"`
		Cert       bool       `json:"certificate"`
	}
	// TenantRequest creates a tenant.
	TenantRequest struct {
		Name string `json:"name"`
	}
	// TenantList lists tenants.
	TenantList struct {
		Tenants []Tenant `json:"tenants"`
	}
	// TokenRequest issues a tenant token.
	TokenRequest struct {
		Label string `json:"label,omitempty"`
	}
	// TokenList lists a tenant's tokens (never their secrets).
	TokenList struct {
		Tokens []Token `json:"tokens"`
	}
	// AuditResponse is one page of the audit trail.
	AuditResponse struct {
		Entries []AuditEntry `json:"entries"`
		Next    string       `json:"next,omitempty"`
	}
	// WhoAmI says who the credentials of the request belong to.
	WhoAmI struct {
		Actor    string `json:"actor"`
		Tenant   string `json:"tenant,omitempty"`
		Operator bool   `json:"operator"`
	}
	// ErrorResponse is every error's body.
	ErrorResponse struct {
		Error string `json:"error"`
	}
)

// view is a device's record as the API shows it.
func view(name string, d *record.Device) DeviceView {
	v := DeviceView{Name: name, Device: *d, Keys: []KeyView{}}
	if v.Credentials == nil {
		v.Credentials = []record.Credential{}
	}
	for _, c := range d.Credentials {
		v.Keys = append(v.Keys, KeyView{SPKISHA256: keyDigest(c.SPKI), Status: c.Status, NotAfter: c.NotAfter, Reason: c.Reason, Cert: c.Cert != nil})
	}
	return v
}

// deviceReply answers with a device's view.
func (c *apiCall) deviceReply(status int, d *record.Device, err error) {
	if err == nil && d == nil {
		err = ErrNotFound
	}
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.DeviceName(c.name())
	c.reply(status, view(name, d), nil)
}

func summaryOf(e Entry) DeviceSummary {
	s := DeviceSummary{Name: e.Name, State: record.StateActive}
	if e.Err != nil {
		s.Invalid = e.Err.Error()
		return s
	}
	sum := summarize(e.Device)
	s.Tenant, s.State, s.Attributes, s.Active, s.Revoked = sum.Tenant, sum.State, e.Device.Attributes, sum.Active, sum.Revoked
	return s
}

func (c *apiCall) enroll() {
	var req EnrollRequest
	if !c.read(&req) {
		return
	}
	e := Enrollment{Device: c.name(), Actor: c.actor, Tenant: req.Tenant, Attributes: req.Attributes}
	if req.Supersede {
		e.Supersede = SupersedeOthers
	}
	var err error
	if e.CSR, e.PublicKey, err = req.Decode(); err != nil {
		c.reply(0, nil, invalid(err))
		return
	}
	done, err := (&Enroller{CA: c.api.CA, Registry: c.reg()}).Enroll(c.ctx, e)
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.DeviceName(c.name())
	resp, status := EnrollResponse{Device: view(name, done.Device)}, http.StatusCreated
	if done.Again {
		status = http.StatusOK
	}
	if done.Cert != nil {
		resp.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: done.Cert.Raw}))
	}
	c.reply(status, resp, nil)
}

// revokeRequest reads a RevokeRequest and its key digest; on failure it has answered.
func (c *apiCall) revokeRequest() (RevokeRequest, []byte, bool) {
	var req RevokeRequest
	if !c.read(&req) {
		return req, nil, false
	}
	spki, err := req.Digest()
	if err != nil {
		c.reply(0, nil, invalid(err))
		return req, nil, false
	}
	return req, spki, true
}

func (c *apiCall) revoke() {
	req, spki, ok := c.revokeRequest()
	if !ok {
		return
	}
	d, err := c.reg().Revoke(c.ctx, c.actor, c.name(), spki, req.Reason)
	if err == nil {
		slog.Info("revoked", "device", c.name(), "all_keys", spki == nil, "reason", req.Reason, "actor", c.actor.ID)
	}
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) register() {
	var req RegisterRequest
	if !c.read(&req) {
		return
	}
	d, err := c.reg().Register(c.ctx, c.actor, c.name(), req.Tenant, req.Attributes)
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) get() {
	d, _, err := c.reg().Get(c.ctx, c.name())
	if err == nil && !c.actor.sees(d.Tenant) {
		err = ErrNotFound
	}
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) delete() {
	c.reply(http.StatusNoContent, nil, c.reg().Delete(c.ctx, c.actor, c.name()))
}

func (c *apiCall) suspend() {
	d, err := c.reg().SetSuspended(c.ctx, c.actor, c.name(), true)
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) resume() {
	d, err := c.reg().SetSuspended(c.ctx, c.actor, c.name(), false)
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) attributes() {
	var req AttributesRequest
	if !c.read(&req) {
		return
	}
	d, err := c.reg().SetAttributes(c.ctx, c.actor, c.name(), req.Attributes)
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) code() {
	var req CodeRequest
	if !c.read(&req) {
		return
	}
	code, expires, err := c.reg().IssueCode(c.ctx, c.actor, c.name(), req.Tenant, DefaultCodeLifetime)
	c.reply(http.StatusCreated, CodeResponse{Code: code, Expires: expires}, err)
}

func (c *apiCall) startTransfer() {
	code, expires, err := c.reg().StartTransfer(c.ctx, c.actor, c.name(), DefaultTransferLifetime)
	c.reply(http.StatusCreated, CodeResponse{Code: code, Expires: expires}, err)
}

func (c *apiCall) cancelTransfer() {
	c.reply(http.StatusNoContent, nil, c.reg().CancelTransfer(c.ctx, c.actor, c.name()))
}

func (c *apiCall) acceptTransfer() {
	var req AcceptRequest
	if !c.read(&req) {
		return
	}
	if req.Code == "" {
		c.reply(0, nil, invalid(errors.New("give the transfer code")))
		return
	}
	d, err := c.reg().AcceptTransfer(c.ctx, c.actor, c.name(), req.Tenant, req.Code, req.KeepKeys)
	c.deviceReply(http.StatusOK, d, err)
}

func (c *apiCall) assign() {
	var req AssignRequest
	if !c.read(&req) {
		return
	}
	d, err := c.reg().Assign(c.ctx, c.actor, c.name(), req.Tenant, req.KeepKeys)
	c.deviceReply(http.StatusOK, d, err)
}

// filter reads a list's filters from the query: tenant, state, prefix, after, limit,
// and attr=key=value (repeatable).
func (c *apiCall) filter() (Filter, error) {
	q := c.r.URL.Query()
	f := Filter{Tenant: q.Get("tenant"), State: q.Get("state"), Prefix: strings.ToLower(q.Get("prefix")), After: q.Get("after")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return f, invalid(errors.New("limit is not a number from 1 to 1000"))
		}
		f.Limit = n
	}
	for _, kv := range q["attr"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return f, invalid(fmt.Errorf("attr %q: want key=value", kv))
		}
		if f.Attributes == nil {
			f.Attributes = map[string]string{}
		}
		f.Attributes[k] = v
	}
	if !c.actor.Operator && f.Tenant != "" && f.Tenant != c.actor.Tenant {
		return f, fmt.Errorf("%w %q", ErrNoTenant, f.Tenant)
	}
	return f, f.Check()
}

func (c *apiCall) list() {
	f, err := c.filter()
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	entries, next, err := c.reg().Search(c.ctx, c.actor, f)
	resp := ListResponse{Devices: []DeviceSummary{}, Next: next}
	for _, e := range entries {
		resp.Devices = append(resp.Devices, summaryOf(e))
	}
	c.reply(http.StatusOK, resp, err)
}

// ExportLine is one device in an export: its name and record (JSON lines).
type ExportLine struct {
	Name string `json:"name"`
	record.Device
}

func (c *apiCall) export() {
	f, err := c.filter()
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	c.w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(c.w)
	started := false
	err = c.reg().Export(context.WithoutCancel(c.r.Context()), c.actor, f, func(e Entry) error {
		started = true
		if e.Device == nil {
			return nil // invalid records are listed, not exported
		}
		return enc.Encode(ExportLine{Name: e.Name, Device: *e.Device})
	})
	if err != nil && !started {
		c.reply(0, nil, err)
	} else if err != nil {
		slog.Error("export cut short", "err", err) // the client sees a truncated stream
	}
}

func (c *apiCall) audit() {
	f := AuditFilter{Device: c.query("device"), Tenant: c.query("tenant"), Operation: c.query("operation"), Actor: c.query("actor"), After: c.query("after")}
	if s := c.query("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			c.reply(0, nil, invalid(errors.New("limit is not a number from 1 to 1000")))
			return
		}
		f.Limit = n
	}
	entries, next, err := c.reg().Audit(c.ctx, c.actor, f)
	c.reply(http.StatusOK, AuditResponse{Entries: entries, Next: next}, err)
}

func (c *apiCall) createTenant() {
	var req TenantRequest
	if !c.read(&req) {
		return
	}
	t, err := c.reg().CreateTenant(c.ctx, c.actor, req.Name)
	c.reply(http.StatusCreated, t, err)
}

func (c *apiCall) tenants() {
	ts, err := c.reg().Tenants(c.ctx, c.actor)
	c.reply(http.StatusOK, TenantList{Tenants: ts}, err)
}

func (c *apiCall) tenant() {
	name := c.r.PathValue("tenant")
	if !c.actor.sees(name) {
		c.reply(0, nil, fmt.Errorf("%w %q", ErrNoTenant, name))
		return
	}
	t, _, err := c.reg().Tenant(c.ctx, name)
	c.reply(http.StatusOK, t, err)
}

func (c *apiCall) disableTenant() {
	t, err := c.reg().SetTenantDisabled(c.ctx, c.actor, c.r.PathValue("tenant"), true)
	c.reply(http.StatusOK, t, err)
}

func (c *apiCall) enableTenant() {
	t, err := c.reg().SetTenantDisabled(c.ctx, c.actor, c.r.PathValue("tenant"), false)
	c.reply(http.StatusOK, t, err)
}

func (c *apiCall) deleteTenant() {
	c.reply(http.StatusNoContent, nil, c.reg().DeleteTenant(c.ctx, c.actor, c.r.PathValue("tenant")))
}

func (c *apiCall) issueToken() {
	var req TokenRequest
	if !c.read(&req) {
		return
	}
	t, err := c.reg().IssueToken(c.ctx, c.actor, c.r.PathValue("tenant"), req.Label)
	c.reply(http.StatusCreated, t, err)
}

func (c *apiCall) listTokens() {
	ts, err := c.reg().Tokens(c.ctx, c.actor, c.r.PathValue("tenant"))
	c.reply(http.StatusOK, TokenList{Tokens: ts}, err)
}

func (c *apiCall) revokeToken() {
	c.reply(http.StatusNoContent, nil, c.reg().RevokeToken(c.ctx, c.actor, c.r.PathValue("tenant"), c.r.PathValue("id")))
}

func (c *apiCall) whoami() {
	c.reply(http.StatusOK, WhoAmI{Actor: c.actor.ID, Tenant: c.actor.Tenant, Operator: c.actor.Operator}, nil)
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
	if err == io.EOF {
		return true // no body: the request's defaults
	}
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
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNoSuchKey), errors.Is(err, ErrNoTenant), errors.Is(err, ErrNoService):
		return http.StatusNotFound
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrBadTransferCode):
		return http.StatusForbidden
	case errors.Is(err, ErrConflict), errors.Is(err, ErrTenantDisabled):
		return http.StatusConflict
	case errors.Is(err, ErrBadToken):
		return http.StatusUnauthorized
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
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

// setRetryAfter tells a client refused by a quota when to try again.
func setRetryAfter(w http.ResponseWriter, err error) {
	if limited, ok := errors.AsType[*RateLimitError](err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(limited.Retry.Round(time.Second)/time.Second)))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	requestErrors.WithLabelValues(strconv.Itoa(status)).Inc()
	writeJSON(w, status, ErrorResponse{Error: err.Error()})
}
