package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/embedetcd"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// dev runs an embedded etcd holding a CA record and sample devices until interrupted.
func dev(args []string) error {
	fs := command("dev", "[flags]",
		"Runs everything for a laptop in one process: an embedded etcd, a CA, a DNSSEC key, sample devices,\n"+
			"the signer (EST and the admin API) and a demo service that authenticates devices by DANE.",
		"deviceid-signer dev -data .deviceid-dev")
	dataDir := fs.String("data", ".deviceid-dev", "directory for etcd's data and the dev CA")
	clientURL := fs.String("etcd", "http://127.0.0.1:2379", "URL etcd serves clients on")
	peerURL := fs.String("etcd-peer", "http://127.0.0.1:2380", "URL etcd serves peers on")
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS address for EST and the admin API")
	demo := fs.String("demo", "127.0.0.1:8444", "HTTPS address of the demo service that authenticates devices by DANE")
	dnsServer := fs.String("dns", "127.0.0.1:1053", "the dev CoreDNS, which the demo service asks")
	zone := fs.String("zone", "iot.example", "zone of the sample devices")
	prefix := fs.String("prefix", "/deviceid", "etcd prefix of deviceid's records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return err
	}
	// The key first: make run starts CoreDNS, which reads it, once etcd answers.
	ds, err := loadOrCreateZoneKey(*dataDir, *zone)
	if err != nil {
		return fmt.Errorf("DNSSEC key: %w", err)
	}
	e, err := embedetcd.Start(embedetcd.Config{Dir: filepath.Join(*dataDir, "etcd"), ClientURL: *clientURL, PeerURL: *peerURL})
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*clientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	authority, err := loadOrCreateCA(*dataDir, *zone)
	if err != nil {
		return err
	}
	reg := &registry.Registry{Client: cli, Prefix: *prefix, Zone: *zone}
	demoToken, err := demoTenant(reg, filepath.Join(*dataDir, "demo-token"))
	if err != nil {
		return fmt.Errorf("the demo tenant: %w", err)
	}
	if err := seed(reg, authority); err != nil {
		return fmt.Errorf("writing sample devices: %w", err)
	}
	if err := mqttDemo(reg, authority, *dataDir, *zone); err != nil {
		return fmt.Errorf("the MQTT demo: %w", err)
	}

	fmt.Printf("etcd serving on %s, data in %s; sample devices in zone %s:\n", *clientURL, *dataDir, *zone)
	for _, s := range samples {
		fmt.Printf("  %-16s %s\n", s.name, s.status)
	}
	fmt.Printf("CA discovery record: %s\n", record.CAOwner(authority.AKI(), *zone))
	fmt.Printf("DNSSEC key %s (.key, .private); its DS, the trust anchor for validators:\n%s\n",
		filepath.Join(*dataDir, zoneKeyName(*zone)), ds)

	token, err := loadOrCreateToken(filepath.Join(*dataDir, "admin-token"))
	if err != nil {
		return err
	}
	srv := serveFlags{
		etcdFlags: etcdFlags{zone: *zone, prefix: *prefix, endpoints: *clientURL},
		caFlags:   caFlags{caCert: filepath.Join(*dataDir, ca.CACertFile), caKey: filepath.Join(*dataDir, ca.CAKeyFile), lifetime: ca.DefaultLifetime},
		listen:    *listen, tokenFile: filepath.Join(*dataDir, "admin-token"), dns: *dnsServer,
		retention: registry.DefaultRetention, quotas: registry.DefaultQuotas(),
	}
	fmt.Printf("EST and the admin API on https://%s (CA: %s)\n", *listen, srv.caCert)
	fmt.Printf("  operator bearer token (in %s): %s\n", srv.tokenFile, token)
	fmt.Printf("  tenant %q bearer token (in %s): %s\n", demoTenantName, filepath.Join(*dataDir, "demo-token"), demoToken)
	fmt.Printf("web console: https://%s/console/ (sign in with a token above)\n", *listen)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 2)
	go func() { served <- srv.run(ctx, nil) }()
	go func() { served <- demoService(ctx, *demo, *zone, *dnsServer, ds, authority) }()
	fmt.Printf("demo service authenticating devices by DANE on https://%s\n", *demo)
	select {
	case err := <-served:
		return err
	case err := <-e.Err():
		return err
	}
}

// The MQTT demo of make run: the demo tenant's broker and a simulated device.
const (
	demoBrokerService = "_8883._tcp.mqtt." + demoTenantName // its TLSA RRset, under the zone
	demoDevice        = "thermo-sim"
)

// mqttDemo writes the broker's certificate and key (from the dev CA, for
// mqtt.demo.<zone>) unless they are there, publishes its key as the demo tenant's
// service, and leaves an enrollment code for the simulated device while it has no
// certificate yet (make run starts both: scripts/run-dev.sh).
func mqttDemo(reg *registry.Registry, authority *ca.CA, dir, zone string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	certFile, keyFile := filepath.Join(dir, "broker.pem"), filepath.Join(dir, "broker-key.pem")
	if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
		cert, err := authority.ServerCertificate([]string{"mqtt." + demoTenantName + "." + strings.TrimSuffix(zone, ".")}, time.Now())
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			return err
		}
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return fmt.Errorf("%s: not PEM", certFile)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	demo := registry.Actor{ID: "dev", Tenant: demoTenantName}
	if _, err := reg.PublishServiceKey(ctx, demo, demoBrokerService, "", leaf.RawSubjectPublicKeyInfo); err != nil {
		return err
	}
	codeFile := filepath.Join(dir, demoDevice+".code")
	if _, err := os.Stat(filepath.Join(dir, demoDevice, "device.pem")); err == nil {
		return os.WriteFile(codeFile, nil, 0o600) // enrolled: no code needed
	}
	code, _, err := reg.IssueCode(ctx, demo, demoDevice, "", registry.DefaultCodeLifetime)
	if err != nil {
		return err
	}
	return os.WriteFile(codeFile, []byte(code+"\n"), 0o600)
}

// demoTenantName is the tenant the dev stack makes, and that owns its sample devices.
const demoTenantName = "demo"

// demoTenant makes the demo tenant and keeps a token of it in file, issuing a new
// one when the file's token no longer works (a fresh etcd).
func demoTenant(reg *registry.Registry, file string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	operator := registry.OperatorActor("dev")
	if _, err := reg.CreateTenant(ctx, operator, demoTenantName); err != nil {
		return "", err
	}
	if b, err := os.ReadFile(file); err == nil {
		if _, err := reg.Authenticate(ctx, strings.TrimSpace(string(b))); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
	}
	tok, err := reg.IssueToken(ctx, operator, demoTenantName, "deviceid-signer dev")
	if err != nil {
		return "", err
	}
	return tok.Secret, os.WriteFile(file, []byte(tok.Secret+"\n"), 0o600)
}

// samples are the dev stack's devices, the demo tenant's: one of each kind of answer.
var samples = []struct{ name, status string }{
	{"sensor7", record.StatusActive},
	{"sensor8", record.StatusRevoked},
	{"c90a.airquality", record.StatusActive},
}

// seed publishes the CA and enrolls the sample devices that are not there yet,
// through the enrollment workflow the signer's APIs use.
func seed(reg *registry.Registry, authority *ca.CA) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := reg.PutCA(ctx, authority); err != nil {
		return err
	}
	for _, s := range samples {
		if _, _, err := reg.Get(ctx, s.name); !errors.Is(err, registry.ErrNotFound) {
			continue // there already (or unreadable: left as it is)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			return err
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return err
		}
		if _, err := (&registry.Enroller{CA: authority, Registry: reg}).Enroll(ctx, registry.Enrollment{Device: s.name, CSR: csr, Actor: registry.OperatorActor("dev"), Tenant: demoTenantName}); err != nil {
			return err
		}
		if s.status == record.StatusRevoked {
			if _, err := reg.Revoke(ctx, registry.OperatorActor("dev"), s.name, nil, "keyCompromise"); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadOrCreateToken keeps the dev admin API's bearer token in a file.
func loadOrCreateToken(file string) (string, error) {
	if _, err := writeToken(file); err != nil {
		return "", err
	}
	b, err := os.ReadFile(file)
	return strings.TrimSpace(string(b)), err
}

// zoneKeyName is the base name of the dev zone's DNSSEC key in the data directory:
// fixed, so that corefile/dev.Corefile can name it.
func zoneKeyName(zone string) string { return "K" + strings.TrimSuffix(zone, ".") }

// loadOrCreateZoneKey keeps a DNSSEC key (a CSK) for the dev zone in the data
// directory, and writes its DS as a record (ds.txt) and as a trust anchor file for
// delv (anchors.conf).
func loadOrCreateZoneKey(dir, zone string) (*dns.DS, error) {
	base := filepath.Join(dir, zoneKeyName(zone))
	if _, err := os.Stat(base + ".key"); errors.Is(err, os.ErrNotExist) {
		if err := generateZoneKey(dir, zone, base); err != nil {
			return nil, err
		}
	}
	pub, err := os.ReadFile(base + ".key")
	if err != nil {
		return nil, err
	}
	var k *dns.DNSKEY
	for line := range strings.SplitSeq(string(pub), "\n") {
		if rr, err := dns.NewRR(line); err == nil && rr != nil {
			k, _ = rr.(*dns.DNSKEY)
		}
	}
	if k == nil {
		return nil, fmt.Errorf("%s.key holds no DNSKEY", base)
	}
	ds := k.ToDS(dns.SHA256)
	anchors := fmt.Sprintf("trust-anchors {\n  %s static-ds %d %d %d \"%s\";\n};\n", ds.Hdr.Name, ds.KeyTag, ds.Algorithm, ds.DigestType, ds.Digest)
	if err := os.WriteFile(filepath.Join(dir, "ds.txt"), []byte(ds.String()+"\n"), 0o644); err != nil {
		return nil, err
	}
	return ds, os.WriteFile(filepath.Join(dir, "anchors.conf"), []byte(anchors), 0o644)
}

// generateZoneKey makes a key pair and gives its files the fixed base name.
func generateZoneKey(dir, zone, base string) error {
	generated, _, err := dnskey.Generate(dir, zone, dns.ECDSAP256SHA256, true)
	if err != nil {
		return err
	}
	for _, ext := range []string{".key", ".private"} {
		if err := os.Rename(generated+ext, base+ext); err != nil {
			return err
		}
	}
	return nil
}

// loadOrCreateCA keeps the dev CA in the data directory, so the sample devices stay
// valid across restarts.
func loadOrCreateCA(dir, zone string) (*ca.CA, error) {
	certFile, keyFile := filepath.Join(dir, ca.CACertFile), filepath.Join(dir, ca.CAKeyFile)
	if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
		return ca.InitCA(dir, "deviceid dev CA", zone, elliptic.P256(), "")
	}
	return ca.LoadCA(certFile, keyFile, zone)
}
