package record

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// ParseCA decodes and validates the PEM CA certificate stored at P/<zone>/ca/<aki>: one
// CA certificate whose Subject Key Identifier is aki.
func ParseCA(aki string, data []byte) (*x509.Certificate, error) {
	if err := CheckAKI(aki); err != nil {
		return nil, err
	}
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("record is %d bytes, more than the limit of %d", len(data), MaxRecordSize)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM CERTIFICATE")
	}
	if b, _ := pem.Decode(rest); b != nil {
		return nil, errors.New("more than one PEM block; a CA record holds one certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA (basicConstraints cA is not set)")
	}
	if ski := KeyID(cert.SubjectKeyId); ski != aki {
		return nil, fmt.Errorf("certificate's subject key identifier %q does not match the key %q", ski, aki)
	}
	return cert, nil
}

// KeyID writes a key identifier as lowercase hex, the form used in CA record keys and names.
func KeyID(id []byte) string { return hex.EncodeToString(id) }
