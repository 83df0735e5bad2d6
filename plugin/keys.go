package deviceid

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"

	"github.com/miekg/dns"
)

// key is one DNSSEC key pair of a zone, from BIND-format files or in an HSM.
type key struct {
	dnskey *dns.DNSKEY
	signer crypto.Signer
	tag    uint16
}

// sep reports whether the key has the Secure Entry Point flag (a KSK or CSK).
func (k *key) sep() bool { return k.dnskey.Flags&dns.SEP != 0 }

// loadKey reads the key pair NAME.key and NAME.private (NAME may end in either).
func loadKey(name string) (*key, error) {
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".key"), ".private")
	pub, err := os.ReadFile(base + ".key")
	if err != nil {
		return nil, err
	}
	rr, err := dns.NewRR(stripComments(string(pub)))
	if err != nil {
		return nil, fmt.Errorf("%s.key: %v", base, err)
	}
	dk, ok := rr.(*dns.DNSKEY)
	if !ok {
		return nil, fmt.Errorf("%s.key: not a DNSKEY record", base)
	}
	if dk.Algorithm != dns.ECDSAP256SHA256 && dk.Algorithm != dns.ED25519 {
		return nil, fmt.Errorf("%s.key: algorithm %s is not supported (want ECDSAP256SHA256 or ED25519)",
			base, dns.AlgorithmToString[dk.Algorithm])
	}
	if dk.Flags&dns.ZONE == 0 {
		return nil, fmt.Errorf("%s.key: not a zone key (flags %d)", base, dk.Flags)
	}
	f, err := os.Open(base + ".private")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	priv, err := dk.ReadPrivateKey(f, base+".private")
	if err != nil {
		return nil, fmt.Errorf("%s.private: %v", base, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s.private: not a signing key", base)
	}
	if ec, ok := priv.(*ecdsa.PrivateKey); ok {
		signer = rfc6979{ec}
	}
	dk.Hdr.Name = strings.ToLower(dk.Hdr.Name)
	k := &key{dnskey: dk, signer: signer, tag: dk.KeyTag()}
	if err := k.probe(); err != nil {
		return nil, fmt.Errorf("%s.private does not match %s.key: %v", base, base, err)
	}
	return k, nil
}

// loadPKCS11Key opens an ECDSA P-256 key in an HSM as a SEP key of zone; its DNSKEY
// is made from the token's public key.
func loadPKCS11Key(uri, zone string) (*key, error) {
	hk, err := pkcs11key.Open(uri, elliptic.P256())
	if err != nil {
		return nil, err
	}
	dk, err := dnskey.FromECDSA(zone, hk.Public().(*ecdsa.PublicKey), true)
	if err != nil {
		hk.Close()
		return nil, err
	}
	k := &key{dnskey: dk, signer: hk, tag: dk.KeyTag()}
	if err := k.probe(); err != nil {
		hk.Close()
		return nil, fmt.Errorf("the key cannot sign: %v", err)
	}
	return k, nil
}

// probe signs and verifies a record: a private key that does not belong to the
// public key, or cannot sign, would make signatures no validator accepts.
func (k *key) probe() error {
	probe := &dns.RRSIG{Algorithm: k.dnskey.Algorithm, SignerName: k.dnskey.Hdr.Name, KeyTag: k.tag, Expiration: 1 << 31}
	txt := &dns.TXT{Hdr: dns.RR_Header{Name: k.dnskey.Hdr.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"probe"}}
	if err := signRRset(k, probe, []dns.RR{txt}); err != nil {
		return err
	}
	return probe.Verify(k.dnskey, []dns.RR{txt})
}

// rfc6979 signs with deterministic ECDSA (RFC 6979, allowed for DNSSEC by RFC 6605
// section 6). Its nonce costs an HMAC-DRBG over SHA-256, a quarter less per signature
// than Go's hedged nonce (over SHA-512), and a proof of nonexistence is one signature
// per query.
type rfc6979 struct{ *ecdsa.PrivateKey }

func (k rfc6979) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.PrivateKey.Sign(nil, digest, opts) // a nil Reader asks for RFC 6979
}

// stripComments drops the ';' comment lines that dnssec-keygen writes before the record.
func stripComments(s string) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, ";") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// keySet is what a zone's keys publish and sign. SEP keys sign DNSKEY, CDS and
// CDNSKEY; the others sign the rest; without non-SEP keys, the SEP keys sign all.
type keySet struct {
	ksk, zsk []*key
	dnskey   []dns.RR // the DNSKEY RRset
	cds      []dns.RR // CDS (SHA-256) for each SEP key; nil with cds off
	cdnskey  []dns.RR // CDNSKEY for each SEP key; nil with cds off
	ds       []*dns.DS
	// published are the ids of the key records of the DNSKEYs (keys etcd only).
	published []string
}

func newKeySet(origin string, keys []*key, ttl uint32, cds bool) (*keySet, error) {
	ks := &keySet{}
	for _, k := range keys {
		if k.dnskey.Hdr.Name != origin {
			return nil, fmt.Errorf("key %d is for %s, not %s", k.tag, k.dnskey.Hdr.Name, origin)
		}
		dk := *k.dnskey
		dk.Hdr.Ttl = ttl
		ks.dnskey = append(ks.dnskey, &dk)
		if k.sep() {
			ks.ksk = append(ks.ksk, k)
			ds := dk.ToDS(dns.SHA256)
			ks.ds = append(ks.ds, ds)
			if cds {
				ks.cds = append(ks.cds, ds.ToCDS())
				ks.cdnskey = append(ks.cdnskey, dk.ToCDNSKEY())
			}
		} else {
			ks.zsk = append(ks.zsk, k)
		}
	}
	if len(ks.ksk) == 0 {
		return nil, fmt.Errorf("zone %s has no key with the SEP flag (257): nothing the parent's DS can point to", origin)
	}
	if len(ks.zsk) == 0 {
		ks.zsk = ks.ksk
	}
	return ks, nil
}

// nz is the number of signatures over an RRset other than DNSKEY, CDS and CDNSKEY
// (0 for an unsigned zone, whose key set is nil).
func (ks *keySet) nz() int {
	if ks == nil {
		return 0
	}
	return len(ks.zsk)
}

// signers returns the keys that sign an RRset of type t.
func (ks *keySet) signers(t uint16) []*key {
	switch t {
	case dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY:
		return ks.ksk
	}
	return ks.zsk
}

// sameSigners reports whether ks and other sign RRsets of type t with the same keys.
func (ks *keySet) sameSigners(other *keySet, t uint16) bool {
	if ks == nil || other == nil {
		return ks == other
	}
	a, b := ks.signers(t), other.signers(t)
	return slices.EqualFunc(a, b, func(x, y *key) bool { return x == y })
}

// rrsEqual reports whether two RRsets hold the same records.
func rrsEqual(a, b []dns.RR) bool {
	return slices.EqualFunc(a, b, func(x, y dns.RR) bool { return dns.IsDuplicate(x, y) })
}

// probeKeys is a key set made to measure what a signature costs (denialRate) before
// a zone whose keys come from etcd has loaded them.
func probeKeys(origin string) *keySet {
	pk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dk, _ := dnskey.FromECDSA(origin, &pk.PublicKey, true)
	k := &key{dnskey: dk, signer: rfc6979{pk}, tag: dk.KeyTag()}
	ks, _ := newKeySet(origin, []*key{k}, 3600, false)
	return ks
}
