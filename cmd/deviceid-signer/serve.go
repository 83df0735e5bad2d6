package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/keymgr"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// serveFlags are the settings of a running signer.
type serveFlags struct {
	etcdFlags
	caFlags
	listen, tlsCert, tlsKey string
	tokenFile, adminCA      string
	tenantCA, dns, replicas string
	metricsTokenFile        string
	retention               registry.Retention
	limits                  httpapi.Limits
	quotas                  *registry.Quotas
	manageKeys              bool   // run the zone's DNSSEC key manager (one signer at a time)
	kekFile                 string // the key-encryption key of the keys it makes
	keysHSM                 string // or the token it makes them in
	keysDSPush              string // the parent's server the DS is pushed to by UPDATE
	keysDSPushZone          string // its zone
	keysTSIG                string // the TSIG key of the UPDATE
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
	fs.StringVar(&f.replicas, "dns-replicas", env("DEVICEID_DNS_REPLICAS", ""), "host:port of every CoreDNS replica, separated by spaces or commas: the overview shows each one's serial and signatures; empty: -dns only ($DEVICEID_DNS_REPLICAS)")
	fs.StringVar(&f.metricsTokenFile, "metrics-token-file", env("DEVICEID_METRICS_TOKEN_FILE", ""), "file holding the bearer token /metrics requires; empty: /metrics is open ($DEVICEID_METRICS_TOKEN_FILE)")
	f.limits = httpapi.DefaultLimits
	fs.IntVar(&f.limits.MaxConnections, "max-connections", envInt("DEVICEID_MAX_CONNECTIONS", f.limits.MaxConnections), "connections served at once ($DEVICEID_MAX_CONNECTIONS)")
	fs.IntVar(&f.limits.MaxHeaderBytes, "max-header-bytes", envInt("DEVICEID_MAX_HEADER_BYTES", f.limits.MaxHeaderBytes), "bytes of a request's line and headers ($DEVICEID_MAX_HEADER_BYTES)")
	fs.Float64Var(&f.limits.FailuresPerSecond, "failures-per-second", envFloat("DEVICEID_FAILURES_PER_SECOND", f.limits.FailuresPerSecond), "refused (401, 403) requests a client address may make per second before it is answered 429 ($DEVICEID_FAILURES_PER_SECOND)")
	fs.IntVar(&f.limits.FailureBurst, "failure-burst", envInt("DEVICEID_FAILURE_BURST", f.limits.FailureBurst), "refused requests a client address may make at once ($DEVICEID_FAILURE_BURST)")
	f.quotas = registry.DefaultQuotas()
	fs.Float64Var(&f.quotas.TenantBytesPerSecond, "tenant-write-rate", envFloat("DEVICEID_TENANT_WRITE_RATE", f.quotas.TenantBytesPerSecond), "bytes a tenant (its tokens, certificates and devices) may write to etcd per second; 0: no bound ($DEVICEID_TENANT_WRITE_RATE)")
	fs.Float64Var(&f.quotas.TenantBurstBytes, "tenant-write-burst", envFloat("DEVICEID_TENANT_WRITE_BURST", f.quotas.TenantBurstBytes), "bytes a tenant may write at once ($DEVICEID_TENANT_WRITE_BURST)")
	fs.Float64Var(&f.quotas.DeviceWritesPerHour, "device-enrollments-per-hour", envFloat("DEVICEID_DEVICE_ENROLLMENTS_PER_HOUR", f.quotas.DeviceWritesPerHour), "enrollments a device may make for itself per hour (EST); 0: no bound ($DEVICEID_DEVICE_ENROLLMENTS_PER_HOUR)")
	fs.Float64Var(&f.quotas.DeviceWriteBurst, "device-enrollment-burst", envFloat("DEVICEID_DEVICE_ENROLLMENT_BURST", f.quotas.DeviceWriteBurst), "enrollments a device may make at once ($DEVICEID_DEVICE_ENROLLMENT_BURST)")
	f.retention = registry.DefaultRetention
	fs.DurationVar(&f.retention.MaxAge, "audit-max-age", envDuration("DEVICEID_AUDIT_MAX_AGE", f.retention.MaxAge), "delete audit entries older than this (0: keep) ($DEVICEID_AUDIT_MAX_AGE)")
	fs.BoolVar(&f.manageKeys, "keys", env("DEVICEID_KEYS", "") == "manage", "run the zone's DNSSEC key manager: one signer at a time, by an etcd election (deviceid-signer keys -h; $DEVICEID_KEYS=manage)")
	fs.StringVar(&f.keysHSM, "keys-hsm", env("DEVICEID_KEYS_HSM", ""), "with -keys: make new keys in this HSM token instead of wrapping them: a pkcs11: URI with module-path and pin-source, the token every replica's hsm line names ($DEVICEID_KEYS_HSM)")
	fs.StringVar(&f.keysDSPush, "keys-ds-push", env("DEVICEID_KEYS_DS_PUSH", ""), "with -keys: push the zone's DS to this server of the parent (host:port) by RFC 2136 UPDATE, with -keys-ds-push-zone and -keys-tsig ($DEVICEID_KEYS_DS_PUSH)")
	fs.StringVar(&f.keysDSPushZone, "keys-ds-push-zone", env("DEVICEID_KEYS_DS_PUSH_ZONE", ""), "with -keys-ds-push: the parent zone the UPDATE is for ($DEVICEID_KEYS_DS_PUSH_ZONE)")
	fs.StringVar(&f.keysTSIG, "keys-tsig", env("DEVICEID_KEYS_TSIG", ""), "with -keys-ds-push: a file (mode 600) holding the TSIG key of the UPDATE, [algorithm:]name:base64-secret ($DEVICEID_KEYS_TSIG)")
	fs.StringVar(&f.kekFile, "kek", env("DEVICEID_KEK", ""), "with -keys: the key-encryption key file the new keys are wrapped under, the one every CoreDNS replica holds ($DEVICEID_KEK)")
	fs.IntVar(&f.retention.MaxCount, "audit-max-entries", envInt("DEVICEID_AUDIT_MAX_ENTRIES", f.retention.MaxCount), "keep at most this many audit entries of each tenant (and as many of the operator's), deleting the oldest (0: no limit) ($DEVICEID_AUDIT_MAX_ENTRIES)")
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
	if err := checkDNSAddrs(f.dns, f.replicas); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return f.run(ctx, nil)
}

// checkDNSAddrs refuses a -dns or -dns-replicas address that is not host:port: the
// overview would otherwise show the replica as failing for a typing error.
func checkDNSAddrs(dns, replicas string) error {
	check := func(flag, a string) error {
		host, port, err := net.SplitHostPort(a)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%s %q: want host:port (such as 127.0.0.1:53 or [::1]:53)", flag, a)
		}
		return nil
	}
	if dns != "" {
		if err := check("-dns", dns); err != nil {
			return err
		}
	}
	for _, r := range etcdclient.SplitEndpoints(replicas) {
		if err := check("-dns-replicas", r); err != nil {
			return err
		}
	}
	return nil
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

// readToken reads a bearer token from file; "" for no file.
func readToken(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", fmt.Errorf("%s: the token must be at least 16 characters", file)
	}
	return token, nil
}

// separateRoles refuses CA files that would give one role's certificates another's
// power: the device CA (or a CA above it) among the operator's or the tenants' CAs
// makes every device the operator or a tenant, and an operator CA among the tenants'
// makes every tenant the operator.
func separateRoles(authority *ca.CA, adminFile string, admins *x509.CertPool, tenantFile string, tenants *x509.CertPool) error {
	chains := func(cert *x509.Certificate, roots *x509.CertPool) bool {
		if roots == nil {
			return false
		}
		inter := x509.NewCertPool()
		for _, c := range authority.Chain {
			inter.AddCert(c)
		}
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	}
	if chains(authority.Cert, admins) {
		return fmt.Errorf("-admin-ca %s holds the device CA (or a CA above it): every device would act as the registry operator; give the operator's client certificates a CA of their own", adminFile)
	}
	if chains(authority.Cert, tenants) {
		return fmt.Errorf("-tenant-ca %s holds the device CA (or a CA above it): every device would act as a tenant; give tenants' client certificates a CA of their own", tenantFile)
	}
	if tenantFile != "" && admins != nil {
		b, _ := os.ReadFile(tenantFile)
		for rest := b; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			if c, err := x509.ParseCertificate(block.Bytes); err == nil && chains(c, admins) {
				return fmt.Errorf("-tenant-ca %s holds a CA of -admin-ca %s: every tenant would act as the registry operator", tenantFile, adminFile)
			}
		}
	}
	return nil
}

// compactAudit applies the audit trail's retention hourly until ctx ends. Several
// signers may do it at once: deleting a range twice is harmless.
func compactAudit(ctx context.Context, reg *registry.Registry, keep registry.Retention) {
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
	authority, err := f.load(f.zone)
	if err != nil {
		return err
	}
	token, err := readToken(f.tokenFile)
	if err != nil {
		return err
	}
	metricsToken, err := readToken(f.metricsTokenFile)
	if err != nil {
		return err
	}
	adminCAs, err := certPool(f.adminCA)
	if err != nil {
		return err
	}
	tenantCAs, err := certPool(f.tenantCA)
	if err != nil {
		return err
	}
	if err := separateRoles(authority, f.adminCA, adminCAs, f.tenantCA, tenantCAs); err != nil {
		return err
	}
	var keyKEK *kek.KEK // checked before anything starts
	if f.manageKeys && f.kekFile != "" {
		if keyKEK, err = kek.Load(f.kekFile); err != nil {
			return err
		}
	}
	dsPush, err := f.dsPush()
	if err != nil {
		return err
	}
	if f.manageKeys && f.keysHSM != "" {
		if err := pkcs11key.CheckToken(f.keysHSM); err != nil {
			return fmt.Errorf("-keys-hsm: %v", err)
		}
	}
	reg := &registry.Registry{Prefix: f.prefix, Zone: f.zone, Quotas: f.quotas}
	if reg.Client, err = settings.Connect(ctx, 10*time.Second, reg.ZonePrefix()); err != nil {
		return err
	}
	defer reg.Client.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = reg.PutCA(pctx, authority)
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
		cert, err = authority.ServerCertificate(hosts, time.Now())
	}
	if err != nil {
		return fmt.Errorf("HTTPS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	server := &httpapi.Server{API: httpapi.API{CA: authority, Registry: reg, Token: token, AdminCAs: adminCAs, TenantCAs: tenantCAs,
		DNS: f.dns, Replicas: etcdclient.SplitEndpoints(f.replicas)}, Etcd: settings, MetricsToken: metricsToken, Limits: f.limits}
	srv, ln := server.HTTPServer(ln, cert, slog.NewLogLogger(log.Handler(), slog.LevelWarn))
	log.Info("deviceid-signer serving", "addr", ln.Addr().String(), "zone", f.zone,
		"admin_token", token != "", "admin_mtls", adminCAs != nil, "tenant_mtls", tenantCAs != nil, "ca_aki", authority.AKI())
	if ready != nil {
		ready <- ln.Addr().String()
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	go compactAudit(ctx, reg, f.retention)
	if f.manageKeys {
		host, _ := os.Hostname()
		m := &keymgr.Manager{Registry: reg, KEK: keyKEK, HSM: f.keysHSM, Push: dsPush, Actor: registry.OperatorActor("keymgr"), Log: log}
		go m.Run(ctx, fmt.Sprintf("%s/%d", host, os.Getpid()), 10*time.Second, 10)
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx) // finishes the requests under way
}

// dsPush reads where the key manager pushes the DS (nil: nowhere).
func (f *serveFlags) dsPush() (*keymgr.ParentUpdate, error) {
	if f.keysDSPush == "" && f.keysDSPushZone == "" && f.keysTSIG == "" {
		return nil, nil
	}
	if !f.manageKeys || f.keysDSPush == "" || f.keysDSPushZone == "" || f.keysTSIG == "" {
		return nil, errors.New("pushing the DS needs -keys with -keys-ds-push, -keys-ds-push-zone and -keys-tsig")
	}
	if _, _, err := net.SplitHostPort(f.keysDSPush); err != nil {
		return nil, fmt.Errorf("-keys-ds-push %q: want host:port", f.keysDSPush)
	}
	parent, zone := dns.Fqdn(strings.ToLower(f.keysDSPushZone)), dns.Fqdn(strings.ToLower(f.zone))
	if _, ok := dns.IsDomainName(parent); !ok || parent == zone || !dns.IsSubDomain(parent, zone) {
		return nil, fmt.Errorf("-keys-ds-push-zone %q is not a zone above %s", f.keysDSPushZone, f.zone)
	}
	key, err := keymgr.LoadTSIG(f.keysTSIG)
	if err != nil {
		return nil, fmt.Errorf("-keys-tsig: %v", err)
	}
	return &keymgr.ParentUpdate{Server: f.keysDSPush, Zone: parent, TSIG: key}, nil
}
