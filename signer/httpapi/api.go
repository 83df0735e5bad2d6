package httpapi

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

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
	Replicas   []string       // host:port of each CoreDNS replica, whose serial and signatures the overview shows; nil: DNS's
	Timeout    time.Duration  // of one request's etcd work; 10 s when 0
}

func (a *API) context(r *http.Request) (context.Context, context.CancelFunc) {
	t := a.Timeout
	if t == 0 {
		t = requestTimeout
	}
	return context.WithTimeout(r.Context(), t)
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
