package httpapi

import (
	"log/slog"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/registry"
)

// The handlers log every enrollment and revocation; the tests make many.
func init() { slog.SetDefault(slog.New(slog.DiscardHandler)) }

// testRegistry runs an embedded etcd and returns a registry for iot.example on it.
func testRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	return &registry.Registry{Client: testenv.StartEtcd(t).Client(), Prefix: "/deviceid", Zone: "iot.example."}
}

// testOperator is the registry operator in tests.
var testOperator = registry.OperatorActor("test")
