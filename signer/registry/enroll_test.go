package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"

	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// csrFor is a parsed CSR for key.
func csrFor(t *testing.T, key *ecdsa.PrivateKey) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(testenv.CSR(t, key, ""))
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func spkiOf(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func digestOf(spki []byte) []byte { s := sha256.Sum256(spki); return s[:] }

// countingKV counts the write transactions that reach etcd, and runs before ahead
// of each with its number (from 1): a writer that gets in between an attempt's read
// and its write.
type countingKV struct {
	clientv3.KV
	txns   atomic.Int32
	before func(n int32)
}

func (k *countingKV) Txn(ctx context.Context) clientv3.Txn {
	return &countingTxn{Txn: k.KV.Txn(ctx), kv: k}
}

type countingTxn struct {
	clientv3.Txn
	kv     *countingKV
	writes bool
}

func (t *countingTxn) If(c ...clientv3.Cmp) clientv3.Txn {
	t.writes = true
	t.Txn = t.Txn.If(c...)
	return t
}
func (t *countingTxn) Then(o ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(o...)
	return t
}
func (t *countingTxn) Else(o ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(o...)
	return t
}
func (t *countingTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.writes {
		n := t.kv.txns.Add(1)
		if t.kv.before != nil {
			t.kv.before(n)
		}
	}
	return t.Txn.Commit()
}

// counted returns a registry whose client counts write transactions, beside one
// that does not, on the same etcd.
func counted(t *testing.T) (*Registry, *countingKV, *Registry) {
	t.Helper()
	plain := testRegistry(t)
	cli := testenv.Client(t, plain.Client.Endpoints()...)
	kv := &countingKV{KV: cli.KV}
	cli.KV = kv
	return &Registry{Client: cli, Prefix: plain.Prefix, Zone: plain.Zone}, kv, plain
}

func TestEnroll(t *testing.T) {
	r := testRegistry(t)
	e := &Enroller{CA: catest.New(t), Registry: r}
	ctx := context.Background()
	k1, k2, k3 := testenv.DeviceKey(t), testenv.DeviceKey(t), testenv.DeviceKey(t)

	if _, _, err := r.Get(ctx, "sensor7"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before enrollment: %v", err)
	}
	first, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "Sensor7", CSR: csrFor(t, k1)})
	if err != nil || first.Again || first.Cert == nil || len(first.Device.Credentials) != 1 {
		t.Fatalf("Enroll: %+v %v", first, err)
	}
	_, rev, _ := r.Get(ctx, "sensor7")
	again, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k1)})
	if err != nil || !again.Again || !again.Cert.Equal(first.Cert) {
		t.Fatalf("a retry got %+v %v, want the certificate on record", again, err)
	}
	if _, rev2, _ := r.Get(ctx, "sensor7"); rev2 != rev {
		t.Error("a retry wrote the record")
	}
	d2, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k2)})
	if err != nil || len(d2.Device.Credentials) != 2 {
		t.Fatalf("second key: %+v %v", d2, err)
	}
	// A re-enrollment with k2's certificate, superseding it.
	d3, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, k3), Current: d2.Cert, Supersede: SupersedeCurrent})
	if err != nil {
		t.Fatal(err)
	}
	if c := d3.Device.Credentials; len(c) != 3 || c[1].Status != record.StatusRevoked || c[1].Reason != "superseded" || c[0].Status != record.StatusActive {
		t.Fatalf("re-enrollment superseding the second key: %+v", c)
	}
	if _, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: d2.Cert}); !errors.Is(err, ErrNotActive) {
		t.Errorf("re-enrollment with a superseded certificate: %v", err)
	}
	if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k2)}); !errors.Is(err, ErrRevokedKey) {
		t.Errorf("a revoked key enrolled again: %v", err)
	}
	if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "bad_name", CSR: csrFor(t, k1)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a bad name: %v", err)
	}
	bare, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "bare", PublicKey: k2.Public()})
	if err != nil || bare.Cert != nil || len(bare.Device.Credentials) != 1 || bare.Device.Credentials[0].Cert != nil {
		t.Errorf("bare key: %+v %v", bare, err)
	}
	if again, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "bare", PublicKey: k2.Public()}); err != nil || !again.Again {
		t.Errorf("bare key again: %+v %v", again, err)
	}
	if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no key: %v", err)
	}
}

func TestRevokeDeleteList(t *testing.T) {
	r := testRegistry(t)
	e := &Enroller{CA: catest.New(t), Registry: r}
	ctx := context.Background()
	k1, k2 := testenv.DeviceKey(t), testenv.DeviceKey(t)
	e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k1)})
	e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k2)})
	d, err := r.Revoke(ctx, testOperator, "sensor7", digestOf(spkiOf(t, k1)), "keyCompromise")
	if err != nil || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Reason != "keyCompromise" || d.Credentials[1].Status != record.StatusActive {
		t.Fatalf("revoke one: %+v %v", d, err)
	}
	if _, err := r.Revoke(ctx, testOperator, "sensor7", nil, "no such reason"); !errors.Is(err, ErrBadReason) {
		t.Errorf("bad reason: %v", err)
	}
	if _, err := r.Revoke(ctx, testOperator, "sensor7", digestOf([]byte("nope")), ""); !errors.Is(err, ErrNoSuchKey) {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := r.Revoke(ctx, testOperator, "sensor7", []byte("short"), ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("a digest of the wrong length: %v", err)
	}
	if _, err := r.Revoke(ctx, testOperator, "nosuch", nil, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if d, err = r.Revoke(ctx, testOperator, "sensor7", nil, "cessationOfOperation"); err != nil || d.Credentials[1].Status != record.StatusRevoked || d.Credentials[0].Reason != "keyCompromise" {
		t.Errorf("revoke all: %+v %v", d, err)
	}
	e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "bare", PublicKey: k2.Public()})
	names, next, err := r.Search(ctx, testOperator, Filter{Limit: 1})
	if err != nil || len(names) != 1 || names[0].Name != "bare" || next != "bare" {
		t.Errorf("List page 1: %v %q %v", names, next, err)
	}
	names, next, _ = r.Search(ctx, testOperator, Filter{After: next, Limit: 1})
	if len(names) != 1 || names[0].Name != "sensor7" || next != "" {
		t.Errorf("List page 2: %v %q", names, next)
	}
	if err := r.Delete(ctx, testOperator, "sensor7"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, testOperator, "sensor7"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v, want %v", err, ErrNotFound)
	}
	testenv.Put(t, r.Client, record.DeviceKey(r.Prefix, r.Zone, "broken"), "not json")
	if err := r.Delete(ctx, testOperator, "broken"); err != nil {
		t.Errorf("deleting an invalid record: %v", err)
	}
	if _, _, err := r.Get(ctx, "sensor7"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

// TestSupersedeRace adds a credential between an enrollment's read and its write: the
// enrollment that asked to supersede every other key must retire that one too.
func TestSupersedeRace(t *testing.T) {
	r, kv, plain := counted(t)
	issuer := catest.New(t)
	ctx := context.Background()
	k1, sneaky, k3 := testenv.DeviceKey(t), testenv.DeviceKey(t), testenv.DeviceKey(t)
	if _, err := (&Enroller{CA: issuer, Registry: plain}).Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k1)}); err != nil {
		t.Fatal(err)
	}
	// The enrollment guesses the device absent (1st transaction, not a race), reads
	// it from that answer, and the other writer gets in before the 2nd.
	kv.before = func(n int32) {
		if n != 2 {
			return
		}
		if _, err := (&Enroller{CA: issuer, Registry: plain}).Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, sneaky)}); err != nil {
			t.Error(err)
		}
	}
	conflicts := testutil.ToFloat64(txnConflicts)
	done, err := (&Enroller{CA: issuer, Registry: r}).Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, k3), Supersede: SupersedeOthers})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, c := range done.Device.Credentials {
		status[string(c.SPKI)] = c.Status
	}
	if status[string(spkiOf(t, sneaky))] != record.StatusRevoked || status[string(spkiOf(t, k1))] != record.StatusRevoked || status[string(spkiOf(t, k3))] != record.StatusActive {
		t.Errorf("after the race: %v", done.Device.Credentials)
	}
	if got := testutil.ToFloat64(txnConflicts) - conflicts; got != 1 {
		t.Errorf("%v conflicts counted for one real race", got)
	}
}

// TestEnrollTransactions: a re-enrollment of an existing device costs one etcd
// transaction, and a first enrollment one too; neither counts as a conflict.
func TestEnrollTransactions(t *testing.T) {
	r, kv, _ := counted(t)
	e := &Enroller{CA: catest.New(t), Registry: r}
	ctx := context.Background()
	conflicts := testutil.ToFloat64(txnConflicts)
	first, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t))})
	if err != nil {
		t.Fatal(err)
	}
	if n := kv.txns.Load(); n != 1 {
		t.Errorf("a first enrollment took %d transactions", n)
	}
	kv.txns.Store(0)
	if _, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: first.Cert}); err != nil {
		t.Fatal(err)
	}
	if n := kv.txns.Load(); n != 1 {
		t.Errorf("a re-enrollment took %d transactions", n)
	}
	kv.txns.Store(0)
	// An admin enrollment of a key for a device that exists guesses absence, loses,
	// and writes on the second transaction: two transactions, no conflict.
	if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", PublicKey: testenv.DeviceKey(t).Public()}); err != nil {
		t.Fatal(err)
	}
	if n := kv.txns.Load(); n != 2 {
		t.Errorf("an enrollment of an existing device took %d transactions", n)
	}
	// A tenant's new devices: one writing transaction each (the first reads the
	// tenant's record before it; the next ones take it as last seen).
	if _, err := r.CreateTenant(ctx, testOperator, "acme"); err != nil {
		t.Fatal(err)
	}
	acme := Actor{ID: "token:x", Tenant: "acme"}
	for i, want := range []int32{1, 1, 1} {
		kv.txns.Store(0)
		if _, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "new" + strconv.Itoa(i), PublicKey: testenv.DeviceKey(t).Public()}); err != nil {
			t.Fatal(err)
		}
		if n := kv.txns.Load(); n != want {
			t.Errorf("tenant enrollment %d took %d transactions, want %d", i, n, want)
		}
	}
	if got := testutil.ToFloat64(txnConflicts) - conflicts; got != 0 {
		t.Errorf("%v conflicts counted without any other writer", got)
	}
}

// TestConcurrentEnrollments runs 50 enrollments and revocations on the same devices
// at once: every one must land, none overwrite another.
func TestConcurrentEnrollments(t *testing.T) {
	r := testRegistry(t)
	e := &Enroller{CA: catest.New(t), Registry: r}
	ctx := context.Background()
	devices := []string{"a", "b"}
	type op struct {
		device string
		key    *ecdsa.PrivateKey
		revoke bool
	}
	var ops []op
	for i := range 50 {
		ops = append(ops, op{device: devices[i%2], key: testenv.DeviceKey(t), revoke: i%5 == 0})
	}
	var wg sync.WaitGroup
	for _, o := range ops {
		wg.Go(func() {
			if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: o.device, CSR: csrFor(t, o.key)}); err != nil {
				t.Error(err)
				return
			}
			if o.revoke {
				if _, err := r.Revoke(ctx, testOperator, o.device, digestOf(spkiOf(t, o.key)), "superseded"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for _, dev := range devices {
		d, _, err := r.Get(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for _, o := range ops {
			if o.device == dev {
				want[string(spkiOf(t, o.key))] = map[bool]string{false: record.StatusActive, true: record.StatusRevoked}[o.revoke]
			}
		}
		if len(d.Credentials) != len(want) {
			t.Errorf("%s has %d credentials, want %d", dev, len(d.Credentials), len(want))
		}
		for _, c := range d.Credentials {
			if want[string(c.SPKI)] != c.Status {
				t.Errorf("%s: a credential is %s, want %s", dev, c.Status, want[string(c.SPKI)])
			}
		}
	}
}

// TestCodeUsedOnce races ten enrollments with one code, each for its own key: exactly
// one gets a certificate, the record holds exactly that key, and the winner's retry
// gets the same certificate back.
func TestCodeUsedOnce(t *testing.T) {
	r := testRegistry(t)
	e := &Enroller{CA: catest.New(t), Registry: r}
	ctx := context.Background()
	code, _, err := r.IssueCode(ctx, testOperator, "sensor7", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	type win struct {
		key  *ecdsa.PrivateKey
		cert *x509.Certificate
	}
	var wg sync.WaitGroup
	won := make(chan win, 10)
	for range 10 {
		wg.Go(func() {
			key := testenv.DeviceKey(t)
			done, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, key), Code: code})
			if err == nil {
				won <- win{key, done.Cert}
			} else if !errors.Is(err, ErrBadCode) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(won)
	var winners []win
	for w := range won {
		winners = append(winners, w)
	}
	d, _, err := r.Get(ctx, "sensor7")
	if len(winners) != 1 || err != nil || len(d.Credentials) != 1 || string(d.Credentials[0].Cert) != string(winners[0].cert.Raw) {
		t.Fatalf("%d enrollments won; record %+v %v", len(winners), d, err)
	}
	retry, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, winners[0].key), Code: code})
	if err != nil || !retry.Again || !retry.Cert.Equal(winners[0].cert) {
		t.Errorf("the winner's retry: %+v %v", retry, err)
	}
	if _, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Code: "wrong"}); !errors.Is(err, ErrBadCode) {
		t.Errorf("wrong code: %v", err)
	}
	if _, err := e.Enroll(ctx, Enrollment{Device: "other", CSR: csrFor(t, testenv.DeviceKey(t)), Code: code}); !errors.Is(err, ErrBadCode) {
		t.Errorf("another device's code: %v", err)
	}
}

// TestCodeExpires drives the code's lifetime with a fake clock.
func TestCodeExpires(t *testing.T) {
	r := testRegistry(t)
	now := time.Now()
	e := &Enroller{CA: catest.New(t), Registry: r, Now: func() time.Time { return now }}
	code, _, err := r.IssueCode(t.Context(), testOperator, "sensor7", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour + time.Second)
	if _, err := e.Enroll(t.Context(), Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Code: code}); !errors.Is(err, ErrBadCode) {
		t.Errorf("an expired code: %v", err)
	}
	resp, _ := r.Client.Get(t.Context(), r.codeKey("sensor7"))
	var stored storedCode
	if len(resp.Kvs) != 1 || json.Unmarshal(resp.Kvs[0].Value, &stored) != nil || stored.UsedBy != "" {
		t.Errorf("a refused code changed: %s", resp.Kvs)
	}
}
