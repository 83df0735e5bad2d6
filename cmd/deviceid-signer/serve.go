package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/signer"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// serveFlags are the settings of a running signer. Each flag's default comes from
// the environment variable named in its help, so that a container needs no arguments.
type serveFlags struct {
	listen, zone, prefix, etcd     string
	caCert, caKey, tlsCert, tlsKey string
	tokenFile, adminCA             string
	lifetime                       time.Duration
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", env("DEVICEID_LISTEN", "127.0.0.1:8443"), "HTTPS address for EST, the admin API, /healthz and /metrics ($DEVICEID_LISTEN)")
	fs.StringVar(&f.zone, "zone", env("DEVICEID_ZONE", ""), "the zone devices are named in, e.g. iot.example ($DEVICEID_ZONE; required)")
	fs.StringVar(&f.prefix, "prefix", env("DEVICEID_PREFIX", "/deviceid"), "etcd prefix of deviceid's records ($DEVICEID_PREFIX)")
	fs.StringVar(&f.etcd, "etcd", env("DEVICEID_ETCD", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated ($DEVICEID_ETCD)")
	fs.StringVar(&f.caCert, "ca-cert", env("DEVICEID_CA_CERT", "ca.pem"), "CA certificate, PEM ($DEVICEID_CA_CERT)")
	fs.StringVar(&f.caKey, "ca-key", env("DEVICEID_CA_KEY", "ca-key.pem"), "CA key, ECDSA P-256 or P-384: a PEM file, or a pkcs11: URI (RFC 7512) of a key in an HSM ($DEVICEID_CA_KEY)")
	fs.StringVar(&f.tlsCert, "tls-cert", env("DEVICEID_TLS_CERT", ""), "HTTPS server certificate, PEM; empty: one issued by the CA for the listen host ($DEVICEID_TLS_CERT)")
	fs.StringVar(&f.tlsKey, "tls-key", env("DEVICEID_TLS_KEY", ""), "HTTPS server key, PEM ($DEVICEID_TLS_KEY)")
	fs.StringVar(&f.tokenFile, "token-file", env("DEVICEID_TOKEN_FILE", ""), "file holding the admin API's bearer token; empty: no admin API ($DEVICEID_TOKEN_FILE)")
	fs.StringVar(&f.adminCA, "admin-ca", env("DEVICEID_ADMIN_CA", ""), "PEM CA(s) whose client certificates may use the admin API over mutual TLS ($DEVICEID_ADMIN_CA)")
	fs.DurationVar(&f.lifetime, "lifetime", signer.DefaultLifetime, "lifetime of issued device certificates")
}

// serve runs the signer's HTTPS server until SIGINT or SIGTERM.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var f serveFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f.zone == "" || fs.NArg() != 0 {
		return errors.New("-zone is required and no arguments are taken")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return f.run(ctx, nil)
}

// run serves until ctx ends; ready, when not nil, is told the address once listening.
func (f *serveFlags) run(ctx context.Context, ready chan<- string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(log) // the signer's handlers log through the default logger; never codes or tokens
	ca, err := signer.LoadCA(f.caCert, f.caKey, f.zone)
	if err != nil {
		return fmt.Errorf("loading the CA: %w", err)
	}
	ca.Lifetime = f.lifetime
	var token string
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return err
		}
		if token = strings.TrimSpace(string(b)); len(token) < 16 {
			return fmt.Errorf("%s: the token must be at least 16 characters", f.tokenFile)
		}
	}
	var adminCAs *x509.CertPool
	if f.adminCA != "" {
		b, err := os.ReadFile(f.adminCA)
		if err != nil {
			return err
		}
		adminCAs = x509.NewCertPool()
		if !adminCAs.AppendCertsFromPEM(b) {
			return fmt.Errorf("%s: no PEM certificate", f.adminCA)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(f.etcd, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	reg := &signer.Registry{Client: cli, Prefix: f.prefix, Zone: f.zone}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = reg.PutCA(pctx, ca)
	cancel()
	if err != nil {
		return fmt.Errorf("publishing the CA record: %w", err)
	}
	var cert tls.Certificate
	if f.tlsCert != "" {
		cert, err = tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	} else {
		host, _, _ := net.SplitHostPort(f.listen)
		if host == "" {
			host = "localhost"
		}
		cert, err = ca.ServerCertificate([]string{host}, time.Now())
	}
	if err != nil {
		return fmt.Errorf("HTTPS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           signer.Handler(ca, reg, token, adminCAs),
		TLSConfig:         signer.TLSConfig(cert),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("deviceid-signer serving", "addr", ln.Addr().String(), "zone", f.zone,
		"admin_token", token != "", "admin_mtls", adminCAs != nil, "ca_aki", ca.AKI())
	if ready != nil {
		ready <- ln.Addr().String()
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx) // finishes the requests under way
}
