package httpapi

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"github.com/deviceid/deviceid/record"
)

// The API of service identities (the registry's side is in package registry, services.go).

// ServiceKeyRequest publishes a service key: its public key (PEM, or base64 DER SPKI)
// or the certificate it serves (PEM, or base64 DER), whose key is taken.
type ServiceKeyRequest struct {
	PublicKey   string `json:"public_key,omitempty"`
	Certificate string `json:"certificate,omitempty"`
	Tenant      string `json:"tenant,omitempty"` // of a new service, when the operator publishes it
}

// SPKI decodes the request's key.
func (req ServiceKeyRequest) SPKI() ([]byte, error) {
	switch {
	case req.PublicKey != "" && req.Certificate != "":
		return nil, errors.New("give either public_key or certificate, not both")
	case req.Certificate != "":
		der, err := decodePEMOrBase64(req.Certificate, "CERTIFICATE")
		if err != nil {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate: %v", err)
		}
		return cert.RawSubjectPublicKeyInfo, nil
	case req.PublicKey != "":
		der, err := decodePEMOrBase64(req.PublicKey, "PUBLIC KEY")
		if err != nil {
			return nil, fmt.Errorf("public_key: %v", err)
		}
		return der, nil
	}
	return nil, errors.New("give public_key or certificate")
}

// ServiceList lists services.
type ServiceList struct {
	Services []DeviceView `json:"services"`
	Next     string       `json:"next,omitempty"`
}

func (c *apiCall) service() string { return c.r.PathValue("service") }

func (c *apiCall) serviceReply(status int, d *record.Device, err error) {
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.ServiceName(c.service())
	c.reply(status, view(name, d, c.reg().Clock()), nil)
}

func (c *apiCall) publishServiceKey() {
	var req ServiceKeyRequest
	if !c.read(&req) {
		return
	}
	spki, err := req.SPKI()
	if err != nil {
		c.reply(0, nil, invalid(err))
		return
	}
	d, err := c.reg().PublishServiceKey(c.ctx, c.actor, c.service(), req.Tenant, spki)
	c.serviceReply(http.StatusCreated, d, err)
}

func (c *apiCall) revokeServiceKey() {
	req, spki, ok := c.revokeRequest()
	if !ok {
		return
	}
	d, err := c.reg().RevokeServiceKey(c.ctx, c.actor, c.service(), spki, req.Reason)
	c.serviceReply(http.StatusOK, d, err)
}

func (c *apiCall) getService() {
	d, _, err := c.reg().Service(c.ctx, c.actor, c.service())
	c.serviceReply(http.StatusOK, d, err)
}

func (c *apiCall) deleteService() {
	c.reply(http.StatusNoContent, nil, c.reg().DeleteService(c.ctx, c.actor, c.service()))
}

func (c *apiCall) listServices() {
	f, err := c.filter()
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	entries, next, err := c.reg().Services(c.ctx, c.actor, f)
	resp := ServiceList{Services: []DeviceView{}, Next: next}
	for _, e := range entries {
		if e.Device != nil {
			resp.Services = append(resp.Services, view(e.Name, e.Device, c.reg().Clock()))
		}
	}
	c.reply(http.StatusOK, resp, err)
}
