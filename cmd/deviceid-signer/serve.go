package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
)

// serveFlags are the settings of a running signer.
type serveFlags struct {
	etcdFlags
	caFlags
	listen, tlsCert, tlsKey string
	tokenFile, adminCA      string
	tenantCA, dns           string
	retention               signer.Retention
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	f.etcdFlags.register(fs)
	f.caFlags.register(fs)
	fs.StringVar(&f.listen, "listen", env("DEVICEID_LISTEN", "127.0.0.1:8443"), "HTTPS address for EST, the admin API, /healthz and /metrics ($DEVICEID_LISTEN)")
	fs.StringVar(&f.tlsCert, "tls-cert", env("DEVICEID_TLS_CERT", ""), "HTTPS server certificate, PEM; empty: one issued by the CA for the listen host ($DEVICEID_TLS_CERT)")
	fs.StringVar(&f.tlsKey, "tls-key", env("DEVICEID_TLS_KEY", ""), "HTTPS server key, PEM ($DEVICEID_TLS_KEY)")
	fs.StringVar(&f.tokenFile, "token-file", env("DEVICEID_TOKEN_FILE", ""), "file holding the admin API's bearer token (init-ca writes one); empty: no admin API by token ($DEVICEID_TOKEN_FILE)")
	fs.StringVar(&f.adminCA, "admin-ca", env("DEVICEID_ADMIN_CA", ""), "PEM CA(s) whose client certificates act as the registry operator over mutual TLS ($DEVICEID_ADMIN_CA)")
	fs.StringVar(&f.tenantCA, "tenant-ca", env("DEVICEID_TENANT_CA", ""), "PEM CA(s) whose client certificates act as the tenant their Subject Organization (O) names ($DEVICEID_TENANT_CA)")
	fs.StringVar(&f.dns, "dns", env("DEVICEID_DNS", ""), "host:port of a CoreDNS serving the zone, for the console's and API's view of what DNS serves ($DEVICEID_DNS)")
	f.retention = signer.DefaultRetention
	fs.DurationVar(&f.retention.MaxAge, "audit-max-age", f.retention.MaxAge, "delete audit entries older than this (0: keep)")
	fs.IntVar(&f.retention.MaxCount, "audit-max-entries", f.retention.MaxCount, "keep at most this many audit entries, deleting the oldest (0: no limit)")
}

// serve runs the signer's HTTPS server until SIGINT or SIGTERM.
func serve(args []string) error {
	fs := command("serve", "-zone ZONE [flags]",
		"Serves EST, the admin API, PKIX-CD CA discovery, /healthz and /metrics over HTTPS.",
		"deviceid-signer serve -zone iot.example -etcd https://etcd1:2379,https://etcd2:2379 -etcd-cert client.pem -etcd-key client-key.pem -etcd-ca etcd-ca.pem -token-file admin-token")
	var f serveFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return f.run(ctx, nil)
}

// certPool reads PEM CA certificates; nil for no file.
func certPool(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", file)
	}
	return pool, nil
}

// compactAudit applies the audit trail's retention hourly until ctx ends. Several
// signers may do it at once: deleting a range twice is harmless.
func compactAudit(ctx context.Context, reg *signer.Registry, keep signer.Retention) {
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		n, err := reg.CompactAudit(cctx, keep)
		cancel()
		if err != nil && ctx.Err() == nil {
			slog.Warn("audit retention", "err", err)
		} else if n > 0 {
			slog.Info("audit retention: deleted old entries", "entries", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}

// run serves until ctx ends; ready, when not nil, is told the address once listening.
func (f *serveFlags) run(ctx context.Context, ready chan<- string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(log) // the signer's handlers log through the default logger; never codes or tokens
	settings, err := f.settings()
	if err != nil {
		return err
	}
	ca, err := f.load(f.zone)
	if err != nil {
		return err
	}
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
	adminCAs, err := certPool(f.adminCA)
	if err != nil {
		return err
	}
	tenantCAs, err := certPool(f.tenantCA)
	if err != nil {
		return err
	}
	reg := &signer.Registry{Prefix: f.prefix, Zone: f.zone}
	if reg.Client, err = settings.Connect(ctx, 10*time.Second, reg.ZonePrefix()); err != nil {
		return err
	}
	defer reg.Client.Close()
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
		// Without a certificate of its own, the signer gets one from its CA for the
		// listen host, or for this host's names when it listens on all addresses.
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		if host, _, _ := net.SplitHostPort(f.listen); host != "" {
			hosts = []string{host}
		} else if name, err := os.Hostname(); err == nil {
			hosts = append(hosts, name)
		}
		cert, err = ca.ServerCertificate(hosts, time.Now())
	}
	if err != nil {
		return fmt.Errorf("HTTPS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           (&signer.Server{CA: ca, Registry: reg, Token: token, AdminCAs: adminCAs, TenantCAs: tenantCAs, DNS: f.dns, Etcd: settings}).Handler(),
		TLSConfig:         signer.TLSConfig(cert),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("deviceid-signer serving", "addr", ln.Addr().String(), "zone", f.zone,
		"admin_token", token != "", "admin_mtls", adminCAs != nil, "tenant_mtls", tenantCAs != nil, "ca_aki", ca.AKI())
	if ready != nil {
		ready <- ln.Addr().String()
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	go compactAudit(ctx, reg, f.retention)
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx) // finishes the requests under way
}
