package verify

import (
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// serverChain is a server certificate for host from a CA of its own, and the CA.
func serverChain(t *testing.T, host string, notAfter time.Time) (*x509.Certificate, *testenv.CA) {
	t.Helper()
	ca, err := testenv.NewCA("server CA " + host)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := testenv.NewDeviceKey()
	der, err := ca.IssueServer(host, key.Public(), notAfter)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf, ca
}

// TestMatchServerEveryCombination: for each usage, selector and matching type, a
// record made from the right certificate accepts the server, and one made from
// another certificate refuses it.
func TestMatchServerEveryCombination(t *testing.T) {
	const host = "mqtt.acme.iot.example"
	leaf, ca := serverChain(t, host, time.Now().AddDate(1, 0, 0))
	otherLeaf, otherCA := serverChain(t, host, time.Now().AddDate(1, 0, 0))
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	v := &Verifier{Roots: roots}
	chain := []*x509.Certificate{leaf, ca.Cert}
	for usage := uint8(0); usage <= 3; usage++ {
		for selector := uint8(0); selector <= 1; selector++ {
			for matching := uint8(0); matching <= 2; matching++ {
				right, wrong := leaf, otherLeaf // the end entity for 1 and 3
				if usage == 0 || usage == 2 {
					right, wrong = ca.Cert, otherCA.Cert // a trust anchor for 0 and 2
				}
				name := fmt.Sprintf("%d %d %d", usage, selector, matching)
				if _, err := v.matchServer("_8883._tcp."+host+".", host, chain, []*dns.TLSA{tlsa(usage, selector, matching, digest(right, selector, matching))}); err != nil {
					t.Errorf("%s of the right certificate: %v", name, err)
				}
				if _, err := v.matchServer("_8883._tcp."+host+".", host, chain, []*dns.TLSA{tlsa(usage, selector, matching, digest(wrong, selector, matching))}); !errors.Is(err, ErrNoMatch) {
					t.Errorf("%s of another certificate: %v, want ErrNoMatch", name, err)
				}
			}
		}
	}
}

// TestMatchServerRules: the checks around the match, rule by rule.
func TestMatchServerRules(t *testing.T) {
	const host = "mqtt.acme.iot.example"
	leaf, ca := serverChain(t, host, time.Now().AddDate(1, 0, 0))
	expired, _ := serverChain(t, host, time.Now().Add(-time.Minute))
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	withRoots, noRoots := &Verifier{Roots: roots}, &Verifier{Roots: x509.NewCertPool()}
	full := []*x509.Certificate{leaf, ca.Cert}
	ee := tlsa(3, 1, 1, digest(leaf, 1, 1))
	for _, tc := range []struct {
		name  string
		v     *Verifier
		host  string
		chain []*x509.Certificate
		rrs   []*dns.TLSA
		want  error
	}{
		{"3 1 1 ignores the name", noRoots, "other.example", full, []*dns.TLSA{ee}, nil},
		{"3 1 1 ignores the dates", noRoots, host, []*x509.Certificate{expired}, []*dns.TLSA{tlsa(3, 1, 1, digest(expired, 1, 1))}, nil},
		{"3 1 1 needs no chain", noRoots, host, []*x509.Certificate{leaf}, []*dns.TLSA{ee}, nil},
		{"2 x x checks the name", withRoots, "other.example", full, []*dns.TLSA{tlsa(2, 1, 1, digest(ca.Cert, 1, 1))}, ErrNoMatch},
		{"2 0 0 carries the CA the server did not send", noRoots, host, []*x509.Certificate{leaf}, []*dns.TLSA{tlsa(2, 0, 0, ca.Cert.Raw)}, nil},
		{"2 1 1 of a CA the server did not send", noRoots, host, []*x509.Certificate{leaf}, []*dns.TLSA{tlsa(2, 1, 1, digest(ca.Cert, 1, 1))}, ErrNoMatch},
		{"1 1 1 needs PKIX", noRoots, host, full, []*dns.TLSA{tlsa(1, 1, 1, digest(leaf, 1, 1))}, ErrNoMatch},
		{"1 1 1 checks the name", withRoots, "other.example", full, []*dns.TLSA{tlsa(1, 1, 1, digest(leaf, 1, 1))}, ErrNoMatch},
		{"0 1 1 needs PKIX", noRoots, host, full, []*dns.TLSA{tlsa(0, 1, 1, digest(ca.Cert, 1, 1))}, ErrNoMatch},
		{"revoked usage refuses", withRoots, host, full, []*dns.TLSA{ee, tlsa(255, 1, 1, digest(leaf, 1, 1))}, ErrRevoked},
		{"revoked usage of another key", withRoots, host, full, []*dns.TLSA{ee, tlsa(255, 1, 1, []byte("another"))}, nil},
		{"a rotated-out key: only 255 for it", withRoots, host, full, []*dns.TLSA{tlsa(3, 1, 1, []byte("new key")), tlsa(255, 1, 1, digest(leaf, 1, 1))}, ErrRevoked},
		{"no records", withRoots, host, full, nil, ErrNoTLSA},
		{"unknown selector", withRoots, host, full, []*dns.TLSA{tlsa(3, 2, 1, digest(leaf, 1, 1))}, ErrNoMatch},
		{"unknown matching type", withRoots, host, full, []*dns.TLSA{tlsa(3, 1, 3, digest(leaf, 1, 1))}, ErrNoMatch},
	} {
		_, err := tc.v.matchServer(ServiceName(tc.host, 8883), tc.host, tc.chain, tc.rrs)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// The allow-list of zones holds for servers too.
	v := &Verifier{Zones: []string{"iot.example."}, Resolver: "127.0.0.1:1"}
	if _, err := v.VerifyServer(t.Context(), "evil.example", 8883, full); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("a host outside the zones: %v", err)
	}
	if _, err := v.VerifyServer(t.Context(), host, 0, full); err == nil {
		t.Error("port 0 accepted")
	}
	if got := ServiceName("MQTT.acme.iot.example", 8883); got != "_8883._tcp.mqtt.acme.iot.example." {
		t.Errorf("ServiceName: %s", got)
	}
}
