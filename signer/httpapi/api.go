package httpapi

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
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
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"
)

// MaxBody bounds the body of an API or EST request: what the registry takes in one write.
const MaxBody = registry.MaxWrite

// requestTimeout bounds the etcd work of one API request.
const requestTimeout = 10 * time.Second

// API is the admin JSON API (docs/api.md, its OpenAPI document at
// /api/v1/openapi.json) for the registry operator and its tenants. The operator
// authenticates with the admin bearer token or a client certificate from AdminCAs;
// a tenant with one of its tokens or a client certificate from TenantCAs whose
// Subject Organization names it.
type API struct {
	CA         *ca.CA
	Registry   *registry.Registry
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
			if ct != "application/json" && (r.ContentLength != 0 || actor.ByCertificate) {
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
func (a *API) actor(ctx context.Context, r *http.Request) (registry.Actor, int, error) {
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if a.Token != "" && subtle.ConstantTimeCompare([]byte(bearer), []byte(a.Token)) == 1 {
			id := a.OperatorID
			if id == "" {
				id = "operator"
			}
			return registry.OperatorActor(id), 0, nil
		}
		actor, err := a.Registry.Authenticate(ctx, bearer)
		switch {
		case err == nil:
			return actor, 0, nil
		case errors.Is(err, registry.ErrTenantDisabled):
			return registry.Actor{}, http.StatusForbidden, err
		case errors.Is(err, registry.ErrBadToken), errors.Is(err, registry.ErrNoTenant):
			return registry.Actor{}, http.StatusUnauthorized, registry.ErrBadToken
		}
		return registry.Actor{}, http.StatusServiceUnavailable, err
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert := r.TLS.PeerCertificates[0]
		subject := "cert:" + cert.Subject.String()
		if verified(a.AdminCAs, r.TLS.PeerCertificates) {
			actor := registry.OperatorActor(subject)
			actor.ByCertificate = true
			return actor, 0, nil
		}
		if verified(a.TenantCAs, r.TLS.PeerCertificates) && len(cert.Subject.Organization) == 1 {
			tenant := cert.Subject.Organization[0]
			if err := a.Registry.TenantEnabled(ctx, tenant); err != nil {
				if errors.Is(err, registry.ErrTenantDisabled) {
					return registry.Actor{}, http.StatusForbidden, err
				}
				return registry.Actor{}, http.StatusUnauthorized, fmt.Errorf("the client certificate's organization names no tenant: %w", err)
			}
			return registry.Actor{ID: subject, Tenant: tenant, ByCertificate: true}, 0, nil
		}
	}
	return registry.Actor{}, http.StatusUnauthorized, errors.New("missing or wrong bearer token, and no admin or tenant client certificate")
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
	actor registry.Actor
}

func (c *apiCall) reg() *registry.Registry { return c.api.Registry }
func (c *apiCall) name() string            { return c.r.PathValue("name") }
func (c *apiCall) query(k string) string   { return c.r.URL.Query().Get(k) }

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

// deviceReply answers with a device's view.
func (c *apiCall) deviceReply(status int, d *record.Device, err error) {
	if err == nil && d == nil {
		err = registry.ErrNotFound
	}
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.DeviceName(c.name())
	c.reply(status, view(name, d), nil)
}

func (c *apiCall) enroll() {
	var req EnrollRequest
	if !c.read(&req) {
		return
	}
	e := registry.Enrollment{Device: c.name(), Actor: c.actor, Tenant: req.Tenant, Attributes: req.Attributes}
	if req.Supersede {
		e.Supersede = registry.SupersedeOthers
	}
	var err error
	if e.CSR, e.PublicKey, err = req.Decode(); err != nil {
		c.reply(0, nil, invalid(err))
		return
	}
	done, err := (&registry.Enroller{CA: c.api.CA, Registry: c.reg()}).Enroll(c.ctx, e)
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
	if err == nil && !c.actor.Sees(d.Tenant) {
		err = registry.ErrNotFound
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
	code, expires, err := c.reg().IssueCode(c.ctx, c.actor, c.name(), req.Tenant, registry.DefaultCodeLifetime)
	c.reply(http.StatusCreated, CodeResponse{Code: code, Expires: expires}, err)
}

func (c *apiCall) startTransfer() {
	code, expires, err := c.reg().StartTransfer(c.ctx, c.actor, c.name(), registry.DefaultTransferLifetime)
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
func (c *apiCall) filter() (registry.Filter, error) {
	q := c.r.URL.Query()
	f := registry.Filter{Tenant: q.Get("tenant"), State: q.Get("state"), Prefix: strings.ToLower(q.Get("prefix")), After: q.Get("after")}
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
		return f, fmt.Errorf("%w %q", registry.ErrNoTenant, f.Tenant)
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

func (c *apiCall) export() {
	f, err := c.filter()
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	c.w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(c.w)
	started := false
	err = c.reg().Export(context.WithoutCancel(c.r.Context()), c.actor, f, func(e registry.Entry) error {
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
	f := registry.AuditFilter{Device: c.query("device"), Tenant: c.query("tenant"), Operation: c.query("operation"), Actor: c.query("actor"), After: c.query("after")}
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
	if !c.actor.Sees(name) {
		c.reply(0, nil, fmt.Errorf("%w %q", registry.ErrNoTenant, name))
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

// statuses gives each error of the registry (registry/errors.go) its HTTP status, the
// first that matches: what the caller got wrong is 4xx.
var statuses = []struct {
	err    error
	status int
}{
	{registry.ErrNotFound, http.StatusNotFound},
	{registry.ErrNoSuchKey, http.StatusNotFound},
	{registry.ErrNoTenant, http.StatusNotFound},
	{registry.ErrNoService, http.StatusNotFound},
	{registry.ErrForbidden, http.StatusForbidden},
	{registry.ErrBadTransferCode, http.StatusForbidden},
	{registry.ErrConflict, http.StatusConflict},
	{registry.ErrTenantDisabled, http.StatusConflict},
	{registry.ErrBadToken, http.StatusUnauthorized},
	{registry.ErrInvalid, http.StatusBadRequest},
	{registry.ErrBadCode, http.StatusUnauthorized},
	{registry.ErrNotActive, http.StatusForbidden},
	{registry.ErrRevokedKey, http.StatusConflict},
	{registry.ErrStoredInvalid, http.StatusInternalServerError},
	{registry.ErrRateLimited, http.StatusTooManyRequests},
}

// statusOf maps an error of the registry to an HTTP status (statuses); anything else
// means etcd could not be reached or kept changing: 503, and nothing was written
// (every write is one transaction).
func statusOf(err error) int {
	for _, s := range statuses {
		if errors.Is(err, s.err) {
			return s.status
		}
	}
	return http.StatusServiceUnavailable
}

// invalid marks err as the caller's mistake (400).
func invalid(err error) error { return fmt.Errorf("%w: %w", registry.ErrInvalid, err) }

// setRetryAfter tells a client refused by a quota when to try again.
func setRetryAfter(w http.ResponseWriter, err error) {
	if limited, ok := errors.AsType[*registry.RateLimitError](err); ok {
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
