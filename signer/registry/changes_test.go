package registry

// The changes and the engine's rules as tables, without etcd: what a change decides to
// write from what it read. The etcd-backed tests keep what needs etcd (conflicts,
// transactions, leases).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// offline is a registry with no etcd: only its pure parts may be called.
func offline() *Registry {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	return &Registry{Prefix: "/deviceid", Zone: "iot.example.", Now: func() time.Time { return now }}
}

func stored(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// opsOf describes ops as "put KEY" and "del KEY", keys without the registry's prefix.
func opsOf(ops []clientv3.Op) string {
	var out []string
	for _, op := range ops {
		verb := "put"
		if op.IsDelete() {
			verb = "del"
		}
		out = append(out, verb+" "+strings.TrimPrefix(string(op.KeyBytes()), "/deviceid/"))
	}
	return strings.Join(out, ", ")
}

func TestDeviceChanges(t *testing.T) {
	r := offline()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	digest := sha256.Sum256(spki)
	acme := Actor{ID: "token:acme", Tenant: "acme"}
	enabled := stored(t, Tenant{Name: "acme"})
	disabled := stored(t, Tenant{Name: "acme", Disabled: true})
	active := &record.Device{Version: record.Version, Tenant: "acme", Credentials: []record.Credential{{SPKI: spki, Status: record.StatusActive}}}
	suspended := active.Clone()
	suspended.State = record.StateSuspended
	globexs := active.Clone()
	globexs.Tenant = "globex"

	tests := []struct {
		name   string
		w      write
		record any               // stored at the device's key: *record.Device, []byte, or nil
		values map[string][]byte // other keys, by the suffix of their key
		want   string            // the ops, "" for no write
		audit  string            // operation/device/before→after active keys
		err    error
	}{
		{name: "register",
			w:      write{actor: acme, operation: "device.register", device: "s1", owner: "acme", othersDevice: true, change: registerChange("acme", nil)},
			values: map[string][]byte{"tenant/acme": enabled},
			want:   "put iot.example/device/s1, put _signer/iot.example/tenant-devices/acme/s1", audit: "device.register s1 <nil> 0"},
		{name: "register for a disabled tenant",
			w:      write{actor: acme, operation: "device.register", device: "s1", owner: "acme", othersDevice: true, change: registerChange("acme", nil)},
			values: map[string][]byte{"tenant/acme": disabled}, err: ErrTenantDisabled},
		{name: "register for no tenant record",
			w:   write{actor: acme, operation: "device.register", device: "s1", owner: "acme", othersDevice: true, change: registerChange("acme", nil)},
			err: ErrNoTenant},
		{name: "register another tenant's name",
			w:      write{actor: acme, operation: "device.register", device: "s1", owner: "acme", othersDevice: true, change: registerChange("acme", nil)},
			record: globexs, values: map[string][]byte{"tenant/acme": enabled}, err: ErrConflict},
		{name: "register below another tenant's device",
			w:      write{actor: acme, operation: "device.register", device: "x.s1", owner: "acme", othersDevice: true, change: registerChange("acme", nil)},
			values: map[string][]byte{"device/s1": stored(t, globexs), "tenant/acme": enabled}, err: ErrConflict},
		{name: "suspend",
			w:      write{actor: acme, operation: "device.suspend", device: "s1", change: suspendChange(true)},
			record: active, want: "put iot.example/device/s1", audit: "device.suspend s1 1 1"},
		{name: "suspend what is suspended writes nothing",
			w:      write{actor: acme, operation: "device.suspend", device: "s1", change: suspendChange(true)},
			record: suspended},
		{name: "suspend another tenant's device: not found",
			w:      write{actor: acme, operation: "device.suspend", device: "s1", change: suspendChange(true)},
			record: globexs, err: ErrNotFound},
		{name: "suspend nothing",
			w:   write{actor: acme, operation: "device.suspend", device: "s1", change: suspendChange(true)},
			err: ErrNotFound},
		{name: "a stored record that does not parse",
			w:      write{actor: acme, operation: "device.suspend", device: "s1", change: suspendChange(true)},
			record: []byte(`{"version":1,"credentials":"x"}`), err: ErrStoredInvalid},
		{name: "attributes",
			w:      write{actor: acme, operation: "device.attributes", device: "s1", change: attributesChange(map[string]string{"room": "7"})},
			record: active, want: "put iot.example/device/s1", audit: "device.attributes s1 1 1"},
		{name: "attributes refused by the schema",
			w:      write{actor: acme, operation: "device.attributes", device: "s1", change: attributesChange(map[string]string{"": "7"})},
			record: active, err: ErrInvalid},
		{name: "revoke the key",
			w:      write{actor: acme, operation: "device.revoke", device: "s1", change: revokeChange(digest[:], "keyCompromise", r.now())},
			record: active, want: "put iot.example/device/s1", audit: "device.revoke s1 1 0"},
		{name: "revoke a key it does not have",
			w:      write{actor: acme, operation: "device.revoke", device: "s1", change: revokeChange(make([]byte, 32), "keyCompromise", r.now())},
			record: active, err: ErrNoSuchKey},
		{name: "a tenant gives its device away",
			w: write{actor: acme, operation: "device.register", device: "s1", change: change1(func(d *record.Device) (*record.Device, error) {
				d.Tenant = "globex"
				return d, nil
			})},
			record: active, err: ErrForbidden},
		{name: "a leased code",
			w: write{actor: acme, operation: "device.code", device: "s1", owner: "acme", change: change1(func(d *record.Device) (*record.Device, error) { return d, nil }),
				leaseKey: r.codeKey("s1"), leaseValue: func() string { return "{}" }, lease: time.Hour},
			record: active, values: map[string][]byte{"tenant/acme": enabled}, want: "put iot.example/device/s1", audit: "device.code s1 1 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, device, err := r.recordKey(false, tt.w.device)
			if err != nil {
				t.Fatal(err)
			}
			l := r.layout(tt.w, key, device)
			s := absent(len(l.keys))
			switch v := tt.record.(type) {
			case *record.Device:
				s.values[0] = stored(t, v)
			case []byte:
				s.values[0] = v
			}
			for i, k := range l.keys {
				for suffix, v := range tt.values {
					if strings.HasSuffix(k, "/"+suffix) {
						s.values[i] = v
					}
				}
			}
			p, _, err := r.planWrite(tt.w, l, s)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if p == nil {
				if tt.want != "" {
					t.Fatalf("nothing written, want %s", tt.want)
				}
				return
			}
			if got := opsOf(p.ops); got != tt.want {
				t.Errorf("ops %s, want %s", got, tt.want)
			}
			a := fmt.Sprintf("%s %s %v %v", p.audit.Operation, p.audit.Device, activeKeys(p.audit.Before), activeKeys(p.audit.After))
			if a != tt.audit {
				t.Errorf("audit %q, want %q", a, tt.audit)
			}
			if (p.leased != nil) != (tt.w.leaseKey != "") {
				t.Errorf("leased put %v, want one: %v", p.leased, tt.w.leaseKey != "")
			}
		})
	}
}

func activeKeys(s *Summary) any {
	if s == nil {
		return nil
	}
	return s.Active
}

func TestTenantChanges(t *testing.T) {
	r := offline()
	op := testOperator
	enabled := stored(t, Tenant{Name: "acme"})
	disabled := stored(t, Tenant{Name: "acme", Disabled: true})
	var got Tenant
	c := catest.New(t)
	published := absent(1)
	published.values[0] = c.PEM()
	tests := []struct {
		name   string
		txn    txn
		stored []byte
		want   string // ops and audit operation; "" for no write
		err    error
	}{
		{"create", r.createTenant(op, &Tenant{Name: "acme"}), nil, "put _signer/iot.example/tenant/acme tenant.create", nil},
		{"create what exists", r.createTenant(op, &Tenant{Name: "acme"}), enabled, "", nil},
		{"create over a record that does not parse", r.createTenant(op, &Tenant{Name: "acme"}), []byte("{"), "", ErrStoredInvalid},
		{"disable", r.setTenantDisabled(op, "acme", true, &got), enabled, "put _signer/iot.example/tenant/acme tenant.disable", nil},
		{"disable what is disabled", r.setTenantDisabled(op, "acme", true, &got), disabled, "", nil},
		{"enable", r.setTenantDisabled(op, "acme", false, &got), disabled, "put _signer/iot.example/tenant/acme tenant.enable", nil},
		{"disable no tenant", r.setTenantDisabled(op, "acme", true, &got), nil, "", ErrNoTenant},
		{"publish the CA", r.putCA(c), nil, "put iot.example/ca/" + c.AKI() + " ca.publish", nil},
		{"publish the CA as it is", r.putCA(c), published.values[0], "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := absent(1)
			s.values[0] = tt.stored
			p, err := tt.txn.decide(s)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			got := ""
			if p != nil {
				got = opsOf(p.ops) + " " + p.audit.Operation
			}
			if got != tt.want {
				t.Errorf("wrote %q, want %q", got, tt.want)
			}
		})
	}
}

// The engine refuses a write without its audit entry, and a prune outside the trail,
// before it reaches etcd (the registry here has none).
func TestEngineInvariants(t *testing.T) {
	r := offline()
	from := absent(1)
	_, err := r.commit(t.Context(), txn{keys: []string{"/deviceid/iot.example/s1"}, from: &from, decide: func(snapshot) (*plan, error) {
		return &plan{ops: []clientv3.Op{clientv3.OpPut("/deviceid/iot.example/s1", "{}")}}, nil
	}})
	if err == nil || !strings.Contains(err.Error(), "audit entry") {
		t.Errorf("a write without its audit entry: %v", err)
	}
	charged := false
	_, err = r.commit(t.Context(), txn{keys: []string{"/deviceid/iot.example/s1"}, from: &from, decide: func(snapshot) (*plan, error) {
		return &plan{ops: []clientv3.Op{clientv3.OpPut("/deviceid/iot.example/s1", "{}")}, audit: AuditEntry{Operation: "device.register"},
			charge: func() (func(), error) { charged = true; return nil, ErrRateLimited }}, nil
	}})
	if !charged || !errors.Is(err, ErrRateLimited) {
		t.Errorf("a write over its quota: charged %v, %v", charged, err)
	}
	audit := r.signerKey(kindAudit, "")
	for _, op := range []clientv3.Op{
		clientv3.OpDelete("/deviceid/iot.example/s1"),
		clientv3.OpDelete(audit, clientv3.WithPrefix()), // fine alone, but not with the next
		clientv3.OpDelete(audit+"1", clientv3.WithRange("/deviceid/iot.example/z")),
		clientv3.OpPut(audit+"1", ""),
	} {
		if _, err := r.pruneAudit(t.Context(), []clientv3.Op{op, clientv3.OpDelete("/deviceid/_signer/iot.example/tenant/acme")}); err == nil || !strings.Contains(err.Error(), "outside the audit trail") {
			t.Errorf("pruning %s: %v", op.KeyBytes(), err)
		}
	}
}
