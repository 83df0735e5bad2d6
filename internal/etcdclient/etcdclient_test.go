package etcdclient

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
)

func TestSplitEndpoints(t *testing.T) {
	for in, want := range map[string][]string{
		"http://a:2379 http://b:2379":    {"http://a:2379", "http://b:2379"},
		"http://a:2379,http://b:2379":    {"http://a:2379", "http://b:2379"},
		" http://a:2379 , http://b:2379": {"http://a:2379", "http://b:2379"},
		"":                               nil,
	} {
		if got := SplitEndpoints(in); !slices.Equal(got, want) {
			t.Errorf("SplitEndpoints(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(EnvEndpoints, "https://e1:2379,https://e2:2379 https://e3:2379")
	t.Setenv(EnvCert, "c.pem")
	t.Setenv(EnvKey, "k.pem")
	t.Setenv(EnvCA, "ca.pem")
	t.Setenv(EnvUser, "u")
	t.Setenv(EnvPasswordFile, "/p")
	s := FromEnv()
	if len(s.Endpoints) != 3 || s.CertFile != "c.pem" || s.KeyFile != "k.pem" || s.CAFile != "ca.pem" || s.Username != "u" || s.PasswordFile != "/p" {
		t.Errorf("FromEnv: %+v", s)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		s    Settings
		want string
	}{
		{Settings{}, "no etcd endpoint"},
		{Settings{Endpoints: []string{"127.0.0.1:2379"}}, "not an http:// or https:// URL"},
		{Settings{Endpoints: []string{"http://a:2379"}, CertFile: "c", KeyFile: "k"}, "plain http"},
		{Settings{Endpoints: []string{"https://a:2379"}, CertFile: "c"}, "both a certificate and its key"},
		{Settings{Endpoints: []string{"https://a:2379"}, Password: "p"}, "without a user"},
	} {
		if err := tc.s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.s, err, tc.want)
		}
	}
	if err := (Settings{Endpoints: []string{"https://a:2379", "https://b:2379"}, CertFile: "c", KeyFile: "k", CAFile: "ca"}).Validate(); err != nil {
		t.Error(err)
	}
}

// TestDiagnose: each endpoint that cannot be used is named with its cause.
func TestDiagnose(t *testing.T) {
	plain := testenv.StartEtcd(t)
	tlsEtcd, files := testenv.StartEtcdTLS(t)
	refused := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		name string
		s    Settings
		want string
	}{
		{"refused", Settings{Endpoints: []string{refused}}, refused + ": connection refused"},
		{"dns", Settings{Endpoints: []string{"http://nosuch.invalid:2379"}}, "nosuch.invalid:2379: DNS"},
		{"tls to plain", Settings{Endpoints: []string{strings.Replace(plain.URL(), "http:", "https:", 1)}}, "TLS handshake"},
		{"untrusted server", Settings{Endpoints: []string{tlsEtcd.URL()}}, "TLS handshake"},
		{"no client certificate", Settings{Endpoints: []string{tlsEtcd.URL()}, CAFile: files.CA}, tlsEtcd.URL() + ": "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Connect(context.Background(), 3*time.Second, "/deviceid/")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Connect: %v, want %q", err, tc.want)
			}
		})
	}
	ok := Settings{Endpoints: []string{tlsEtcd.URL()}, CertFile: files.ClientCert, KeyFile: files.ClientKey, CAFile: files.CA}
	cli, err := ok.Connect(context.Background(), 3*time.Second, "/deviceid/")
	if err != nil {
		t.Fatalf("mutual TLS: %v", err)
	}
	cli.Close()
}
