package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/devpki"
	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/embedetcd"
	"github.com/deviceid/deviceid/plugin/record"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// dev runs an embedded etcd holding a CA record and sample devices until interrupted.
func dev(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	dataDir := fs.String("data", ".deviceid-dev", "directory for etcd's data and the dev CA")
	clientURL := fs.String("etcd", "http://127.0.0.1:2379", "URL etcd serves clients on")
	peerURL := fs.String("etcd-peer", "http://127.0.0.1:2380", "URL etcd serves peers on")
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
	ca, err := loadOrCreateCA(*dataDir)
	if err != nil {
		return err
	}
	if err := seed(cli, ca, *prefix, *zone); err != nil {
		return fmt.Errorf("writing sample devices: %w", err)
	}

	fmt.Printf("etcd serving on %s, data in %s; sample devices in zone %s:\n", *clientURL, *dataDir, *zone)
	for _, s := range samples {
		fmt.Printf("  %-16s %s\n", s.name, s.status)
	}
	fmt.Printf("CA discovery record: %s\n", record.CAOwner(record.KeyID(ca.Cert.SubjectKeyId), *zone))
	fmt.Printf("DNSSEC key %s (.key, .private); its DS, the trust anchor for validators:\n%s\n",
		filepath.Join(*dataDir, zoneKeyName(*zone)), ds)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	select {
	case <-stop:
	case err := <-e.Err():
		return err
	}
	return nil
}

// samples are the dev stack's devices: one of each kind of answer.
var samples = []struct{ name, status string }{
	{"sensor7", record.StatusActive},
	{"sensor8", record.StatusRevoked},
	{"c90a.airquality", record.StatusActive},
}

// seed writes the CA record and the sample devices that are not there yet.
func seed(cli *clientv3.Client, ca *devpki.CA, prefix, zone string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	aki := record.KeyID(ca.Cert.SubjectKeyId)
	if err := putIfAbsent(ctx, cli, record.CAKey(prefix, zone, aki), ca.PEM()); err != nil {
		return err
	}
	for _, s := range samples {
		owner, err := record.DeviceOwner(s.name, zone)
		if err != nil {
			return err
		}
		key, err := devpki.NewDeviceKey()
		if err != nil {
			return err
		}
		der, err := ca.Issue(owner[:len(owner)-1], key.Public(), time.Now().AddDate(1, 0, 0))
		if err != nil {
			return err
		}
		d := record.Device{Version: record.Version, Credentials: []record.Credential{{Cert: der, Status: s.status}}}
		if s.status == record.StatusRevoked {
			now := time.Now().UTC()
			d.Credentials[0].RevokedAt, d.Credentials[0].Reason = &now, "keyCompromise"
		}
		value, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if err := putIfAbsent(ctx, cli, record.DeviceKey(prefix, zone, s.name), value); err != nil {
			return err
		}
	}
	return nil
}

func putIfAbsent(ctx context.Context, cli *clientv3.Client, key string, value []byte) error {
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Commit()
	return err
}

// zoneKeyName is the base name of the dev zone's DNSSEC key in the data directory:
// fixed, so that corefile/dev.Corefile can name it.
func zoneKeyName(zone string) string { return "K" + strings.TrimSuffix(zone, ".") }

// loadOrCreateZoneKey keeps a DNSSEC key (a CSK) for the dev zone in the data
// directory, and writes its DS as a trust anchor file for delv (anchors.conf).
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
func loadOrCreateCA(dir string) (*devpki.CA, error) {
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certPEM, err := os.ReadFile(certFile)
	if errors.Is(err, os.ErrNotExist) {
		ca, err := devpki.NewCA("deviceid dev CA")
		if err != nil {
			return nil, err
		}
		keyDER, err := x509.MarshalECPrivateKey(ca.Key)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return nil, err
		}
		return ca, os.WriteFile(certFile, ca.PEM(), 0o644)
	}
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return &devpki.CA{Cert: cert, Key: key}, nil
}
