package verify

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

func tlsa(usage, selector, matching uint8, data []byte) *dns.TLSA {
	return &dns.TLSA{Usage: usage, Selector: selector, MatchingType: matching, Certificate: hex.EncodeToString(data)}
}

// TestMatch covers the RFC 6698/7671 matching rules and the revoked usage.
func TestMatch(t *testing.T) {
	leaf, ca := deviceChain(t, "sensor7")
	v := &Verifier{Zones: []string{"iot.example."}}
	chain := []*x509.Certificate{leaf}
	name, err := v.identity(leaf)
	if err != nil || name != "sensor7._device.iot.example." {
		t.Fatalf("identity %q %v", name, err)
	}
	spki256 := digest(leaf, 1, 1)
	spki512 := digest(leaf, 1, 2)
	cert256 := digest(leaf, 0, 1)
	other := sha256.Sum256([]byte("another key"))
	for _, tc := range []struct {
		name  string
		rrs   []*dns.TLSA
		chain bool // send the CA certificate after the leaf
		want  error
	}{
		{"3 1 1", []*dns.TLSA{tlsa(3, 1, 1, spki256)}, false, nil},
		{"3 1 2", []*dns.TLSA{tlsa(3, 1, 2, spki512)}, false, nil},
		{"3 0 1", []*dns.TLSA{tlsa(3, 0, 1, cert256)}, false, nil},
		{"3 0 0", []*dns.TLSA{tlsa(3, 0, 0, leaf.Raw)}, false, nil},
		{"2 0 0 carrying the CA", []*dns.TLSA{tlsa(2, 0, 0, ca.Cert.Raw)}, false, nil},
		{"2 1 1 of the CA sent in the chain", []*dns.TLSA{tlsa(2, 1, 1, digest(ca.Cert, 1, 1))}, true, nil},
		{"2 1 1 of a CA not sent", []*dns.TLSA{tlsa(2, 1, 1, digest(ca.Cert, 1, 1))}, false, ErrNoMatch},
		{"another key", []*dns.TLSA{tlsa(3, 1, 1, other[:])}, false, ErrNoMatch},
		{"unknown usage is unusable", []*dns.TLSA{tlsa(4, 0, 0, leaf.Raw), tlsa(1, 1, 1, spki256)}, false, ErrNoMatch},
		{"unknown matching type", []*dns.TLSA{tlsa(3, 1, 3, spki256)}, false, ErrNoMatch},
		{"revoked", []*dns.TLSA{tlsa(255, 1, 1, spki256)}, false, ErrRevoked},
		{"revoked wins over active", []*dns.TLSA{tlsa(3, 1, 1, spki256), tlsa(255, 1, 1, spki256)}, false, ErrRevoked},
		{"another key revoked", []*dns.TLSA{tlsa(255, 1, 1, other[:]), tlsa(3, 1, 1, spki256)}, false, nil},
		{"no records", nil, false, ErrNoMatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := chain[:1]
			if tc.chain {
				c = append(c, ca.Cert)
			}
			_, err := v.match(name, c, tc.rrs)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := (&Verifier{Zones: []string{"other.example."}}).identity(leaf); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("a name outside the zones: %v", err)
	}
}

// digest is what a record of selector and matching type holds for cert.
func digest(cert *x509.Certificate, selector, matching uint8) []byte {
	data := cert.Raw
	if selector == 1 {
		data = cert.RawSubjectPublicKeyInfo
	}
	switch matching {
	case 1:
		s := sha256.Sum256(data)
		return s[:]
	case 2:
		s := sha512.Sum512(data)
		return s[:]
	}
	return data
}

// deviceChain is a device certificate for <name>._device.iot.example from a CA of its
// own, and the CA.
func deviceChain(t *testing.T, name string) (*x509.Certificate, *testenv.CA) {
	t.Helper()
	ca := testenv.NewTestCA(t, "test CA")
	der, err := ca.Issue(name+"._device.iot.example", testenv.DeviceKey(t).Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parseChain(der)
	if err != nil {
		t.Fatal(err)
	}
	return chain[0], ca
}

func TestParseTrustAnchor(t *testing.T) {
	ds := "iot.example. 3600 IN DS 51697 13 2 68B5E454E70885BD130535337575C843F5388ED6B9DA76A29A276EFB4DF63CDF"
	file := t.TempDir() + "/ds.txt"
	testenv.WriteFile(t, file, []byte(ds+"\n"))
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{ds, true},
		{file, true},
		{"iot.example. IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==", true},
		{"iot.example. IN A 192.0.2.1", false},
		{"not a record", false},
		{"", false},
	} {
		if _, err := ParseTrustAnchor(tc.in); (err == nil) != tc.ok {
			t.Errorf("%.40q: %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}
