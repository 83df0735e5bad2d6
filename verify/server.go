package verify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// ErrNoTLSA refuses a server whose endpoint has no TLSA records: a device that
// authenticates its server by DANE has nothing to fall back to.
var ErrNoTLSA = errors.New("the server's endpoint has no TLSA records")

// ServiceName is the TLSA owner name of a TCP endpoint: _<port>._tcp.<host>.
func ServiceName(host string, port int) string {
	return "_" + strconv.Itoa(port) + "._tcp." + dns.Fqdn(strings.ToLower(host))
}

// ClientConfig is a TLS client configuration (for a device) that authenticates the
// server at host:port by DANE: its certificate must match the DNSSEC-validated TLSA
// RRset at _<port>._tcp.<host>. Go's own PKIX check is off (InsecureSkipVerify) and
// VerifyConnection does DANE's instead, including PKIX where usages 0 and 1 ask for it.
// certificates are the client's own, for client authentication.
func (v *Verifier) ClientConfig(host string, port int, certificates ...tls.Certificate) *tls.Config {
	return &tls.Config{
		ServerName:         host,
		Certificates:       certificates,
		InsecureSkipVerify: true, // VerifyConnection authenticates the server
		VerifyConnection:   v.VerifyServerConnection(host, port),
		MinVersion:         tls.VersionTLS12,
	}
}

// VerifyServerConnection is for tls.Config.VerifyConnection on the client side.
func (v *Verifier) VerifyServerConnection(host string, port int) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		ctx, cancel := context.WithTimeout(context.Background(), v.timeout())
		defer cancel()
		_, err := v.VerifyServer(ctx, host, port, cs.PeerCertificates)
		return err
	}
}

// VerifyServer checks a server's chain (leaf first) against the TLSA RRset of the
// endpoint host:port (RFC 6698, RFC 7671):
//   - the revoked usage matching the leaf refuses it (ErrRevoked);
//   - 3 (DANE-EE): the leaf's certificate or key matches; nothing else is checked;
//   - 2 (DANE-TA): a CA in the chain, or the one the record carries (2 0 0), matches,
//     the leaf chains to it for server authentication and names host;
//   - 1 (PKIX-EE): the leaf matches and passes PKIX validation for host with Roots;
//   - 0 (PKIX-TA): a certificate in the PKIX-validated chain matches.
//
// With Zones set, host must be under one of them.
func (v *Verifier) VerifyServer(ctx context.Context, host string, port int, chain []*x509.Certificate) (Result, error) {
	if len(chain) == 0 {
		return Result{}, ErrNoCertificates
	}
	if port < 1 || port > 65535 {
		return Result{}, fmt.Errorf("%w: port %d", ErrLookupFailed, port)
	}
	name := ServiceName(host, port)
	if len(v.Zones) > 0 && !v.inZones(dns.Fqdn(strings.ToLower(host))) {
		return Result{Name: name}, fmt.Errorf("%w: %s is under none of the zones %v", ErrNoIdentity, host, v.Zones)
	}
	rrs, expires, err := v.lookup(ctx, name)
	if err != nil {
		return Result{Name: name}, err
	}
	rr, err := v.matchServer(name, strings.TrimSuffix(strings.ToLower(host), "."), chain, rrs)
	return Result{Name: name, Matched: rr, Expires: expires}, err
}

func (v *Verifier) inZones(name string) bool {
	for _, z := range v.Zones {
		if dns.IsSubDomain(dns.Fqdn(strings.ToLower(z)), name) {
			return true
		}
	}
	return false
}

// matchServer applies the rules of VerifyServer to the records at name.
func (v *Verifier) matchServer(name, host string, chain []*x509.Certificate, rrs []*dns.TLSA) (*dns.TLSA, error) {
	leaf := chain[0]
	revoked := v.revokedUsage()
	if len(rrs) == 0 {
		return nil, fmt.Errorf("%w at %s", ErrNoTLSA, name)
	}
	for _, rr := range rrs {
		if rr.Usage == revoked && matches(rr, leaf) {
			return rr, fmt.Errorf("%w: the server's key at %s is revoked (%d %d %d)", ErrRevoked, name, rr.Usage, rr.Selector, rr.MatchingType)
		}
	}
	var pkix [][]*x509.Certificate // the PKIX chains, computed once if a 0 or 1 record asks
	pkixChains := func() [][]*x509.Certificate {
		if pkix == nil {
			inter := x509.NewCertPool()
			for _, c := range chain[1:] {
				inter.AddCert(c)
			}
			pkix, _ = leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: v.Roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if pkix == nil {
				pkix = [][]*x509.Certificate{}
			}
		}
		return pkix
	}
	for _, rr := range rrs {
		switch rr.Usage {
		case record.UsageDANEEE: // DANE-EE (RFC 7671 §5.1): the key or certificate itself; no names, no dates
			if matches(rr, leaf) {
				return rr, nil
			}
		case record.UsageDANETA: // DANE-TA (RFC 7671 §5.2): a trust anchor for the chain, and the name
			if leaf.VerifyHostname(host) != nil {
				continue
			}
			for _, ta := range chain[1:] {
				if matches(rr, ta) && chainsFor(leaf, chain[1:], ta, x509.ExtKeyUsageServerAuth) {
					return rr, nil
				}
			}
			if ta := fullCert(rr); ta != nil && chainsFor(leaf, chain[1:], ta, x509.ExtKeyUsageServerAuth) {
				return rr, nil
			}
		case 1: // PKIX-EE: the leaf, and PKIX validation
			if matches(rr, leaf) && len(pkixChains()) > 0 {
				return rr, nil
			}
		case 0: // PKIX-TA: a certificate of a PKIX-validated chain
			for _, c := range pkixChains() {
				for _, cert := range c {
					if matches(rr, cert) {
						return rr, nil
					}
				}
			}
		}
	}
	return nil, fmt.Errorf("%w at %s", ErrNoMatch, name)
}
