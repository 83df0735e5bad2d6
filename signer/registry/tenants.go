package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Tenant returns a tenant and the revision it was last changed at.
func (r *Registry) Tenant(ctx context.Context, name string) (*Tenant, int64, error) {
	if err := record.CheckTenant(name); err != nil {
		return nil, 0, invalid(err)
	}
	resp, err := r.Client.Get(ctx, r.signerKey(kindTenant, name))
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w %q", ErrNoTenant, name)
	}
	t, err := parseTenant(name, resp.Kvs[0].Value)
	return t, resp.Kvs[0].ModRevision, err
}

// CreateTenant adds a tenant; creating one that exists changes nothing.
func (r *Registry) CreateTenant(ctx context.Context, actor Actor, name string) (*Tenant, error) {
	if !actor.Operator {
		return nil, fmt.Errorf("%w: only the registry operator manages tenants", ErrForbidden)
	}
	if err := record.CheckTenant(name); err != nil {
		return nil, invalid(err)
	}
	t := &Tenant{Name: name, Created: r.now().UTC().Truncate(time.Second)}
	if _, err := r.commit(ctx, r.createTenant(actor, t)); err != nil {
		return nil, err
	}
	return t, nil
}

// createTenant writes *t when no tenant of its name exists, and otherwise reads the
// one that does into *t.
func (r *Registry) createTenant(actor Actor, t *Tenant) txn {
	key := r.signerKey(kindTenant, t.Name)
	return txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		if s.values[0] != nil {
			stored, err := parseTenant(t.Name, s.values[0])
			if err == nil {
				*t = *stored
			}
			return nil, err
		}
		b, _ := json.Marshal(t)
		return &plan{ops: []clientv3.Op{clientv3.OpPut(key, string(b))},
			audit: AuditEntry{Actor: actor.ID, Operation: "tenant.create", Tenant: t.Name}}, nil
	}}
}

// Tenants lists the tenants (for a tenant actor: itself).
func (r *Registry) Tenants(ctx context.Context, actor Actor) ([]Tenant, error) {
	prefix := r.signerKey(kindTenant, "")
	resp, err := r.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := []Tenant{}
	for _, kv := range resp.Kvs {
		var t Tenant
		if json.Unmarshal(kv.Value, &t) == nil && actor.Sees(t.Name) {
			out = append(out, t)
		}
	}
	return out, nil
}

// SetTenantDisabled disables or enables a tenant. A disabled tenant's tokens and
// certificates are refused, its devices stay as they are (DNS keeps serving them),
// and nothing can be registered or transferred to it.
func (r *Registry) SetTenantDisabled(ctx context.Context, actor Actor, name string, disabled bool) (*Tenant, error) {
	if !actor.Operator {
		return nil, fmt.Errorf("%w: only the registry operator manages tenants", ErrForbidden)
	}
	if err := record.CheckTenant(name); err != nil {
		return nil, invalid(err)
	}
	var t Tenant
	if _, err := r.commit(ctx, r.setTenantDisabled(actor, name, disabled, &t)); err != nil {
		return nil, err
	}
	return &t, nil
}

// setTenantDisabled sets the tenant's Disabled and reads the result into got.
func (r *Registry) setTenantDisabled(actor Actor, name string, disabled bool, got *Tenant) txn {
	key := r.signerKey(kindTenant, name)
	op := map[bool]string{true: "tenant.disable", false: "tenant.enable"}[disabled]
	return txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		t, err := parseTenant(name, s.values[0])
		if err != nil {
			return nil, err
		}
		changed := t.Disabled != disabled
		t.Disabled = disabled
		*got = *t
		if !changed {
			return nil, nil
		}
		b, _ := json.Marshal(t)
		return &plan{ops: []clientv3.Op{clientv3.OpPut(key, string(b))},
			audit: AuditEntry{Actor: actor.ID, Operation: op, Tenant: name}}, nil
	}}
}

// DeleteTenant deletes a disabled tenant that owns no devices, and its tokens. It must
// be disabled first: disabling changes the tenant's record, which every write that
// gives a device to the tenant compares, so once the count of its devices reads zero
// no such write can still land.
func (r *Registry) DeleteTenant(ctx context.Context, actor Actor, name string) error {
	if !actor.Operator {
		return fmt.Errorf("%w: only the registry operator manages tenants", ErrForbidden)
	}
	if err := record.CheckTenant(name); err != nil {
		return invalid(err)
	}
	key := r.signerKey(kindTenant, name)
	read, err := r.read(ctx, []string{key}, 0)
	if err != nil {
		return unavailable(err, false)
	}
	t, err := parseTenant(name, read.values[0])
	if err != nil {
		return err
	}
	if !t.Disabled {
		return fmt.Errorf("%w: disable tenant %q before deleting it", ErrConflict, name)
	}
	count, err := r.Client.Get(ctx, r.indexKey(name, ""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if count.Count > 0 {
		return fmt.Errorf("%w: tenant %q still has %d devices; delete or transfer them first", ErrConflict, name, count.Count)
	}
	for f := (Filter{Limit: 1}); ; {
		services, next, err := r.Services(ctx, Actor{Tenant: name}, f)
		if err != nil {
			return err
		}
		if len(services) > 0 {
			return fmt.Errorf("%w: tenant %q still has services (%s); delete them first", ErrConflict, name, services[0].Name)
		}
		if next == "" {
			break
		}
		f.After = next
	}
	tokens, err := r.tokens(ctx, name)
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpDelete(key)}
	for _, tok := range tokens {
		ops = append(ops, clientv3.OpDelete(r.signerKey(kindToken, tok.ID)))
	}
	// Once: the tenant must still be as read when its devices were counted.
	_, err = r.commit(ctx, txn{keys: []string{key}, from: &read, once: true, decide: func(snapshot) (*plan, error) {
		return &plan{ops: ops, audit: AuditEntry{Actor: actor.ID, Operation: "tenant.delete", Tenant: name}}, nil
	}})
	if errors.Is(err, errConflicted) {
		err = fmt.Errorf("%w: tenant %q changed meanwhile; try again", ErrConflict, name)
	}
	return err
}

// Token is one of a tenant's API tokens as stored: the hash of its secret, never the secret.
type Token struct {
	ID      string    `json:"id"`
	Tenant  string    `json:"tenant"`
	Label   string    `json:"label,omitempty"`
	Created time.Time `json:"created"`
	SHA256  string    `json:"sha256,omitempty"`
}

// NewToken is a token as issued: Secret is shown once and never stored.
type NewToken struct {
	Token
	Secret string `json:"token"`
}

// tokenPrefix starts every tenant token, so that logs and scanners recognise one.
const tokenPrefix = "did_"

// IssueToken makes a bearer token for tenant: "did_<id>_<secret>", stored as the
// SHA-256 of the secret under P/_signer/<zone>/token/<id>.
func (r *Registry) IssueToken(ctx context.Context, actor Actor, tenant, label string) (*NewToken, error) {
	if !actor.Sees(tenant) {
		return nil, fmt.Errorf("%w %q", ErrNoTenant, tenant)
	}
	if len(label) > 100 || strings.ContainsFunc(label, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return nil, invalid(errors.New("label: at most 100 characters, no control characters"))
	}
	if err := record.CheckTenant(tenant); err != nil {
		return nil, invalid(err)
	}
	id := make([]byte, 8)
	secret := make([]byte, 20)
	rand.Read(id)
	rand.Read(secret)
	tok := NewToken{Token: Token{ID: hex.EncodeToString(id), Tenant: tenant, Label: label, Created: r.now().UTC().Truncate(time.Second)}}
	tok.Secret = tokenPrefix + tok.ID + "_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(secret))
	stored := tok.Token
	sum := sha256.Sum256([]byte(tok.Secret))
	stored.SHA256 = hex.EncodeToString(sum[:])
	b, _ := json.Marshal(stored)
	tenantKey := r.signerKey(kindTenant, tenant)
	_, err := r.commit(ctx, txn{keys: []string{tenantKey}, decide: func(s snapshot) (*plan, error) {
		t, err := parseTenant(tenant, s.values[0])
		if err != nil {
			return nil, err
		}
		if t.Disabled {
			return nil, fmt.Errorf("%w: %q", ErrTenantDisabled, tenant)
		}
		return &plan{ops: []clientv3.Op{clientv3.OpPut(r.signerKey(kindToken, tok.ID), string(b))},
			audit: AuditEntry{Actor: actor.ID, ActorTenant: actor.Tenant, Operation: "token.issue", Tenant: tenant, Detail: "token " + tok.ID}}, nil
	}})
	if err != nil {
		return nil, err
	}
	return &tok, nil
}

// tokens lists a tenant's tokens, without their hashes.
func (r *Registry) tokens(ctx context.Context, tenant string) ([]Token, error) {
	resp, err := r.Client.Get(ctx, r.signerKey(kindToken, ""), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := []Token{}
	for _, kv := range resp.Kvs {
		var t Token
		if json.Unmarshal(kv.Value, &t) == nil && t.Tenant == tenant {
			t.SHA256 = ""
			out = append(out, t)
		}
	}
	return out, nil
}

// Tokens lists a tenant's tokens.
func (r *Registry) Tokens(ctx context.Context, actor Actor, tenant string) ([]Token, error) {
	if !actor.Sees(tenant) {
		return nil, fmt.Errorf("%w %q", ErrNoTenant, tenant)
	}
	if _, _, err := r.Tenant(ctx, tenant); err != nil {
		return nil, err
	}
	return r.tokens(ctx, tenant)
}

// RevokeToken deletes one of a tenant's tokens.
func (r *Registry) RevokeToken(ctx context.Context, actor Actor, tenant, id string) error {
	if !actor.Sees(tenant) {
		return fmt.Errorf("%w %q", ErrNoTenant, tenant)
	}
	key := r.signerKey(kindToken, id)
	_, err := r.commit(ctx, txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		var t Token
		if s.values[0] == nil || json.Unmarshal(s.values[0], &t) != nil || t.Tenant != tenant {
			return nil, fmt.Errorf("%w: tenant %q has no token %q", ErrNotFound, tenant, id)
		}
		return &plan{ops: []clientv3.Op{clientv3.OpDelete(key)},
			audit: AuditEntry{Actor: actor.ID, ActorTenant: actor.Tenant, Operation: "token.revoke", Tenant: tenant, Detail: "token " + id}}, nil
	}})
	return err
}

// Authenticate returns the tenant actor of a bearer token, checking its hash and that
// its tenant is enabled.
func (r *Registry) Authenticate(ctx context.Context, bearer string) (Actor, error) {
	rest, ok := strings.CutPrefix(bearer, tokenPrefix)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 16 {
		return Actor{}, ErrBadToken
	}
	if _, err := hex.DecodeString(id); err != nil {
		return Actor{}, ErrBadToken
	}
	resp, err := r.Client.Get(ctx, r.signerKey(kindToken, id))
	if err != nil {
		return Actor{}, err
	}
	var t Token
	if len(resp.Kvs) == 0 || json.Unmarshal(resp.Kvs[0].Value, &t) != nil {
		return Actor{}, ErrBadToken
	}
	sum := sha256.Sum256([]byte(bearer))
	want, _ := hex.DecodeString(t.SHA256)
	if subtle.ConstantTimeCompare(sum[:], want) != 1 {
		return Actor{}, ErrBadToken
	}
	if err := r.TenantEnabled(ctx, t.Tenant); err != nil {
		return Actor{}, err
	}
	return Actor{ID: "token:" + id, Tenant: t.Tenant}, nil
}

// TenantEnabled checks that the tenant exists and is enabled.
func (r *Registry) TenantEnabled(ctx context.Context, name string) error {
	t, _, err := r.Tenant(ctx, name)
	if err != nil {
		return err
	}
	if t.Disabled {
		return fmt.Errorf("%w: %q", ErrTenantDisabled, name)
	}
	return nil
}
