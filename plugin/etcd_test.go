package deviceid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// oldEtcd is the KV of an etcd before 3.7: it knows no RangeStream.
type oldEtcd struct{ clientv3.KV }

func (oldEtcd) GetStream(context.Context, string, ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	return nil, status.Error(codes.Unimplemented, "unknown method RangeStream")
}

// TestLoadStreamOrPages: a full load reads every key at one revision, streamed from
// etcd 3.7, or in pages from an etcd without RangeStream, with the same result.
func TestLoadStreamOrPages(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	value, _ := json.Marshal(&record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki, Status: "active"}}})
	const n = 2*loadPageSize + 17 // more than two pages
	for i := 0; i < n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(i+128, n); j++ {
			ops = append(ops, clientv3.OpPut(record.DeviceKey("/deviceid", "iot.example", fmt.Sprintf("d%d", j)), string(value)))
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	head, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		kv   clientv3.KV
	}{{"stream", cli.KV}, {"pages", oldEtcd{cli.KV}}} {
		t.Run(tc.name, func(t *testing.T) {
			kv := cli.KV
			cli.KV = tc.kv
			defer func() { cli.KV = kv }()
			d := newDeviceid(caddyConfig(t))
			z := d.zones["iot.example."]
			x, err := z.load(context.Background(), cli, record.ZonePrefix("/deviceid", "iot.example."))
			if err != nil {
				t.Fatal(err)
			}
			defer x.st.free()
			if x.devices.Load() != n || x.loadRevision != head.Header.Revision {
				t.Errorf("%d devices at revision %d, want %d at %d", x.devices.Load(), x.loadRevision, n, head.Header.Revision)
			}
		})
	}
}
