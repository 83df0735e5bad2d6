// Package etcdclient holds the etcd client settings that the CoreDNS plugin and the
// signer share: endpoints (separated by spaces or commas), client TLS, user and
// password, the same DEVICEID_ETCD* environment variables, and errors that name
// the endpoints and the cause (DNS, refused, TLS handshake, authentication).
package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// The environment variables, the same for CoreDNS and the signer.
const (
	EnvEndpoints    = "DEVICEID_ETCD"
	EnvCert         = "DEVICEID_ETCD_CERT"
	EnvKey          = "DEVICEID_ETCD_KEY"
	EnvCA           = "DEVICEID_ETCD_CA"
	EnvUser         = "DEVICEID_ETCD_USER"
	EnvPassword     = "DEVICEID_ETCD_PASSWORD"
	EnvPasswordFile = "DEVICEID_ETCD_PASSWORD_FILE"
)

// DefaultEndpoint is the etcd of a laptop.
const DefaultEndpoint = "http://127.0.0.1:2379"

// Settings say how to reach etcd.
type Settings struct {
	Endpoints                 []string
	CertFile, KeyFile, CAFile string // client TLS; all optional (CA: the system's roots)
	Username, Password        string
	PasswordFile              string // the password, read from a file (wins over Password)
}

// FromEnv returns the settings the DEVICEID_ETCD* variables give; an unset
// DEVICEID_ETCD means DefaultEndpoint.
func FromEnv() Settings {
	s := Settings{
		Endpoints:    SplitEndpoints(os.Getenv(EnvEndpoints)),
		CertFile:     os.Getenv(EnvCert),
		KeyFile:      os.Getenv(EnvKey),
		CAFile:       os.Getenv(EnvCA),
		Username:     os.Getenv(EnvUser),
		Password:     os.Getenv(EnvPassword),
		PasswordFile: os.Getenv(EnvPasswordFile),
	}
	if len(s.Endpoints) == 0 {
		s.Endpoints = []string{DefaultEndpoint}
	}
	return s
}

// SplitEndpoints splits a list of endpoints separated by spaces, commas or both.
func SplitEndpoints(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

// Validate checks the endpoints and that the TLS files come in a usable set.
func (s Settings) Validate() error {
	if len(s.Endpoints) == 0 {
		return errors.New("no etcd endpoint")
	}
	for _, e := range s.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" && u.Path != "/" {
			return fmt.Errorf("etcd endpoint %q is not an http:// or https:// URL of a host and port", e)
		}
		if u.Scheme == "http" && (s.CertFile != "" || s.CAFile != "") {
			return fmt.Errorf("etcd endpoint %s is plain http, but client TLS files are given: use https:// (or drop the TLS files)", e)
		}
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		return errors.New("etcd client TLS needs both a certificate and its key")
	}
	if s.Username == "" && (s.Password != "" || s.PasswordFile != "") {
		return errors.New("an etcd password is given without a user")
	}
	return nil
}

// TLS returns the client TLS configuration, or nil for plain http endpoints.
func (s Settings) TLS() (*tls.Config, error) {
	https := false
	for _, e := range s.Endpoints {
		https = https || strings.HasPrefix(e, "https://")
	}
	if !https {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if s.CAFile != "" {
		b, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate", s.CAFile)
		}
	}
	return cfg, nil
}

// Config returns the client configuration: the settings, quick reconnects, and no
// client logs of its own (the callers log what matters, once).
func (s Settings) Config() (clientv3.Config, error) {
	if err := s.Validate(); err != nil {
		return clientv3.Config{}, err
	}
	t, err := s.TLS()
	if err != nil {
		return clientv3.Config{}, err
	}
	password := s.Password
	if s.PasswordFile != "" {
		b, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return clientv3.Config{}, fmt.Errorf("etcd password file: %v", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	return clientv3.Config{
		Endpoints:            s.Endpoints,
		TLS:                  t,
		Username:             s.Username,
		Password:             password,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes; an etcd back from an
		// outage should be followed again within seconds.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	}, nil
}

// New returns a client. It does not wait for etcd: use Check for that.
func (s Settings) New() (*clientv3.Client, error) {
	cfg, err := s.Config()
	if err != nil {
		return nil, err
	}
	return clientv3.New(cfg)
}

// Connect returns a client once etcd answers it with the key (a key the user may
// read), or within timeout an error that names every endpoint and why it could not
// be used.
func (s Settings) Connect(ctx context.Context, timeout time.Duration, key string) (*clientv3.Client, error) {
	cli, err := s.New()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.Check(ctx, cli, key); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
}

// Check asks etcd through cli for key (a count, not the value), with a leader; when
// that fails, it tells why for each endpoint (DNS, connection refused, TLS handshake,
// authentication, permission, no leader).
func (s Settings) Check(ctx context.Context, cli *clientv3.Client, key string) error {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 3*time.Second)
	_, err := cli.Get(cctx, key, clientv3.WithCountOnly())
	cancel()
	if err == nil {
		return nil
	}
	return s.Diagnose(ctx, key, err)
}

// Diagnose explains a failed request: each endpoint is tried on its own, step by
// step, and the first step that fails is its cause.
func (s Settings) Diagnose(ctx context.Context, key string, failed error) error {
	if len(s.Endpoints) == 0 { // a client made elsewhere: nothing to try on its own
		return fmt.Errorf("etcd cannot be used: %w", failed)
	}
	causes := make([]string, len(s.Endpoints))
	var wg sync.WaitGroup
	for i, e := range s.Endpoints {
		wg.Go(func() { causes[i] = e + ": " + s.diagnose(ctx, e, key, failed) })
	}
	wg.Wait()
	return fmt.Errorf("etcd cannot be used: %s", strings.Join(causes, "; "))
}

func (s Settings) diagnose(ctx context.Context, endpoint, key string, failed error) string {
	// The caller's deadline may be spent on the request that failed: the diagnosis
	// gets its own few seconds.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	u, err := url.Parse(endpoint)
	if err != nil {
		return "not a URL"
	}
	host, _, err := net.SplitHostPort(u.Host)
	if err != nil {
		return "no port in the URL"
	}
	if net.ParseIP(host) == nil {
		if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
			return "DNS: " + err.Error()
		}
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && strings.Contains(err.Error(), "refused") {
			return "connection refused"
		}
		return "cannot connect: " + err.Error()
	}
	defer conn.Close()
	if u.Scheme == "https" {
		t, err := s.TLS()
		if err != nil {
			return err.Error()
		}
		t = t.Clone()
		t.ServerName = host
		tc := tls.Client(conn, t)
		if err := tc.HandshakeContext(ctx); err != nil {
			return "TLS handshake: " + err.Error()
		}
	}
	// The endpoint answers: ask it alone, which shows authentication and quorum errors.
	one := s
	one.Endpoints = []string{endpoint}
	cli, err := one.New()
	if err != nil {
		return err.Error()
	}
	defer cli.Close()
	_, err = cli.Get(clientv3.WithRequireLeader(ctx), key, clientv3.WithCountOnly())
	switch {
	case err == nil:
		return "answers now (" + failed.Error() + " before)"
	case strings.Contains(err.Error(), "authentication failed") || strings.Contains(err.Error(), "user name is empty") || strings.Contains(err.Error(), "invalid auth token"):
		return "authentication: " + err.Error()
	case strings.Contains(err.Error(), "permission denied"):
		return "permission denied for user " + s.Username + ": " + err.Error()
	case strings.Contains(err.Error(), "no leader"):
		return "no leader (quorum lost?)"
	}
	return err.Error()
}
