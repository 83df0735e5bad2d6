package httpapi

// The handlers of the device routes (routes.go): each decodes its request, calls the
// registry, and replies.

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"
)

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
	resp, status := EnrollResponse{Device: view(name, done.Device, c.reg().Clock())}, http.StatusCreated
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
	var err error
	if f.Limit, err = registry.ParseLimit(q.Get("limit")); err != nil {
		return f, err
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
		resp.Devices = append(resp.Devices, summaryOf(e, c.reg().Clock()))
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
