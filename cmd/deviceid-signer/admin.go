package main

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"
)

// The registry commands are the admin API on the command line: each builds one API
// request and either sends it to a running signer (-server, with a bearer token), or
// serves it in this process with the same handlers over etcd directly (as the
// operator), so that both ways do exactly the same. show and list print a table, or
// with -json the API's JSON; the others print the JSON answer.

// adminFlags are the flags every registry command has.
type adminFlags struct {
	etcdFlags
	server, tokenFile, serverCA string
	json                        bool
	ca                          caFlags
	timeout                     time.Duration // of one request on etcd directly; 30 s when 0
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	f.etcdFlags.register(fs)
	fs.StringVar(&f.server, "server", env("DEVICEID_SERVER", ""), "URL of a running signer (https://host:8443); empty: work on etcd directly ($DEVICEID_SERVER)")
	fs.StringVar(&f.tokenFile, "token-file", env("DEVICEID_TOKEN_FILE", ""), "with -server: the file holding the bearer token, the operator's or a tenant's ($DEVICEID_TOKEN_FILE)")
	fs.StringVar(&f.serverCA, "server-ca", env("DEVICEID_CA_CERT", "ca.pem"), "with -server: the CA of the signer's HTTPS certificate, PEM ($DEVICEID_CA_CERT)")
	fs.BoolVar(&f.json, "json", false, "print the API's JSON instead of a table")
}

// apiRequest is one request of the admin API.
type apiRequest struct {
	method, path string
	body         any
	answer       any  // decoded into; nil: printed as it comes
	needsCA      bool // on etcd directly: the CA issues a certificate
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// attrMap turns key=value flags into attributes.
func attrMap(l stringList) (map[string]string, error) {
	if len(l) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range l {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-attr %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// adminCommand is one registry command: its usage, what it does, an example, and
// how it turns its flags into a request.
type adminCommand struct {
	args, about, example string
	flags                func(fs *flag.FlagSet, v *cmdValues) // extra flags
	request              func(v *cmdValues) (apiRequest, error)
}

// cmdValues are the values of the flags registry commands take.
type cmdValues struct {
	device, tenant, id, label, codeFile                  string
	csr, pubkey, out, after, reason, spki, state, prefix string
	operation, actor, service                            string
	limit                                                int
	supersede, keepKeys                                  bool
	attrs                                                stringList
}

// readSecret reads a code from file (- for standard input), so that it never shows
// in a process list as an argument would.
func readSecret(file, flagName string) (string, error) {
	if file == "" {
		return "", fmt.Errorf("%s is required", flagName)
	}
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 4096))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	code := strings.TrimSpace(string(b))
	if code == "" {
		return "", fmt.Errorf("%s: %s is empty", flagName, file)
	}
	return code, nil
}

func (v *cmdValues) devicePath(suffix string) (string, error) {
	if v.device == "" {
		return "", errors.New("-device is required")
	}
	return "/api/v1/devices/" + url.PathEscape(v.device) + suffix, nil
}

func deviceFlag(fs *flag.FlagSet, v *cmdValues) {
	fs.StringVar(&v.device, "device", "", "the device name, e.g. sensor7 (required)")
}

func tenantFlag(about string) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) { fs.StringVar(&v.tenant, "tenant", "", about) }
}

func filterFlags(fs *flag.FlagSet, v *cmdValues) {
	fs.StringVar(&v.tenant, "tenant", "", "only this tenant's devices")
	fs.StringVar(&v.state, "state", "", "only active or suspended devices")
	fs.StringVar(&v.prefix, "name-prefix", "", "only names starting with this")
	fs.Var(&v.attrs, "attr", "only devices with this attribute, key=value (repeatable)")
}

// pageFlags are a list's paging flags; noun names what is listed.
func pageFlags(noun string) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) {
		fs.StringVar(&v.after, "after", "", "start after this "+noun+" (the next of the previous page)")
		fs.IntVar(&v.limit, "limit", 100, "how many, at most 1000")
	}
}

func (v *cmdValues) filterQuery() url.Values {
	q := url.Values{}
	for k, val := range map[string]string{"tenant": v.tenant, "state": v.state, "prefix": v.prefix, "after": v.after} {
		if val != "" {
			q.Set(k, val)
		}
	}
	for _, a := range v.attrs {
		q.Add("attr", a)
	}
	return q
}

// simple is a request with no body to a device's path.
func simple(method, suffix string, answer func() any) func(v *cmdValues) (apiRequest, error) {
	return func(v *cmdValues) (apiRequest, error) {
		p, err := v.devicePath(suffix)
		var a any
		if answer != nil {
			a = answer()
		}
		return apiRequest{method: method, path: p, answer: a}, err
	}
}

func both(fns ...func(fs *flag.FlagSet, v *cmdValues)) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) {
		for _, f := range fns {
			f(fs, v)
		}
	}
}

func deviceView() any { return &httpapi.DeviceView{} }

var adminCommands = map[string]adminCommand{
	"enroll": {"-device NAME (-csr FILE | -pubkey FILE) [flags]", "Enrolls a device with a CSR (a certificate is issued) or a bare public key.",
		"deviceid-signer enroll -zone iot.example -device sensor9 -csr sensor9.csr -out sensor9.pem -ca-cert ca.pem -ca-key ca-key.pem",
		both(deviceFlag, tenantFlag("register a new device for this tenant (the operator)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.csr, "csr", "", "a PKCS#10 CSR file (PEM or DER)")
			fs.StringVar(&v.pubkey, "pubkey", "", "a public key file (PEM or DER SubjectPublicKeyInfo), for a device without a certificate")
			fs.BoolVar(&v.supersede, "supersede", false, "revoke the device's other keys (reason superseded) in the same write")
			fs.StringVar(&v.out, "out", "", "write the issued certificate (PEM) here")
		}),
		func(v *cmdValues) (apiRequest, error) {
			req := httpapi.EnrollRequest{Supersede: v.supersede, Tenant: v.tenant}
			var err error
			switch {
			case v.csr != "":
				req.CSR, err = readDERorPEM(v.csr)
			case v.pubkey != "":
				req.PublicKey, err = readDERorPEM(v.pubkey)
			default:
				err = errors.New("enroll needs -csr or -pubkey")
			}
			if err != nil {
				return apiRequest{}, err
			}
			p, err := v.devicePath("/enroll")
			return apiRequest{method: "POST", path: p, body: req, answer: &httpapi.EnrollResponse{}, needsCA: true}, err
		}},
	"revoke": {"-device NAME [-spki-sha256 HEX] [-reason REASON] [flags]", "Revokes one of a device's keys, or all of them, with an RFC 5280 reason.",
		"deviceid-signer revoke -zone iot.example -device sensor9 -reason keyCompromise",
		both(deviceFlag, func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.spki, "spki-sha256", "", "the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
			fs.StringVar(&v.reason, "reason", "unspecified", "the RFC 5280 reason")
		}),
		func(v *cmdValues) (apiRequest, error) {
			p, err := v.devicePath("/revoke")
			return apiRequest{method: "POST", path: p, body: httpapi.RevokeRequest{SPKISHA256: v.spki, Reason: v.reason}, answer: deviceView()}, err
		}},
	"delete": {"-device NAME [flags]", "Deletes a device's record (an invalid one too), its codes, and so its records in DNS.",
		"deviceid-signer delete -zone iot.example -device sensor9", deviceFlag, simple("DELETE", "", nil)},
	"show": {"-device NAME [-json] [flags]", "Prints a device's record: its tenant, state, keys and what DNS publishes for them.",
		"deviceid-signer show -zone iot.example -device sensor9", deviceFlag, simple("GET", "", deviceView)},
	"list": {"[-tenant T] [-state S] [-name-prefix P] [-attr K=V] [-after NAME] [-limit N] [-json] [flags]", "Lists devices a page at a time, with filters; invalid records are flagged.",
		"deviceid-signer list -zone iot.example -tenant acme -attr model=th-200 -limit 50",
		both(filterFlags, pageFlags("device")),
		func(v *cmdValues) (apiRequest, error) {
			q := v.filterQuery()
			q.Set("limit", strconv.Itoa(v.limit))
			return apiRequest{method: "GET", path: "/api/v1/devices?" + q.Encode(), answer: &httpapi.ListResponse{}}, nil
		}},
	"export": {"[-tenant T] [-state S] [-name-prefix P] [-attr K=V] [flags] > devices.jsonl", "Writes every matching device's record as JSON lines.",
		"deviceid-signer export -zone iot.example -tenant acme > acme.jsonl", filterFlags,
		func(v *cmdValues) (apiRequest, error) {
			return apiRequest{method: "GET", path: "/api/v1/export?" + v.filterQuery().Encode()}, nil
		}},
	"code": {"-device NAME [-tenant T] [flags]", "Issues a one-time enrollment code for the device's EST enrollment (valid 24 h); registers the device first if needed.",
		"deviceid-signer code -zone iot.example -device sensor9 -tenant acme",
		both(deviceFlag, tenantFlag("register a new device for this tenant (the operator)")),
		func(v *cmdValues) (apiRequest, error) {
			p, err := v.devicePath("/code")
			return apiRequest{method: "POST", path: p, body: httpapi.CodeRequest{Tenant: v.tenant}, answer: &httpapi.CodeResponse{}}, err
		}},
	"register": {"-device NAME [-tenant T] [-attr K=V ...] [flags]", "Reserves a device name for a tenant, with no key yet, and sets its attributes.",
		"deviceid-signer register -zone iot.example -device sensor9 -tenant acme -attr model=th-200 -attr serial=A1B2",
		both(deviceFlag, tenantFlag("the tenant (the operator; a tenant registers for itself)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.Var(&v.attrs, "attr", "an attribute, key=value (repeatable)")
		}),
		func(v *cmdValues) (apiRequest, error) {
			attrs, err := attrMap(v.attrs)
			if err != nil {
				return apiRequest{}, err
			}
			p, err := v.devicePath("/register")
			return apiRequest{method: "POST", path: p, body: httpapi.RegisterRequest{Tenant: v.tenant, Attributes: attrs}, answer: deviceView()}, err
		}},
	"attributes": {"-device NAME [-attr K=V ...] [flags]", "Replaces a device's attributes (none given: removes them all).",
		"deviceid-signer attributes -zone iot.example -device sensor9 -attr firmware=2.1",
		both(deviceFlag, func(fs *flag.FlagSet, v *cmdValues) { fs.Var(&v.attrs, "attr", "an attribute, key=value (repeatable)") }),
		func(v *cmdValues) (apiRequest, error) {
			attrs, err := attrMap(v.attrs)
			if err != nil {
				return apiRequest{}, err
			}
			p, err := v.devicePath("/attributes")
			return apiRequest{method: "PUT", path: p, body: httpapi.AttributesRequest{Attributes: attrs}, answer: deviceView()}, err
		}},
	"suspend": {"-device NAME [flags]", "Suspends a device: DNS stops vouching for its keys within a second.",
		"deviceid-signer suspend -zone iot.example -device sensor9", deviceFlag, simple("POST", "/suspend", deviceView)},
	"resume": {"-device NAME [flags]", "Resumes a suspended device.",
		"deviceid-signer resume -zone iot.example -device sensor9", deviceFlag, simple("POST", "/resume", deviceView)},
	"transfer": {"-device NAME [flags]", "Starts a transfer: prints a one-time code (valid 7 days) to give the gaining tenant.",
		"deviceid-signer transfer -server https://signer:8443 -token-file acme-token -device sensor9", deviceFlag,
		simple("POST", "/transfer", func() any { return &httpapi.CodeResponse{} })},
	"transfer-cancel": {"-device NAME [flags]", "Cancels a pending transfer.",
		"deviceid-signer transfer-cancel -server https://signer:8443 -token-file acme-token -device sensor9", deviceFlag, simple("DELETE", "/transfer", nil)},
	"transfer-accept": {"-device NAME -code-file FILE [-keep-keys] [flags]", "Completes a transfer to the caller's tenant (the operator names it with -tenant).",
		"deviceid-signer transfer-accept -server https://signer:8443 -token-file globex-token -device sensor9 -code-file - -keep-keys < transfer-code",
		both(deviceFlag, tenantFlag("the gaining tenant (the operator)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.codeFile, "code-file", "", "file holding the transfer code from the losing tenant, - for standard input (required; never on the command line, where ps shows it)")
			fs.BoolVar(&v.keepKeys, "keep-keys", false, "keep the device's keys active; otherwise they are revoked (affiliationChanged)")
		}),
		func(v *cmdValues) (apiRequest, error) {
			p, err := v.devicePath("/transfer/accept")
			if err != nil {
				return apiRequest{}, err
			}
			code, err := readSecret(v.codeFile, "-code-file")
			return apiRequest{method: "POST", path: p, body: httpapi.AcceptRequest{Code: code, KeepKeys: v.keepKeys, Tenant: v.tenant}, answer: deviceView()}, err
		}},
	"assign": {"-device NAME -tenant T [-keep-keys] [flags]", "Gives a device to a tenant without a transfer code (the operator): adopts a device from before tenants, or settles a dispute.",
		"deviceid-signer assign -zone iot.example -device sensor9 -tenant acme -keep-keys",
		both(deviceFlag, tenantFlag("the tenant that gets the device (required)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.BoolVar(&v.keepKeys, "keep-keys", false, "keep the device's keys active; otherwise they are revoked (affiliationChanged)")
		}),
		func(v *cmdValues) (apiRequest, error) {
			if v.tenant == "" {
				return apiRequest{}, errors.New("assign needs -tenant")
			}
			p, err := v.devicePath("/assign")
			return apiRequest{method: "POST", path: p, body: httpapi.AssignRequest{Tenant: v.tenant, KeepKeys: v.keepKeys}, answer: deviceView()}, err
		}},
	"services": {"[-tenant T] [-name-prefix P] [-after NAME] [-limit N] [flags]", "Lists the services (DANE server identities) and their keys, a page at a time.",
		"deviceid-signer services -zone iot.example -name-prefix _8883._tcp.",
		both(func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.tenant, "tenant", "", "only this tenant's services")
			fs.StringVar(&v.prefix, "name-prefix", "", "only names starting with this")
		}, pageFlags("service")),
		func(v *cmdValues) (apiRequest, error) {
			q := v.filterQuery()
			q.Set("limit", strconv.Itoa(v.limit))
			return apiRequest{method: "GET", path: "/api/v1/services?" + q.Encode(), answer: &httpapi.ServiceList{}}, nil
		}},
	"service-show": {"-service NAME [flags]", "Prints a service's keys.", "deviceid-signer service-show -zone iot.example -service _8883._tcp.mqtt.acme",
		serviceFlag, serviceRequest("GET", "", func() any { return &httpapi.DeviceView{} })},
	"service-key": {"-service NAME (-cert FILE | -pubkey FILE) [-tenant T] [flags]",
		"Publishes a key for a service endpoint, served as TLSA 3 1 1 at _<port>._<tcp|udp>.<host>.<zone>.\nTo rotate, publish the new key, then revoke the old one (service-revoke -spki-sha256 ... -reason superseded).",
		"deviceid-signer service-key -zone iot.example -service _8883._tcp.mqtt.acme -cert broker.pem",
		both(serviceFlag, tenantFlag("the tenant of a new service (the operator; a tenant's services end in .<tenant>)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.csr, "cert", "", "the service's certificate, PEM or DER (its key is published)")
			fs.StringVar(&v.pubkey, "pubkey", "", "the service's public key, PEM or DER SubjectPublicKeyInfo")
		}),
		func(v *cmdValues) (apiRequest, error) {
			req := httpapi.ServiceKeyRequest{Tenant: v.tenant}
			var err error
			switch {
			case v.csr != "":
				req.Certificate, err = readDERorPEM(v.csr)
			case v.pubkey != "":
				req.PublicKey, err = readDERorPEM(v.pubkey)
			default:
				err = errors.New("service-key needs -cert or -pubkey")
			}
			if err != nil {
				return apiRequest{}, err
			}
			r, err := serviceRequest("POST", "/keys", func() any { return &httpapi.DeviceView{} })(v)
			r.body = req
			return r, err
		}},
	"service-revoke": {"-service NAME [-spki-sha256 HEX] [-reason R] [flags]", "Revokes one of a service's keys (or all): DNS publishes 255 1 1 in its place.",
		"deviceid-signer service-revoke -zone iot.example -service _8883._tcp.mqtt.acme -spki-sha256 0123... -reason superseded",
		both(serviceFlag, func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.spki, "spki-sha256", "", "the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
			fs.StringVar(&v.reason, "reason", "superseded", "the RFC 5280 reason")
		}),
		func(v *cmdValues) (apiRequest, error) {
			r, err := serviceRequest("POST", "/revoke", func() any { return &httpapi.DeviceView{} })(v)
			r.body = httpapi.RevokeRequest{SPKISHA256: v.spki, Reason: v.reason}
			return r, err
		}},
	"service-delete": {"-service NAME [flags]", "Deletes a service: DNS stops publishing its keys.",
		"deviceid-signer service-delete -zone iot.example -service _8883._tcp.mqtt.acme", serviceFlag, serviceRequest("DELETE", "", nil)},
	"tenants": {"[flags]", "Lists the tenants.", "deviceid-signer tenants -zone iot.example", nil,
		func(v *cmdValues) (apiRequest, error) {
			return apiRequest{method: "GET", path: "/api/v1/tenants", answer: &httpapi.TenantList{}}, nil
		}},
	"tenant-create": {"-tenant NAME [flags]", "Creates a tenant.", "deviceid-signer tenant-create -zone iot.example -tenant acme", tenantFlag("the tenant's name (required)"),
		func(v *cmdValues) (apiRequest, error) {
			return apiRequest{method: "POST", path: "/api/v1/tenants", body: httpapi.TenantRequest{Name: v.tenant}, answer: &registry.Tenant{}}, nil
		}},
	"tenant-disable": {"-tenant NAME [flags]", "Disables a tenant: its tokens and certificates are refused; its devices stay in DNS.",
		"deviceid-signer tenant-disable -zone iot.example -tenant acme", tenantFlag("the tenant (required)"), tenantRequest("POST", "/disable")},
	"tenant-enable": {"-tenant NAME [flags]", "Enables a disabled tenant.", "deviceid-signer tenant-enable -zone iot.example -tenant acme",
		tenantFlag("the tenant (required)"), tenantRequest("POST", "/enable")},
	"tenant-delete": {"-tenant NAME [flags]", "Deletes a disabled tenant that has no devices, and its tokens.",
		"deviceid-signer tenant-delete -zone iot.example -tenant acme", tenantFlag("the tenant (required)"), tenantRequest("DELETE", "")},
	"token": {"-tenant NAME [-label L] [flags]", "Issues a bearer token for a tenant and prints it (shown once; stored only as a hash).",
		"deviceid-signer token -zone iot.example -tenant acme -label provisioning",
		both(tenantFlag("the tenant (required)"), func(fs *flag.FlagSet, v *cmdValues) { fs.StringVar(&v.label, "label", "", "what the token is for") }),
		func(v *cmdValues) (apiRequest, error) {
			r, err := tenantRequest("POST", "/tokens")(v)
			r.body, r.answer = httpapi.TokenRequest{Label: v.label}, &registry.NewToken{}
			return r, err
		}},
	"tokens": {"-tenant NAME [flags]", "Lists a tenant's tokens (never their secrets).", "deviceid-signer tokens -zone iot.example -tenant acme",
		tenantFlag("the tenant (required)"), func(v *cmdValues) (apiRequest, error) {
			r, err := tenantRequest("GET", "/tokens")(v)
			r.answer = &httpapi.TokenList{}
			return r, err
		}},
	"token-revoke": {"-tenant NAME -id ID [flags]", "Revokes one of a tenant's tokens.", "deviceid-signer token-revoke -zone iot.example -tenant acme -id 0123456789abcdef",
		both(tenantFlag("the tenant (required)"), func(fs *flag.FlagSet, v *cmdValues) { fs.StringVar(&v.id, "id", "", "the token's id (required)") }),
		func(v *cmdValues) (apiRequest, error) {
			if v.id == "" {
				return apiRequest{}, errors.New("-id is required")
			}
			return tenantRequest("DELETE", "/tokens/"+url.PathEscape(v.id))(v)
		}},
	"audit": {"[-device D] [-tenant T] [-operation OP] [-actor A] [-after ID] [-limit N] [flags]", "Prints the audit trail, oldest first, with filters.",
		"deviceid-signer audit -zone iot.example -device sensor9",
		both(func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.device, "device", "", "one device's changes")
			fs.StringVar(&v.tenant, "tenant", "", "the changes that concern this tenant")
			fs.StringVar(&v.operation, "operation", "", "one operation, e.g. device.revoke")
			fs.StringVar(&v.actor, "actor", "", "one actor, e.g. token:0123456789abcdef")
		}, pageFlags("entry")),
		func(v *cmdValues) (apiRequest, error) {
			q := url.Values{}
			for k, val := range map[string]string{"device": v.device, "tenant": v.tenant, "operation": v.operation, "actor": v.actor, "after": v.after} {
				if val != "" {
					q.Set(k, val)
				}
			}
			q.Set("limit", strconv.Itoa(v.limit))
			return apiRequest{method: "GET", path: "/api/v1/audit?" + q.Encode(), answer: &httpapi.AuditResponse{}}, nil
		}},
}

func serviceFlag(fs *flag.FlagSet, v *cmdValues) {
	fs.StringVar(&v.service, "service", "", "the service endpoint relative to the zone, _<port>._<tcp|udp>.<host>, e.g. _8883._tcp.mqtt.acme (required)")
}

func serviceRequest(method, suffix string, answer func() any) func(v *cmdValues) (apiRequest, error) {
	return func(v *cmdValues) (apiRequest, error) {
		if v.service == "" {
			return apiRequest{}, errors.New("-service is required")
		}
		var a any
		if answer != nil {
			a = answer()
		}
		return apiRequest{method: method, path: "/api/v1/services/" + url.PathEscape(v.service) + suffix, answer: a}, nil
	}
}

func tenantRequest(method, suffix string) func(v *cmdValues) (apiRequest, error) {
	return func(v *cmdValues) (apiRequest, error) {
		if v.tenant == "" {
			return apiRequest{}, errors.New("-tenant is required")
		}
		return apiRequest{method: method, path: "/api/v1/tenants/" + url.PathEscape(v.tenant) + suffix, answer: &registry.Tenant{}}, nil
	}
}

// runAdmin runs one registry command built from its flags and prints the answer.
func runAdmin(name string, args []string) error {
	c := adminCommands[name]
	fs := command(name, c.args, c.about, c.example)
	var f adminFlags
	f.register(fs)
	var v cmdValues
	if c.flags != nil {
		c.flags(fs, &v)
	}
	if name == "enroll" {
		f.ca.register(fs)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	req, err := c.request(&v)
	if err != nil {
		return err
	}
	if req.method == "DELETE" {
		req.answer = nil // 204: no body
	}
	client, done, err := f.client(req.needsCA)
	if err != nil {
		return err
	}
	defer done()
	raw, err := client.do(req)
	if err != nil {
		return err
	}
	if name == "export" || req.answer == nil {
		if len(raw) == 0 && name == "delete" {
			_, err = fmt.Printf("deleted %s\n", v.device)
			return err
		}
		if len(raw) == 0 {
			_, err = fmt.Printf("done: %s\n", name)
			return err
		}
		_, err = os.Stdout.Write(raw)
		return err
	}
	if err := json.Unmarshal(raw, req.answer); err != nil {
		return fmt.Errorf("the signer's answer: %w", err)
	}
	if er, ok := req.answer.(*httpapi.EnrollResponse); ok && v.out != "" {
		if err := os.WriteFile(v.out, []byte(er.Certificate), 0o644); err != nil {
			return err
		}
	}
	if f.json || (name != "show" && name != "list") {
		_, err = os.Stdout.Write(raw)
		return err
	}
	return printTable(os.Stdout, req.answer)
}

// apiClient sends admin API requests: over HTTPS to a signer, or to the API's
// handler in this process.
type apiClient struct {
	http    *http.Client
	base    string
	token   string
	handler http.Handler
}

// client connects the way the flags say; done releases it.
func (f *adminFlags) client(needsCA bool) (*apiClient, func(), error) {
	if f.server != "" {
		if f.tokenFile == "" {
			return nil, nil, errors.New("-token-file is required with -server")
		}
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, nil, err
		}
		c := &apiClient{http: http.DefaultClient, base: strings.TrimSuffix(f.server, "/"), token: strings.TrimSpace(string(b))}
		if pemCA, err := os.ReadFile(f.serverCA); err == nil { // trust the signer's CA when we have it
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pemCA)
			c.http = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
		return c, func() {}, nil
	}
	settings, err := f.settings()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg := &registry.Registry{Prefix: f.prefix, Zone: f.zone}
	if reg.Client, err = settings.Connect(ctx, 10*time.Second, reg.ZonePrefix()); err != nil {
		return nil, nil, err
	}
	timeout := f.timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	api := &httpapi.API{Registry: reg, Token: randomToken(), OperatorID: "cli:" + currentUser(), Timeout: timeout}
	if needsCA {
		if api.CA, err = f.ca.load(f.zone); err != nil {
			reg.Client.Close()
			return nil, nil, err
		}
	}
	return &apiClient{handler: api.Handler(), token: api.Token}, func() { reg.Client.Close() }, nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func randomToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// do sends one request and returns the answer's body; an error status is an error
// with the API's message.
func (c *apiClient) do(req apiRequest) ([]byte, error) {
	var body io.Reader = http.NoBody
	if req.body != nil {
		b, _ := json.Marshal(req.body)
		body = bytes.NewReader(b)
	}
	r, err := http.NewRequest(req.method, c.base+req.path, body)
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+c.token)
	if req.body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	var status int
	var b []byte
	if c.handler != nil {
		rec := httptest.NewRecorder()
		c.handler.ServeHTTP(rec, r)
		status, b = rec.Code, rec.Body.Bytes()
	} else {
		resp, err := c.http.Do(r)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if b, err = io.ReadAll(resp.Body); err != nil {
			return nil, err
		}
		status = resp.StatusCode
	}
	if status >= 300 {
		msg := strings.TrimSpace(string(b))
		var e httpapi.ErrorResponse
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &apiError{status: status, msg: msg}
	}
	return b, nil
}

// apiError is an answer of the API with an error status.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return http.StatusText(e.status) + ": " + e.msg }

// printTable writes show's and list's answers as a table.
func printTable(w io.Writer, answer any) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	defer tw.Flush()
	now := time.Now()
	switch a := answer.(type) {
	case *httpapi.DeviceView:
		fmt.Fprintf(tw, "device %s\ttenant %s\tstate %s\n", a.Name, orDash(a.Tenant), orDash(a.State))
		for k, v := range a.Attributes {
			fmt.Fprintf(tw, "  %s\t%s\n", k, v)
		}
		fmt.Fprintln(tw, "KEY (SHA-256 of the SPKI)\tSTATUS\tNOT AFTER\tCERTIFICATE\tDNS PUBLISHES")
		for _, c := range a.Credentials {
			fmt.Fprintln(tw, credentialRow(c, a.Suspended(), now))
		}
	case *httpapi.ListResponse:
		fmt.Fprintln(tw, "DEVICE\tTENANT\tSTATE\tACTIVE\tREVOKED\tDNS SERVES IT")
		for _, d := range a.Devices {
			if d.Invalid != "" {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tno: INVALID RECORD: %s\n", d.Name, d.Invalid)
				continue
			}
			serves := "no (nothing to publish)"
			if d.Revoked > 0 || d.Active > 0 && d.State != record.StateSuspended {
				serves = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", d.Name, orDash(d.Tenant), d.State, d.Active, d.Revoked, serves)
		}
		if a.Next != "" {
			fmt.Fprintf(tw, "(more: -after %s)\n", a.Next)
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// credentialRow is one credential as a table row.
func credentialRow(c record.Credential, suspended bool, now time.Time) string {
	sum := sha256.Sum256(c.SPKI)
	notAfter, cert := "-", "no"
	if c.NotAfter != nil {
		notAfter = c.NotAfter.UTC().Format(time.RFC3339)
	}
	if c.Cert != nil {
		cert = "yes"
	}
	dns := "3 1 1"
	if c.Cert != nil {
		dns += ", 4 0 0"
	}
	switch {
	case c.Status == record.StatusRevoked:
		dns = "255 1 1 (revoked: " + c.Reason + ")"
	case c.Expired(now):
		dns = "nothing (expired)"
	case suspended:
		dns = "nothing (suspended)"
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", hex.EncodeToString(sum[:]), c.Status, notAfter, cert, dns)
}

// readDERorPEM returns a file as the API takes it: PEM as it is, DER in base64.
func readDERorPEM(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	if strings.Contains(string(b), "-----BEGIN") {
		return string(b), nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// initCA makes a self-signed root CA in a directory, or with -csr the key and CSR of
// an intermediate CA for a parent CA to sign, and an admin API token beside it.
func initCA(args []string) error {
	fs := command("init-ca", "-dir DIR -zone ZONE [flags]",
		"Makes a self-signed root CA (ca.pem and ca-key.pem, or the key in an HSM with -key), or with -csr the key\n"+
			"and CSR of an intermediate CA, and writes an admin API bearer token (admin-token) if there is none.",
		"deviceid-signer init-ca -dir /etc/deviceid -zone iot.example")
	dir := fs.String("dir", ".", "directory to write ca.pem, ca-key.pem and admin-token into (made if missing)")
	zone := fs.String("zone", env("DEVICEID_ZONE", ""), "the zone the CA issues device names in ($DEVICEID_ZONE; required)")
	name := fs.String("name", "deviceid device CA", "the CA's common name")
	curve := fs.String("curve", "P-256", "P-256 or P-384")
	csr := fs.Bool("csr", false, "make an intermediate CA: write ca-key.pem and ca.csr; put the signed certificate and the chain above it in ca.pem")
	key := fs.String("key", "", "make the CA key in an HSM: a PKCS#11 URI (RFC 7512) with object=<label>, module-path and pin-source; serve then takes it as -ca-key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *zone == "" && !*csr {
		return errors.New("-zone is required")
	}
	c := elliptic.P256()
	switch *curve {
	case "P-256":
	case "P-384":
		c = elliptic.P384()
	default:
		return fmt.Errorf("curve %q: want P-256 or P-384", *curve)
	}
	if *csr {
		if err := ca.InitIntermediate(*dir, *name, c, *key); err != nil {
			return err
		}
		fmt.Printf("wrote %s: have the CSR signed as a CA (basicConstraints cA, keyCertSign),\n"+
			"then write the certificate, followed by its chain, to %s\n", filepath.Join(*dir, ca.CARequestFile), filepath.Join(*dir, ca.CACertFile))
	} else {
		authority, err := ca.InitCA(*dir, *name, *zone, c, *key)
		if err != nil {
			return err
		}
		where := filepath.Join(*dir, ca.CAKeyFile)
		if *key != "" {
			where = "the HSM (serve with -ca-key '" + *key + "')"
		}
		fmt.Printf("wrote %s, its key in %s; key identifier %s\n", filepath.Join(*dir, ca.CACertFile), where, authority.AKI())
	}
	tokenFile := filepath.Join(*dir, "admin-token")
	made, err := writeToken(tokenFile)
	if err != nil {
		return err
	}
	if made {
		fmt.Printf("wrote the admin API bearer token to %s (serve -token-file %s)\n", tokenFile, tokenFile)
	}
	return nil
}

// writeToken writes a new random bearer token to file unless it exists, and reports
// whether it wrote one.
func writeToken(file string) (bool, error) {
	if _, err := os.Stat(file); err == nil {
		return false, nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	return true, os.WriteFile(file, []byte(hex.EncodeToString(raw)+"\n"), 0o600)
}
