package registry

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CAs returns the CA certificates published under P/<zone>/ca/: the signer's own and
// those an operator keeps after a rotation until their last certificate expires. An
// invalid record is left out (the plugin logs it as it loads).
func (r *Registry) CAs(ctx context.Context) ([]*x509.Certificate, error) {
	prefix := record.CAKey(r.Prefix, r.Zone, "")
	resp, err := r.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err, false)
	}
	var cas []*x509.Certificate
	for _, kv := range resp.Kvs {
		if c, err := record.ParseCA(strings.TrimPrefix(string(kv.Key), prefix), kv.Value); err == nil {
			cas = append(cas, c)
		}
	}
	return cas, nil
}

// PutCA publishes the CA certificate under P/<zone>/ca/<aki> for discovery, with its
// audit entry (actor "signer"); a CA published as it is already is left alone, so a
// signer's every start writes nothing.
func (r *Registry) PutCA(ctx context.Context, c *ca.CA) error {
	_, err := r.commit(ctx, r.putCA(c))
	return err
}

func (r *Registry) putCA(c *ca.CA) txn {
	key := record.CAKey(r.Prefix, r.Zone, c.AKI())
	value := c.PEM()
	return txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		if bytes.Equal(s.values[0], value) {
			return nil, nil
		}
		return &plan{ops: []clientv3.Op{clientv3.OpPut(key, string(value))},
			audit: AuditEntry{Actor: "signer", Operation: "ca.publish", Detail: "CA " + c.AKI()}}, nil
	}}
}
