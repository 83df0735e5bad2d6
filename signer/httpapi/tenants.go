package httpapi

// The handlers of the audit, tenant and token routes (routes.go).

import (
	"fmt"
	"net/http"
	"time"

	"github.com/deviceid/deviceid/signer/registry"
)

func (c *apiCall) audit() {
	f := registry.AuditFilter{Device: c.query("device"), Tenant: c.query("tenant"), Operation: c.query("operation"), Actor: c.query("actor"), After: c.query("after")}
	var err error
	for _, t := range []struct {
		param string
		to    *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if s := c.query(t.param); s != "" && err == nil {
			if *t.to, err = time.Parse(time.RFC3339, s); err != nil {
				err = invalid(fmt.Errorf("%s is not an RFC 3339 time: %q", t.param, s))
			} else if y := t.to.Year(); y < 1970 || y > 2261 {
				err = invalid(fmt.Errorf("%s must be in the years 1970 to 2261 (audit entries are keyed by Unix nanoseconds): %q", t.param, s))
			}
		}
	}
	if err == nil {
		f.Limit, err = registry.ParseLimit(c.query("limit"))
	}
	if err != nil {
		c.reply(0, nil, err)
		return
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
