package testenv

// The test PKI: a small CA and device certificates with any validity a test needs
// (expired ones too), keys and CSRs. It is not the signer's CA (package signer/ca): it
// has no persistence and no policy.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// CA is a self-signed ECDSA P-256 certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a CA valid from an hour ago for ten years. Its Subject Key Identifier
// (20 bytes) is made by crypto/x509.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// PEM returns the CA certificate in PEM form, as stored in a CA record.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Issue returns the DER of a client certificate for pub with SAN dNSName dnsName,
// valid from an hour ago until notAfter, with the Subject Organization given.
func (ca *CA) Issue(dnsName string, pub crypto.PublicKey, notAfter time.Time, organization ...string) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: dnsName, Organization: organization},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// IssueServer returns the DER of a TLS server certificate for pub naming host,
// valid from an hour ago until notAfter.
func (ca *CA) IssueServer(host string, pub crypto.PublicKey, notAfter time.Time) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
}

// NewDeviceKey makes a device key pair.
func NewDeviceKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}

// NewTestCA is NewCA for a test: it fails the test on error.
func NewTestCA(t testing.TB, commonName string) *CA {
	t.Helper()
	ca, err := NewCA(commonName)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// DeviceKey is NewDeviceKey for a test.
func DeviceKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := NewDeviceKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CSR returns the DER of a PKCS#10 request signed by key, with Subject CN and
// dNSName SANs as given (RFC 7030 wants a re-enrollment's to repeat the certificate's).
func CSR(t testing.TB, key crypto.Signer, commonName string, dnsNames ...string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName}, DNSNames: dnsNames}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// CSRPEM is CSR in PEM form.
func CSRPEM(t testing.TB, key crypto.Signer, commonName string, dnsNames ...string) string {
	t.Helper()
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: CSR(t, key, commonName, dnsNames...)}))
}
