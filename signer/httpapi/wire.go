package httpapi

// The API's wire types: what requests carry and answers say (the OpenAPI document's
// schemas are made from them), and their decoding.

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"
)

// Requests and answers of the API.
type (
	// EnrollRequest enrolls a device with a CSR (PEM, or base64 DER) or, for a device
	// that has no certificate, a bare public key (PEM, or base64 DER SubjectPublicKeyInfo).
	EnrollRequest struct {
		CSR       string `json:"csr,omitempty"`
		PublicKey string `json:"public_key,omitempty"`
		// Supersede revokes the device's other active keys (reason "superseded") in the
		// same write; otherwise they stay until they expire.
		Supersede bool `json:"supersede,omitempty"`
		// Tenant registers a new device for this tenant (the operator only).
		Tenant string `json:"tenant,omitempty"`
		// Attributes, when given, replace the device's attributes in the same write.
		Attributes map[string]string `json:"attributes,omitempty"`
	}
	// EnrollResponse is the device's record after enrollment, with the new certificate.
	EnrollResponse struct {
		Certificate string     `json:"certificate,omitempty"` // PEM
		Device      DeviceView `json:"device"`
	}
	// RevokeRequest revokes the credential whose key has the SHA-256 SPKI digest (as in
	// its 3 1 1 record, hex), or all of the device's credentials when it is empty.
	RevokeRequest struct {
		SPKISHA256 string `json:"spki_sha256,omitempty"`
		Reason     string `json:"reason,omitempty"`
	}
	// RegisterRequest reserves a name for a tenant (the caller's own; the operator names one).
	RegisterRequest struct {
		Tenant     string            `json:"tenant,omitempty"`
		Attributes map[string]string `json:"attributes,omitempty"`
	}
	// CodeRequest asks for an enrollment code; Tenant registers a new device for it (the operator only).
	CodeRequest struct {
		Tenant string `json:"tenant,omitempty"`
	}
	// CodeResponse carries a one-time code: an enrollment code for EST's
	// /simpleenroll, or a transfer code for the gaining tenant.
	CodeResponse struct {
		Code    string    `json:"code"`
		Expires time.Time `json:"expires"`
	}
	// AttributesRequest replaces a device's attributes.
	AttributesRequest struct {
		Attributes map[string]string `json:"attributes"`
	}
	// AcceptRequest completes a transfer with the code of the losing tenant.
	AcceptRequest struct {
		Code     string `json:"code"`
		KeepKeys bool   `json:"keep_keys,omitempty"`
		Tenant   string `json:"tenant,omitempty"` // the gaining tenant, when the operator accepts
	}
	// AssignRequest gives a device to a tenant by the operator's decision.
	AssignRequest struct {
		Tenant   string `json:"tenant"`
		KeepKeys bool   `json:"keep_keys,omitempty"`
	}
	// ListResponse is one page of devices.
	ListResponse struct {
		Devices []DeviceSummary `json:"devices"`
		Next    string          `json:"next,omitempty"`
	}
	// DeviceSummary is one device in a list.
	DeviceSummary struct {
		Name       string            `json:"name"`
		Tenant     string            `json:"tenant,omitempty"`
		State      string            `json:"state"`
		Condition  string            `json:"condition"` // as a person reads it: record.Conditions
		Attributes map[string]string `json:"attributes,omitempty"`
		Active     int               `json:"active_keys"`
		Revoked    int               `json:"revoked_keys"`
		Invalid    string            `json:"invalid,omitempty"` // why the stored record is invalid
	}
	// DeviceView is a device's record with its name and its keys' digests.
	DeviceView struct {
		Name string `json:"name"`
		record.Device
		Condition string    `json:"condition"` // as a person reads it: record.Conditions
		Keys      []KeyView `json:"keys"`
	}
	// KeyView is one credential as DNS publishes it.
	KeyView struct {
		SPKISHA256 string     `json:"spki_sha256"`
		Status     string     `json:"status"`
		NotAfter   *time.Time `json:"not_after"`
		Reason     string     `json:"reason,omitempty"`
		Cert       bool       `json:"certificate"`
	}
	// TenantRequest creates a tenant.
	TenantRequest struct {
		Name string `json:"name"`
	}
	// TenantList lists tenants.
	TenantList struct {
		Tenants []registry.Tenant `json:"tenants"`
	}
	// TokenRequest issues a tenant token.
	TokenRequest struct {
		Label string `json:"label,omitempty"`
	}
	// TokenList lists a tenant's tokens (never their secrets).
	TokenList struct {
		Tokens []registry.Token `json:"tokens"`
	}
	// AuditResponse is one page of the audit trail.
	AuditResponse struct {
		Entries []registry.AuditEntry `json:"entries"`
		Next    string                `json:"next,omitempty"`
	}
	// WhoAmI says who the credentials of the request belong to.
	WhoAmI struct {
		Actor    string `json:"actor"`
		Tenant   string `json:"tenant,omitempty"`
		Operator bool   `json:"operator"`
	}
	// ErrorResponse is every error's body.
	ErrorResponse struct {
		Error string `json:"error"`
	}
)

// view is a device's record as the API shows it.
func view(name string, d *record.Device, now time.Time) DeviceView {
	v := DeviceView{Name: name, Device: *d, Condition: d.Condition(now), Keys: []KeyView{}}
	if v.Credentials == nil {
		v.Credentials = []record.Credential{}
	}
	for _, c := range d.Credentials {
		v.Keys = append(v.Keys, KeyView{SPKISHA256: registry.KeyDigest(c.SPKI), Status: c.Status, NotAfter: c.NotAfter, Reason: c.Reason, Cert: c.Cert != nil})
	}
	return v
}

// ExportLine is one device in an export: its name and record (JSON lines).
type ExportLine struct {
	Name string `json:"name"`
	record.Device
}

// summaryOf is one device of a list.
func summaryOf(e registry.Entry, now time.Time) DeviceSummary {
	s := DeviceSummary{Name: e.Name, State: record.StateActive}
	if e.Err != nil {
		s.Invalid = e.Err.Error()
		return s
	}
	sum := registry.Summarize(e.Device)
	s.Tenant, s.State, s.Attributes, s.Active, s.Revoked = sum.Tenant, sum.State, e.Device.Attributes, sum.Active, sum.Revoked
	s.Condition = e.Device.Condition(now)
	return s
}

// Decode parses the request's CSR or public key.
func (req EnrollRequest) Decode() (*x509.CertificateRequest, crypto.PublicKey, error) {
	switch {
	case req.CSR != "" && req.PublicKey != "":
		return nil, nil, errors.New("give either csr or public_key, not both")
	case req.CSR != "":
		der, err := decodePEMOrBase64(req.CSR, "CERTIFICATE REQUEST")
		if err != nil {
			return nil, nil, fmt.Errorf("csr: %v", err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, nil, fmt.Errorf("csr: %v", err)
		}
		return csr, nil, nil
	case req.PublicKey != "":
		der, err := decodePEMOrBase64(req.PublicKey, "PUBLIC KEY")
		if err != nil {
			return nil, nil, fmt.Errorf("public_key: %v", err)
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return nil, nil, fmt.Errorf("public_key: %v", err)
		}
		return nil, pub, nil
	}
	return nil, nil, errors.New("give csr or public_key")
}

// Digest decodes the key's SHA-256 digest; nil when the request names no key.
func (req RevokeRequest) Digest() ([]byte, error) {
	if req.SPKISHA256 == "" {
		return nil, nil
	}
	want, err := hex.DecodeString(req.SPKISHA256)
	if err != nil || len(want) != sha256.Size {
		return nil, errors.New("spki_sha256 is not 64 hex digits")
	}
	return want, nil
}

// decodePEMOrBase64 accepts one PEM block of the given type, or base64 DER.
func decodePEMOrBase64(s, pemType string) ([]byte, error) {
	if b, rest := pem.Decode([]byte(s)); b != nil {
		if b.Type != pemType || strings.TrimSpace(string(rest)) != "" {
			return nil, fmt.Errorf("want one PEM block of type %q", pemType)
		}
		return b.Bytes, nil
	}
	der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("neither PEM nor base64")
	}
	return der, nil
}
