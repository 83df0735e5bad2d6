// Package catest holds the CA fixture the signer's tests share (as net/http/httptest
// does for net/http): a CA of package ca for iot.example. Other fixtures are in
// internal/testenv, which cannot hold this one: package record's tests use testenv,
// and package ca imports record.
package catest

import (
	"crypto/elliptic"
	"testing"

	"github.com/deviceid/deviceid/signer/ca"
)

// New makes a signer CA for iot.example (ECDSA P-256) in a temporary directory.
func New(t testing.TB) *ca.CA {
	t.Helper()
	c, err := ca.InitCA(t.TempDir(), "test CA", "iot.example", elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}
