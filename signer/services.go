package signer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNoService is a service name nobody has published.
var ErrNoService = errors.New("no such service")

// Service identities (DANE server authentication): a service record at
// P/<zone>/service/_<port>._<tcp|udp>.<host> lists the keys of the endpoint devices
// connect to, published as TLSA 3 1 1 (active) and the revoked usage (revoked). A
// tenant publishes services under its own name only: the host's last label is the
// tenant (_8883._tcp.mqtt.acme belongs to acme); the operator publishes any.

// serviceWrite is the write of a service record by actor.
func serviceWrite(actor Actor, operation, service string) write {
	return write{actor: actor, operation: operation, device: service, service: true}
}

// serviceTenant is the tenant a new service belongs to: the host's last label for a
// tenant (which must be the actor's); the operator's choice otherwise.
func serviceTenant(actor Actor, service, tenant string) (string, error) {
	name, err := record.ServiceName(service)
	if err != nil {
		return "", invalid(err)
	}
	host := record.ServiceHost(name)
	last := host[strings.LastIndex(host, ".")+1:]
	if actor.Operator {
		return ownerFor(actor, tenant)
	}
	if last != actor.Tenant {
		return "", fmt.Errorf("%w: tenant %s publishes services whose host ends in .%s (e.g. _8883._tcp.mqtt.%s)", ErrForbidden, actor.Tenant, actor.Tenant, actor.Tenant)
	}
	return ownerFor(actor, tenant)
}

// PublishServiceKey adds a key (from its SPKI) to a service, as active, creating the
// service when it is new. Rotating a key is publishing the new one beside it, then
// revoking the old one (RevokeServiceKey, reason superseded) once clients have it.
func (r *Registry) PublishServiceKey(ctx context.Context, actor Actor, service, tenant string, spki []byte) (*record.Device, error) {
	owner, err := serviceTenant(actor, service, tenant)
	if err != nil {
		return nil, err
	}
	if _, err := x509.ParsePKIXPublicKey(spki); err != nil {
		return nil, invalid(fmt.Errorf("public key: %v", err))
	}
	w := serviceWrite(actor, "service.publish", service)
	w.owner = owner
	w.detail = "key " + keyDigest(spki)
	w.change = change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			d = &record.Device{Version: record.Version, Tenant: owner}
		}
		for _, c := range d.Credentials {
			if bytes.Equal(c.SPKI, spki) {
				if c.Status == record.StatusRevoked {
					return nil, ErrRevokedKey
				}
				return d, nil // published already
			}
		}
		if len(d.Credentials) >= record.MaxCredentials {
			return nil, invalid(fmt.Errorf("the service has %d keys already, the most a record holds", len(d.Credentials)))
		}
		d.Credentials = append(d.Credentials, record.Credential{SPKI: spki, Status: record.StatusActive})
		return d, nil
	})
	d, err := r.update(ctx, w)
	return d, serviceErr(err)
}

// RevokeServiceKey revokes one of a service's keys (all of them when spkiSHA256 is nil).
func (r *Registry) RevokeServiceKey(ctx context.Context, actor Actor, service string, spkiSHA256 []byte, reason string) (*record.Device, error) {
	d, err := r.revoke(ctx, serviceWrite(actor, "service.revoke", service), spkiSHA256, reason)
	return d, serviceErr(err)
}

// DeleteService deletes a service record: DNS stops publishing its keys.
func (r *Registry) DeleteService(ctx context.Context, actor Actor, service string) error {
	found := false
	w := serviceWrite(actor, "service.delete", service)
	w.change = func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
		found = d != nil
		if d == nil {
			return nil, nil, ErrNoService
		}
		return nil, nil, nil
	}
	_, err := r.update(ctx, w)
	if err == nil && !found {
		err = ErrNoService
	}
	return serviceErr(err)
}

// Service returns a service record the actor may see.
func (r *Registry) Service(ctx context.Context, actor Actor, service string) (*record.Device, string, error) {
	key, name, err := r.recordKey(true, service)
	if err != nil {
		return nil, "", err
	}
	d, _, err := r.get(ctx, key)
	if err == nil && (d == nil || !actor.sees(d.Tenant)) {
		err = ErrNoService
	}
	return d, name, err
}

// serviceErr names a missing record a service, not a device.
func serviceErr(err error) error {
	if errors.Is(err, ErrNotFound) {
		return ErrNoService
	}
	return err
}

// keyDigest is the hex SHA-256 of a key's SPKI, as in its 3 1 1 record.
func keyDigest(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// ServiceKeyRequest publishes a service key: its public key (PEM, or base64 DER SPKI)
// or the certificate it serves (PEM, or base64 DER), whose key is taken.
type ServiceKeyRequest struct {
	PublicKey   string `json:"public_key,omitempty"`
	Certificate string `json:"certificate,omitempty"`
	Tenant      string `json:"tenant,omitempty"` // of a new service, when the operator publishes it
}

// SPKI decodes the request's key.
func (req ServiceKeyRequest) SPKI() ([]byte, error) {
	switch {
	case req.PublicKey != "" && req.Certificate != "":
		return nil, errors.New("give either public_key or certificate, not both")
	case req.Certificate != "":
		der, err := decodePEMOrBase64(req.Certificate, "CERTIFICATE")
		if err != nil {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		return cert.RawSubjectPublicKeyInfo, nil
	case req.PublicKey != "":
		der, err := decodePEMOrBase64(req.PublicKey, "PUBLIC KEY")
		if err != nil {
			return nil, fmt.Errorf("public_key: %v", err)
		}
		return der, nil
	}
	return nil, errors.New("give public_key or certificate")
}

// ServiceList lists services.
type ServiceList struct {
	Services []DeviceView `json:"services"`
	Next     string       `json:"next,omitempty"`
}

func (c *apiCall) service() string { return c.r.PathValue("service") }

func (c *apiCall) serviceReply(status int, d *record.Device, err error) {
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.ServiceName(c.service())
	c.reply(status, view(name, d), nil)
}

func (c *apiCall) publishServiceKey() {
	var req ServiceKeyRequest
	if !c.read(&req) {
		return
	}
	spki, err := req.SPKI()
	if err != nil {
		c.reply(0, nil, invalid(err))
		return
	}
	d, err := c.reg().PublishServiceKey(c.ctx, c.actor, c.service(), req.Tenant, spki)
	c.serviceReply(http.StatusCreated, d, err)
}

func (c *apiCall) revokeServiceKey() {
	req, spki, ok := c.revokeRequest()
	if !ok {
		return
	}
	d, err := c.reg().RevokeServiceKey(c.ctx, c.actor, c.service(), spki, req.Reason)
	c.serviceReply(http.StatusOK, d, err)
}

func (c *apiCall) getService() {
	d, _, err := c.reg().Service(c.ctx, c.actor, c.service())
	c.serviceReply(http.StatusOK, d, err)
}

func (c *apiCall) deleteService() {
	c.reply(http.StatusNoContent, nil, c.reg().DeleteService(c.ctx, c.actor, c.service()))
}

func (c *apiCall) listServices() {
	f, err := c.filter()
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	entries, next, err := c.reg().Services(c.ctx, c.actor, f)
	resp := ServiceList{Services: []DeviceView{}, Next: next}
	for _, e := range entries {
		if e.Device != nil {
			resp.Services = append(resp.Services, view(e.Name, e.Device))
		}
	}
	c.reply(http.StatusOK, resp, err)
}
