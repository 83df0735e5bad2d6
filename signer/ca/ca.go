// Package ca is the signer's certificate authority: it makes or loads the CA (key in
// a PEM file or an HSM), issues device certificates and the signer's HTTPS server
// certificate (docs/design.md). It knows nothing of etcd or HTTP.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"
)

// DefaultLifetime is how long an issued device certificate is valid.
const DefaultLifetime = 365 * 24 * time.Hour

// backdate is how far before the issuing time a certificate becomes valid, for
// devices whose clocks run behind.
const backdate = time.Hour

// CA issues device certificates for one zone.
type CA struct {
	Cert     *x509.Certificate
	Chain    []*x509.Certificate // certificates above Cert, for an intermediate CA
	Key      crypto.Signer
	Zone     string        // fully qualified, lower case
	Lifetime time.Duration // of issued certificates
}

// Files of a CA in its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// LoadCA reads a CA certificate from a PEM file and its ECDSA P-256 or P-384 key from
// a PEM file or, when key is a pkcs11: URI (RFC 7512), from an HSM. The certificate
// file may go on with the certificates above it (an intermediate CA's chain), which
// /cacerts then serves too.
func LoadCA(certFile, key, zone string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", certFile, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE", certFile)
	}
	cert := certs[0]
	if !cert.IsCA || len(cert.SubjectKeyId) == 0 {
		return nil, fmt.Errorf("%s: not a CA certificate with a subject key identifier", certFile)
	}
	signer, err := loadCAKey(key)
	if err != nil {
		return nil, err
	}
	if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(signer.Public()) {
		return nil, fmt.Errorf("%s does not hold the key of %s", redactURI(key), certFile)
	}
	return &CA{Cert: cert, Chain: certs[1:], Key: signer, Zone: record.Zone(zone), Lifetime: DefaultLifetime}, nil
}

// caCurves are the curves a CA key may be on.
var caCurves = []elliptic.Curve{elliptic.P256(), elliptic.P384()}

// loadCAKey reads the CA's key from a PEM file or an HSM.
func loadCAKey(key string) (crypto.Signer, error) {
	if pkcs11key.IsURI(key) {
		return pkcs11key.Open(key, caCurves...)
	}
	keyPEM, err := os.ReadFile(key)
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("%s: no PEM key", key)
	}
	k, err := parseECKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", key, err)
	}
	return k, nil
}

// newCAKey makes the key of a new CA: in dir/ca-key.pem, or, when keyURI is a
// pkcs11: URI, in the HSM it names. It refuses to overwrite a key.
func newCAKey(dir, keyURI string, curve elliptic.Curve) (crypto.Signer, error) {
	if curve != elliptic.P256() && curve != elliptic.P384() {
		return nil, errors.New("the CA key must be ECDSA P-256 or P-384")
	}
	if keyURI != "" {
		if !pkcs11key.IsURI(keyURI) {
			return nil, fmt.Errorf("%q is not a pkcs11: URI", keyURI)
		}
		return pkcs11key.Generate(keyURI, curve)
	}
	keyFile := filepath.Join(dir, CAKeyFile)
	if _, err := os.Stat(keyFile); err == nil {
		return nil, fmt.Errorf("%s exists; refusing to overwrite a CA key", keyFile)
	}
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return key, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// redactURI keeps a PIN given in a URI out of messages.
func redactURI(s string) string {
	if pkcs11key.IsURI(s) {
		if path, _, ok := strings.Cut(s, "?"); ok {
			return path
		}
	}
	return s
}

// CARequestFile is where InitIntermediate writes the CA's CSR.
const CARequestFile = "ca.csr"

// InitIntermediate starts an intermediate CA: it makes a new ECDSA key (ca-key.pem in
// dir, or in the HSM keyURI names) and writes a CSR for it (ca.csr) to dir. Once the
// parent CA has signed the CSR, its certificate, followed by the parent's chain, goes
// to ca.pem and LoadCA takes it.
func InitIntermediate(dir, commonName string, curve elliptic.Curve, keyURI string) error {
	if _, err := os.Stat(filepath.Join(dir, CARequestFile)); err == nil {
		return fmt.Errorf("%s exists; refusing to overwrite a CA request", filepath.Join(dir, CARequestFile))
	}
	key, err := newCAKey(dir, keyURI, curve)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}, key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, CARequestFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), 0o644)
}

func parseECKey(b *pem.Block) (*ecdsa.PrivateKey, error) {
	var k any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", b.Type)
	}
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || (ec.Curve != elliptic.P256() && ec.Curve != elliptic.P384()) {
		return nil, errors.New("the CA key must be ECDSA P-256 or P-384")
	}
	return ec, nil
}

// InitCA makes a self-signed root CA with an ECDSA key on curve (P-256 or P-384),
// valid for ten years, and writes it to dir as ca.pem, with its key in ca-key.pem or,
// when keyURI is a pkcs11: URI, made in that HSM. It refuses to overwrite a CA.
func InitCA(dir, commonName, zone string, curve elliptic.Curve, keyURI string) (*CA, error) {
	certFile := filepath.Join(dir, CACertFile)
	if _, err := os.Stat(certFile); err == nil {
		return nil, fmt.Errorf("%s exists; refusing to overwrite a CA", certFile)
	}
	key, err := newCAKey(dir, keyURI, curve)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs device certificates only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, Zone: record.Zone(zone), Lifetime: DefaultLifetime}, nil
}

// AKI is the CA's key identifier as it names the CA record (40 lowercase hex digits).
func (ca *CA) AKI() string { return record.KeyID(ca.Cert.SubjectKeyId) }

// PEM returns the CA certificate in PEM form.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// CheckPublicKey accepts the device key types deviceid issues certificates for:
// Ed25519, ECDSA P-256 and P-384, and RSA of at least 2048 bits.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not accepted (want P-256 or P-384)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() >= 2048 {
			return nil
		}
		return fmt.Errorf("RSA key of %d bits is too short (want at least 2048)", k.N.BitLen())
	}
	return fmt.Errorf("public key type %T is not accepted (want Ed25519, ECDSA P-256/P-384 or RSA)", pub)
}

// CheckCSR verifies a CSR's signature and key type. The device name comes from the
// request's authentication, never from the CSR's subject.
func CheckCSR(csr *x509.CertificateRequest) error {
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("CSR signature does not verify: %v", err)
	}
	return CheckPublicKey(csr.PublicKey)
}

// Issue returns a certificate for device's key pub: SAN dNSName
// <device>._device.<zone>, EKU clientAuth, KeyUsage digitalSignature, a random 128-bit
// serial, and the CA's key identifier as AKI.
func (ca *CA) Issue(device string, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	if err := CheckPublicKey(pub); err != nil {
		return nil, err
	}
	owner, err := record.DeviceOwner(device, ca.Zone)
	if err != nil {
		return nil, err
	}
	name := strings.TrimSuffix(owner, ".")
	ski, err := keyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SubjectKeyId: ski,
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ca.Lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter // never outlive the CA
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// keyID is the RFC 7093 §2 method 1 key identifier: the leftmost 160 bits of the
// SHA-256 hash of the subjectPublicKey bits (crypto/x509 makes one for CAs only).
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() *big.Int {
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			panic(err) // crypto/rand does not fail
		}
		if n.Sign() > 0 {
			return n
		}
	}
}

// ServerCertificate issues an HTTPS server certificate from the CA for hosts (names or
// IP addresses), for a signer that was given none: devices that trust the CA for
// /cacerts trust the server too.
func (ca *CA) ServerCertificate(hosts []string, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "deviceid-signer"},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ca.Lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key}, nil
}

// DashedKeyID writes a key identifier as PKIX-CD's URL does: lowercase hex pairs
// joined by '-'.
func DashedKeyID(id []byte) string {
	parts := make([]string, len(id))
	for i, b := range id {
		parts[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(parts, "-")
}
