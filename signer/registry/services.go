package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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
	w.detail = "key " + KeyDigest(spki)
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
	if err == nil && (d == nil || !actor.Sees(d.Tenant)) {
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

// KeyDigest is the hex SHA-256 of a key's SPKI, as in its 3 1 1 record.
func KeyDigest(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}
