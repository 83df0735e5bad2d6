package keymgr

// The DS pushed to the parent by RFC 2136 UPDATE, for parents that take updates
// (like Knot's ds-push): the manager sends the DS of the keys whose CDS the zone
// publishes whenever the parent's servers agree on another set, and then waits for
// them to serve it as it does for a parent that scans the CDS. Where to push and the
// TSIG key are the signer's own settings, never etcd's; and a key's DS is pushed only
// once the manager has opened its private key and found it the DNSKEY's, as the
// replicas do before they publish its CDS: a record written into etcd by someone
// without the KEK or the HSM reaches the parent no more than the zone.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// ParentUpdate is the parent's primary server that takes the zone's DS by UPDATE.
type ParentUpdate struct {
	Server string // host:port
	Zone   string // the parent zone, the UPDATE's zone
	TSIG   TSIG
}

// TSIG is the key UPDATEs are signed with: kept in a file of the signer's, never in
// etcd.
type TSIG struct {
	Algorithm, Name, Secret string
}

// ParseTSIG reads a TSIG key as nsupdate -y and BIND's tools write it:
// [algorithm:]name:base64-secret, the algorithm hmac-sha256 when not given.
func ParseTSIG(s string) (TSIG, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) == 2 {
		parts = append([]string{"hmac-sha256"}, parts...)
	}
	if len(parts) != 3 || parts[1] == "" {
		return TSIG{}, errors.New("a TSIG key is [algorithm:]name:base64-secret")
	}
	alg := map[string]string{"hmac-sha256": dns.HmacSHA256, "hmac-sha384": dns.HmacSHA384, "hmac-sha512": dns.HmacSHA512}[strings.ToLower(parts[0])]
	if alg == "" {
		return TSIG{}, fmt.Errorf("TSIG algorithm %q is not hmac-sha256, hmac-sha384 or hmac-sha512", parts[0])
	}
	if b, err := base64.StdEncoding.DecodeString(parts[2]); err != nil || len(b) < 16 {
		return TSIG{}, errors.New("the TSIG secret is not base64 of at least 16 bytes")
	}
	if _, ok := dns.IsDomainName(parts[1]); !ok {
		return TSIG{}, fmt.Errorf("TSIG key name %q is not a domain name", parts[1])
	}
	return TSIG{Algorithm: alg, Name: dns.Fqdn(strings.ToLower(parts[1])), Secret: parts[2]}, nil
}

// LoadTSIG reads a TSIG key from a file only its owner reads.
func LoadTSIG(file string) (TSIG, error) {
	info, err := os.Stat(file)
	if err != nil {
		return TSIG{}, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return TSIG{}, fmt.Errorf("%s is readable by others (mode %o): chmod 600 it", file, info.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return TSIG{}, err
	}
	k, err := ParseTSIG(string(b))
	if err != nil {
		return TSIG{}, fmt.Errorf("%s: %v", file, err)
	}
	return k, nil
}

// pushed is the last DS set pushed (or tried): the same set is not sent again
// within the DS TTL.
type pushed struct {
	set string
	at  time.Time
}

// pushDSIfNeeded sends the parent the DS set the zone's CDS asks for when the parent
// serves another, and returns what it waits for (nothing when done or not needed).
func (m *Manager) pushDSIfNeeded(ctx context.Context, p Policy, keys []Key, parent Parent, now time.Time) []string {
	zone := m.Registry.Zone
	var want []*dns.DS
	for _, k := range keys {
		if !k.Rec.Syncs(now) {
			continue
		}
		dk, err := k.Rec.PublicKey(zone)
		if err != nil {
			continue
		}
		if err := m.opens(k, dk); err != nil {
			return []string{fmt.Sprintf("the DS of key %s to be pushed: %v", k.ID, err)}
		}
		want = append(want, dk.ToDS(dns.SHA256))
	}
	if len(want) == 0 || sameDS(parent.DS, want) {
		return nil
	}
	// A set that keeps none of the DS the parent serves would cut the chain at once.
	if len(parent.DS) > 0 && !slices.ContainsFunc(want, func(d *dns.DS) bool { return containsDS(parent.DS, d) }) {
		return []string{"the DS pushed to keep one of the parent's DS: the zone asks for none of them (give the parent the DS by hand)"}
	}
	set := dsKey(want)
	if m.lastPush.set == set && now.Sub(m.lastPush.at) < max(p.DSTTL.D(), time.Minute) {
		return []string{"the parent to serve the DS pushed at " + m.lastPush.at.UTC().Format(time.RFC3339)}
	}
	m.lastPush = pushed{set: set, at: now}
	err := pushDS(ctx, *m.Push, zone, want, p.DSTTL.D())
	dsPushes.WithLabelValues(zone, map[bool]string{true: "ok", false: "failed"}[err == nil]).Inc()
	if err != nil {
		return []string{"the parent to take the DS update: " + err.Error()}
	}
	if m.Log != nil {
		m.Log.Info("dnssec key manager: DS pushed to the parent", "zone", zone, "server", m.Push.Server, "ds", len(want))
	}
	return nil
}

// opens checks that the manager opens k's private key and that it is the DNSKEY's.
func (m *Manager) opens(k Key, dk *dns.DNSKEY) error {
	var pub crypto.PublicKey
	switch {
	case k.Rec.Private.PKCS11 != "":
		if m.HSM == "" {
			return errors.New("its private key is in an HSM, and this signer has no -keys-hsm")
		}
		uri, err := pkcs11key.InToken(m.HSM, k.Rec.Private.PKCS11)
		if err != nil {
			return err
		}
		if pkcs11key.Label(uri) != record.WrapBinding(m.Registry.Zone, k.ID) {
			return errors.New("its record names a key made for another record")
		}
		hk, err := pkcs11key.Open(uri, elliptic.P256())
		if err != nil {
			return err
		}
		pub = hk.Public()
		hk.Close()
	case m.KEK == nil:
		return errors.New("its private key is wrapped, and this signer has no -kek")
	default:
		der, err := m.KEK.Unwrap(k.Rec.Private.Wrapped, k.Rec.Private.KEK, record.WrapBinding(m.Registry.Zone, k.ID))
		if err != nil {
			return err
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return err
		}
		s, ok := priv.(crypto.Signer)
		if !ok {
			return fmt.Errorf("the unwrapped key is a %T", priv)
		}
		pub = s.Public()
	}
	var want *dns.DNSKEY
	var err error
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		want, err = dnskey.FromECDSA(dk.Hdr.Name, p, dk.Flags&dns.SEP != 0)
	case ed25519.PublicKey:
		want = &dns.DNSKEY{Algorithm: dns.ED25519, PublicKey: base64.StdEncoding.EncodeToString(p)}
	default:
		err = fmt.Errorf("a %T key", pub)
	}
	if err != nil || want.Algorithm != dk.Algorithm || want.PublicKey != dk.PublicKey {
		return errors.New("its private key is not the DNSKEY's")
	}
	return nil
}

func containsDS(set []*dns.DS, d *dns.DS) bool {
	return slices.ContainsFunc(set, func(x *dns.DS) bool { return sameDS([]*dns.DS{x}, []*dns.DS{d}) })
}

// dsKey is a DS set in a form to compare.
func dsKey(ds []*dns.DS) string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%d %d %d %s", d.KeyTag, d.Algorithm, d.DigestType, strings.ToUpper(d.Digest)))
	}
	slices.Sort(out)
	return strings.Join(slices.Compact(out), "\n")
}

// sameDS reports whether two DS sets are alike.
func sameDS(a, b []*dns.DS) bool { return dsKey(a) == dsKey(b) }

// pushDS makes ds the zone's DS set at the parent by one UPDATE: the old set deleted
// and the new added in one transaction. It never sends an empty set (that would
// make the zone insecure).
func pushDS(ctx context.Context, pu ParentUpdate, zone string, ds []*dns.DS, ttl time.Duration) error {
	if len(ds) == 0 {
		return errors.New("no DS to push: the zone asks for none")
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(pu.Zone))
	m.RemoveRRset([]dns.RR{&dns.DS{Hdr: dns.RR_Header{Name: dns.Fqdn(zone), Rrtype: dns.TypeDS, Class: dns.ClassINET}}})
	var add []dns.RR
	for _, d := range ds {
		c := *d
		c.Hdr = dns.RR_Header{Name: dns.Fqdn(zone), Rrtype: dns.TypeDS, Class: dns.ClassINET, Ttl: uint32(ttl / time.Second)}
		add = append(add, &c)
	}
	m.Insert(add)
	m.SetTsig(pu.TSIG.Name, pu.TSIG.Algorithm, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second, TsigSecret: map[string]string{pu.TSIG.Name: pu.TSIG.Secret}}
	r, _, err := c.ExchangeContext(ctx, m, pu.Server)
	if errors.Is(err, dns.ErrAuth) || errors.Is(err, dns.ErrSig) {
		return fmt.Errorf("UPDATE to %s: its answer is not signed with TSIG key %s (a parent that does not know the key or its secret answers NOTAUTH unsigned): %v", pu.Server, pu.TSIG.Name, err)
	}
	if err != nil {
		return fmt.Errorf("UPDATE to %s: %v", pu.Server, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("UPDATE to %s: %s", pu.Server, dns.RcodeToString[r.Rcode])
	}
	return nil
}
