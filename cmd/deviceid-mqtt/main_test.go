package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
)

// TestPublishKey: -publish sends the broker's certificate to the signer's service-key
// route with the token, as JSON, and reports the signer's refusal.
func TestPublishKey(t *testing.T) {
	ca := testenv.NewTestCA(t, "broker CA")
	key := testenv.DeviceKey(t)
	der, err := ca.IssueServer("mqtt.acme.iot.example", key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ path, auth, ctype, cert string }
	status := http.StatusCreated
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]string
		json.NewDecoder(r.Body).Decode(&body)
		got.path, got.auth, got.ctype, got.cert = r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("Content-Type"), body["certificate"]
		w.WriteHeader(status)
		w.Write([]byte(`{"error": "not allowed"}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	token, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.pem")
	os.WriteFile(token, []byte("did_0123456789abcdef_secret\n"), 0o600)
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	if err := publishKey(srv.URL, token, caFile, "_8883._tcp.mqtt.acme", cert); err != nil {
		t.Fatal(err)
	}
	if got.path != "/api/v1/services/_8883._tcp.mqtt.acme/keys" || got.auth != "Bearer did_0123456789abcdef_secret" ||
		got.ctype != "application/json" || !strings.Contains(got.cert, "BEGIN CERTIFICATE") {
		t.Errorf("request: %+v", got)
	}
	status = http.StatusForbidden
	if err := publishKey(srv.URL, token, caFile, "_8883._tcp.mqtt.acme", cert); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("a refusal: %v", err)
	}
}

// TestUsage: -h explains the broker, lists its limits, and every flag with its default.
func TestUsage(t *testing.T) {
	var text bytes.Buffer
	if err := run(t.Context(), []string{"-h"}, io.Discard, &text); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	fs, _ := flags(io.Discard)
	testenv.CheckUsage(t, fs, text.String())
	for _, want := range []string{"usage: deviceid-mqtt", "serves one zone", "-max-retained", "-recheck-grace", "-resolver-trusted", "starts clean"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("-h does not say %q:\n%s", want, text.String())
		}
	}
}

// TestRunRefuses: a second zone and a resolver off loopback are refused at start.
func TestRunRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-zone", "iot.example,other.example", "-resolver", "127.0.0.1:53"}, "one zone"},
		{[]string{"-resolver", "192.0.2.1:53"}, "not on loopback"},
		{[]string{"-resolver", "127.0.0.1:53"}, "-cert and -key are required"},
		{[]string{"-resolver", "192.0.2.1:53", "-resolver-trusted"}, "-cert and -key are required"},
		{[]string{"-max-inflight", "70000", "-resolver", "127.0.0.1:53"}, "out of range"},
	} {
		if err := run(t.Context(), tc.args, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
