package main

import (
	"bytes"
	"context"
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
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/deviceid/deviceid/record"
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
	method, path string // the path with the query
	body         any
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

// adminCommand is one registry command. The route it calls (httpapi.Routes) gives
// its method, path, query parameters, answer and the first line of its help; the
// command adds only what is the command line's: its flags and the request body.
type adminCommand struct {
	route         string // the route's operation ID
	args, example string
	more          string                               // -h's lines after the route's summary
	flags         func(fs *flag.FlagSet, v *cmdValues) // beside adminFlags
	body          func(v *cmdValues) (any, error)      // nil: no body
	needsCA       bool                                 // on etcd directly: the CA issues a certificate
}

// cmdValues are the values of the flags that make request bodies. The path and
// query parameters are read back from the flag set by name (see request).
type cmdValues struct {
	device, tenant, label, codeFile      string
	csr, cert, pubkey, out, reason, spki string
	supersede, keepKeys                  bool
	attrs                                stringList
}

// paramFlags are the flags of the route table's parameters that have another name.
var paramFlags = map[string]string{"name": "device", "prefix": "name-prefix"}

func paramFlag(param string) string {
	if f, ok := paramFlags[param]; ok {
		return f
	}
	return param
}

// flagValues are the values of fs's flag name: none when it is empty or not a flag.
func flagValues(fs *flag.FlagSet, name string) []string {
	f := fs.Lookup(name)
	if f == nil {
		return nil
	}
	if l, ok := f.Value.(*stringList); ok {
		return *l
	}
	if s := f.Value.String(); s != "" {
		return []string{s}
	}
	return nil
}

// request builds the command's request to rt from the parsed flags: the path
// parameters (required) and the query parameters are the flags of the same name.
func (c adminCommand) request(rt httpapi.RouteInfo, fs *flag.FlagSet, v *cmdValues) (apiRequest, error) {
	segs := strings.Split(rt.Path, "/")
	for i, s := range segs {
		if param, ok := strings.CutPrefix(s, "{"); ok {
			name := paramFlag(strings.TrimSuffix(param, "}"))
			val := flagValues(fs, name)
			if len(val) == 0 {
				return apiRequest{}, fmt.Errorf("-%s is required", name)
			}
			segs[i] = url.PathEscape(val[0])
		}
	}
	req := apiRequest{method: rt.Method, path: strings.Join(segs, "/")}
	q := url.Values{}
	for _, param := range rt.Query {
		q[param] = flagValues(fs, paramFlag(param))
	}
	if len(rt.Query) > 0 {
		req.path += "?" + q.Encode()
	}
	if c.body != nil {
		var err error
		if req.body, err = c.body(v); err != nil {
			return apiRequest{}, err
		}
	}
	return req, nil
}

// about is the command's help: the route's summary, and what the command adds.
func (c adminCommand) about(rt httpapi.RouteInfo) string {
	s := rt.Summary + "."
	if rt.Operator {
		s += " The registry operator only."
	}
	if c.more != "" {
		s += "\n" + c.more
	}
	return s
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

// eitherFile reads the file of one of two flags that exclude each other: a key,
// or a CSR or certificate holding one.
func eitherFile(first, second, missing string) (a, b string, err error) {
	switch {
	case first != "":
		a, err = readDERorPEM(first)
	case second != "":
		b, err = readDERorPEM(second)
	default:
		err = errors.New(missing)
	}
	return a, b, err
}

func deviceFlag(fs *flag.FlagSet, v *cmdValues) {
	fs.StringVar(&v.device, "device", "", "the device name, e.g. sensor7 (required)")
}

func serviceFlag(fs *flag.FlagSet, _ *cmdValues) {
	fs.String("service", "", "the service endpoint relative to the zone, _<port>._<tcp|udp>.<host>, e.g. _8883._tcp.mqtt.acme (required)")
}

func tenantFlag(about string) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) { fs.StringVar(&v.tenant, "tenant", "", about) }
}

var requiredTenant = tenantFlag("the tenant (required)")

func attrFlag(fs *flag.FlagSet, v *cmdValues) {
	fs.Var(&v.attrs, "attr", "an attribute, key=value (repeatable)")
}

func keepKeysFlag(fs *flag.FlagSet, v *cmdValues) {
	fs.BoolVar(&v.keepKeys, "keep-keys", false, "keep the device's keys active; otherwise they are revoked (affiliationChanged)")
}

func revokeFlags(reason string) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) {
		fs.StringVar(&v.spki, "spki-sha256", "", "the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
		fs.StringVar(&v.reason, "reason", reason, "the RFC 5280 reason")
	}
}

func filterFlags(fs *flag.FlagSet, v *cmdValues) {
	fs.String("tenant", "", "only this tenant's devices")
	fs.String("state", "", "only active or suspended devices")
	fs.String("name-prefix", "", "only names starting with this")
	fs.Var(&v.attrs, "attr", "only devices with this attribute, key=value (repeatable)")
}

// pageFlags are a list's paging flags; noun names what is listed.
func pageFlags(noun string) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, _ *cmdValues) {
		fs.String("after", "", "start after this "+noun+" (the next of the previous page)")
		fs.Int("limit", 100, "how many, at most 1000")
	}
}

func both(fns ...func(fs *flag.FlagSet, v *cmdValues)) func(fs *flag.FlagSet, v *cmdValues) {
	return func(fs *flag.FlagSet, v *cmdValues) {
		for _, f := range fns {
			f(fs, v)
		}
	}
}

func revokeBody(v *cmdValues) (any, error) {
	return httpapi.RevokeRequest{SPKISHA256: v.spki, Reason: v.reason}, nil
}

var adminCommands = map[string]adminCommand{
	"enroll": {route: "postDevicesNameEnroll", args: "-device NAME (-csr FILE | -pubkey FILE) [flags]", needsCA: true,
		example: "deviceid-signer enroll -zone iot.example -device sensor9 -csr sensor9.csr -out sensor9.pem -ca-cert ca.pem -ca-key ca-key.pem",
		flags: both(deviceFlag, tenantFlag("register a new device for this tenant (the operator)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.csr, "csr", "", "a PKCS#10 CSR file (PEM or DER)")
			fs.StringVar(&v.pubkey, "pubkey", "", "a public key file (PEM or DER SubjectPublicKeyInfo), for a device without a certificate")
			fs.BoolVar(&v.supersede, "supersede", false, "revoke the device's other keys (reason superseded) in the same write")
			fs.StringVar(&v.out, "out", "", "write the issued certificate (PEM) here")
		}),
		body: func(v *cmdValues) (any, error) {
			req := httpapi.EnrollRequest{Supersede: v.supersede, Tenant: v.tenant}
			var err error
			req.CSR, req.PublicKey, err = eitherFile(v.csr, v.pubkey, "enroll needs -csr or -pubkey")
			return req, err
		}},
	"revoke": {route: "postDevicesNameRevoke", args: "-device NAME [-spki-sha256 HEX] [-reason REASON] [flags]",
		example: "deviceid-signer revoke -zone iot.example -device sensor9 -reason keyCompromise",
		flags:   both(deviceFlag, revokeFlags("unspecified")), body: revokeBody},
	"delete": {route: "deleteDevicesName", args: "-device NAME [flags]",
		example: "deviceid-signer delete -zone iot.example -device sensor9", flags: deviceFlag},
	"show": {route: "getDevicesName", args: "-device NAME [-json] [flags]",
		more:    "Prints its tenant, state, keys and what DNS publishes for them.",
		example: "deviceid-signer show -zone iot.example -device sensor9", flags: deviceFlag},
	"list": {route: "getDevices", args: "[-tenant T] [-state S] [-name-prefix P] [-attr K=V] [-after NAME] [-limit N] [-json] [flags]",
		example: "deviceid-signer list -zone iot.example -tenant acme -attr model=th-200 -limit 50",
		flags:   both(filterFlags, pageFlags("device"))},
	"export": {route: "getExport", args: "[-tenant T] [-state S] [-name-prefix P] [-attr K=V] [flags] > devices.jsonl",
		example: "deviceid-signer export -zone iot.example -tenant acme > acme.jsonl", flags: filterFlags},
	"code": {route: "postDevicesNameCode", args: "-device NAME [-tenant T] [flags]",
		example: "deviceid-signer code -zone iot.example -device sensor9 -tenant acme",
		flags:   both(deviceFlag, tenantFlag("register a new device for this tenant (the operator)")),
		body:    func(v *cmdValues) (any, error) { return httpapi.CodeRequest{Tenant: v.tenant}, nil }},
	"register": {route: "postDevicesNameRegister", args: "-device NAME [-tenant T] [-attr K=V ...] [flags]",
		example: "deviceid-signer register -zone iot.example -device sensor9 -tenant acme -attr model=th-200 -attr serial=A1B2",
		flags:   both(deviceFlag, tenantFlag("the tenant (the operator; a tenant registers for itself)"), attrFlag),
		body: func(v *cmdValues) (any, error) {
			attrs, err := attrMap(v.attrs)
			return httpapi.RegisterRequest{Tenant: v.tenant, Attributes: attrs}, err
		}},
	"attributes": {route: "putDevicesNameAttributes", args: "-device NAME [-attr K=V ...] [flags]",
		example: "deviceid-signer attributes -zone iot.example -device sensor9 -attr firmware=2.1",
		flags:   both(deviceFlag, attrFlag),
		body: func(v *cmdValues) (any, error) {
			attrs, err := attrMap(v.attrs)
			return httpapi.AttributesRequest{Attributes: attrs}, err
		}},
	"suspend": {route: "postDevicesNameSuspend", args: "-device NAME [flags]",
		example: "deviceid-signer suspend -zone iot.example -device sensor9", flags: deviceFlag},
	"resume": {route: "postDevicesNameResume", args: "-device NAME [flags]",
		example: "deviceid-signer resume -zone iot.example -device sensor9", flags: deviceFlag},
	"transfer": {route: "postDevicesNameTransfer", args: "-device NAME [flags]",
		example: "deviceid-signer transfer -server https://signer:8443 -token-file acme-token -device sensor9", flags: deviceFlag},
	"transfer-cancel": {route: "deleteDevicesNameTransfer", args: "-device NAME [flags]",
		example: "deviceid-signer transfer-cancel -server https://signer:8443 -token-file acme-token -device sensor9", flags: deviceFlag},
	"transfer-accept": {route: "postDevicesNameTransferAccept", args: "-device NAME -code-file FILE [-keep-keys] [flags]",
		example: "deviceid-signer transfer-accept -server https://signer:8443 -token-file globex-token -device sensor9 -code-file - -keep-keys < transfer-code",
		flags: both(deviceFlag, tenantFlag("the gaining tenant (the operator)"), keepKeysFlag, func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.codeFile, "code-file", "", "file holding the transfer code from the losing tenant, - for standard input (required; never on the command line, where ps shows it)")
		}),
		body: func(v *cmdValues) (any, error) {
			code, err := readSecret(v.codeFile, "-code-file")
			return httpapi.AcceptRequest{Code: code, KeepKeys: v.keepKeys, Tenant: v.tenant}, err
		}},
	"assign": {route: "postDevicesNameAssign", args: "-device NAME -tenant T [-keep-keys] [flags]",
		example: "deviceid-signer assign -zone iot.example -device sensor9 -tenant acme -keep-keys",
		flags:   both(deviceFlag, tenantFlag("the tenant that gets the device (required)"), keepKeysFlag),
		body: func(v *cmdValues) (any, error) {
			if v.tenant == "" {
				return nil, errors.New("assign needs -tenant")
			}
			return httpapi.AssignRequest{Tenant: v.tenant, KeepKeys: v.keepKeys}, nil
		}},

	"services": {route: "getServices", args: "[-tenant T] [-name-prefix P] [-after NAME] [-limit N] [flags]",
		example: "deviceid-signer services -zone iot.example -name-prefix _8883._tcp.",
		flags: both(func(fs *flag.FlagSet, _ *cmdValues) {
			fs.String("tenant", "", "only this tenant's services")
			fs.String("name-prefix", "", "only names starting with this")
		}, pageFlags("service"))},
	"service-show": {route: "getServicesService", args: "-service NAME [flags]",
		example: "deviceid-signer service-show -zone iot.example -service _8883._tcp.mqtt.acme", flags: serviceFlag},
	"service-key": {route: "postServicesServiceKeys", args: "-service NAME (-cert FILE | -pubkey FILE) [-tenant T] [flags]",
		more:    "It is served as TLSA 3 1 1 at _<port>._<tcp|udp>.<host>.<zone>; revoke the old key with service-revoke -spki-sha256 ... -reason superseded.",
		example: "deviceid-signer service-key -zone iot.example -service _8883._tcp.mqtt.acme -cert broker.pem",
		flags: both(serviceFlag, tenantFlag("the tenant of a new service (the operator; a tenant's services end in .<tenant>)"), func(fs *flag.FlagSet, v *cmdValues) {
			fs.StringVar(&v.cert, "cert", "", "the service's certificate, PEM or DER (its key is published)")
			fs.StringVar(&v.pubkey, "pubkey", "", "the service's public key, PEM or DER SubjectPublicKeyInfo")
		}),
		body: func(v *cmdValues) (any, error) {
			req := httpapi.ServiceKeyRequest{Tenant: v.tenant}
			var err error
			req.Certificate, req.PublicKey, err = eitherFile(v.cert, v.pubkey, "service-key needs -cert or -pubkey")
			return req, err
		}},
	"service-revoke": {route: "postServicesServiceRevoke", args: "-service NAME [-spki-sha256 HEX] [-reason R] [flags]",
		example: "deviceid-signer service-revoke -zone iot.example -service _8883._tcp.mqtt.acme -spki-sha256 0123... -reason superseded",
		flags:   both(serviceFlag, revokeFlags("superseded")), body: revokeBody},
	"service-delete": {route: "deleteServicesService", args: "-service NAME [flags]",
		example: "deviceid-signer service-delete -zone iot.example -service _8883._tcp.mqtt.acme", flags: serviceFlag},

	"tenants": {route: "getTenants", args: "[flags]", example: "deviceid-signer tenants -zone iot.example"},
	"tenant-create": {route: "postTenants", args: "-tenant NAME [flags]",
		example: "deviceid-signer tenant-create -zone iot.example -tenant acme", flags: tenantFlag("the tenant's name (required)"),
		body: func(v *cmdValues) (any, error) { return httpapi.TenantRequest{Name: v.tenant}, nil }},
	"tenant-disable": {route: "postTenantsTenantDisable", args: "-tenant NAME [flags]",
		example: "deviceid-signer tenant-disable -zone iot.example -tenant acme", flags: requiredTenant},
	"tenant-enable": {route: "postTenantsTenantEnable", args: "-tenant NAME [flags]",
		example: "deviceid-signer tenant-enable -zone iot.example -tenant acme", flags: requiredTenant},
	"tenant-delete": {route: "deleteTenantsTenant", args: "-tenant NAME [flags]",
		example: "deviceid-signer tenant-delete -zone iot.example -tenant acme", flags: requiredTenant},
	"token": {route: "postTenantsTenantTokens", args: "-tenant NAME [-label L] [flags]",
		example: "deviceid-signer token -zone iot.example -tenant acme -label provisioning",
		flags:   both(requiredTenant, func(fs *flag.FlagSet, v *cmdValues) { fs.StringVar(&v.label, "label", "", "what the token is for") }),
		body:    func(v *cmdValues) (any, error) { return httpapi.TokenRequest{Label: v.label}, nil }},
	"tokens": {route: "getTenantsTenantTokens", args: "-tenant NAME [flags]",
		example: "deviceid-signer tokens -zone iot.example -tenant acme", flags: requiredTenant},
	"token-revoke": {route: "deleteTenantsTenantTokensId", args: "-tenant NAME -id ID [flags]",
		example: "deviceid-signer token-revoke -zone iot.example -tenant acme -id 0123456789abcdef",
		flags:   both(requiredTenant, func(fs *flag.FlagSet, _ *cmdValues) { fs.String("id", "", "the token's id (required)") })},

	"audit": {route: "getAudit", args: "[-device D] [-tenant T] [-operation OP] [-actor A] [-since TIME] [-until TIME] [-after ID] [-limit N] [flags]",
		example: "deviceid-signer audit -zone iot.example -device sensor9 -since 2026-12-01T00:00:00Z",
		flags: both(func(fs *flag.FlagSet, _ *cmdValues) {
			fs.String("device", "", "one device's changes")
			fs.String("tenant", "", "the changes that concern this tenant")
			fs.String("operation", "", "one operation, e.g. device.revoke")
			fs.String("actor", "", "one actor, e.g. token:0123456789abcdef")
			fs.String("since", "", "changes at or after this time (RFC 3339)")
			fs.String("until", "", "changes before this time (RFC 3339)")
		}, pageFlags("entry"))},
	"overview": {route: "getOverview", args: "[-tenant T] [flags]",
		more:    "Prints JSON. Through a signer (-server) the DNS part is what its -dns server serves; on etcd directly there is no DNS server to ask.",
		example: "deviceid-signer overview -server https://signer:8443 -token-file admin-token -tenant acme",
		flags:   func(fs *flag.FlagSet, _ *cmdValues) { fs.String("tenant", "", "one tenant's part") }},
}

// apiRoutes are the admin API's routes by operation ID.
var apiRoutes = func() map[string]httpapi.RouteInfo {
	m := map[string]httpapi.RouteInfo{}
	for _, rt := range httpapi.Routes() {
		m[rt.ID] = rt
	}
	return m
}()

// runAdmin runs one registry command built from its flags and prints the answer.
func runAdmin(name string, args []string) error {
	c := adminCommands[name]
	rt, ok := apiRoutes[c.route]
	if !ok {
		return fmt.Errorf("%s calls %q, no route of the API", name, c.route) // TestCommandRoutes catches it
	}
	fs := command(name, c.args, c.about(rt), c.example)
	var f adminFlags
	f.register(fs)
	var v cmdValues
	if c.flags != nil {
		c.flags(fs, &v)
	}
	if c.needsCA {
		f.ca.register(fs)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	req, err := c.request(rt, fs, &v)
	if err != nil {
		return err
	}
	client, done, err := f.client(c.needsCA)
	if err != nil {
		return err
	}
	defer done()
	raw, err := client.do(req)
	if err != nil {
		return err
	}
	if name == "export" || rt.Response == nil { // JSON lines, or no body (204)
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
	answer := reflect.New(reflect.TypeOf(rt.Response)).Interface() // decoded to check it, for -out and the table
	if err := json.Unmarshal(raw, answer); err != nil {
		return fmt.Errorf("the signer's answer: %w", err)
	}
	if er, ok := answer.(*httpapi.EnrollResponse); ok && v.out != "" {
		if err := os.WriteFile(v.out, []byte(er.Certificate), 0o644); err != nil {
			return err
		}
	}
	if f.json || (name != "show" && name != "list") {
		_, err = os.Stdout.Write(raw)
		return err
	}
	return printTable(os.Stdout, answer)
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
		fmt.Fprintf(tw, "device %s\ttenant %s\tstate %s\n", a.Name, orDash(a.Tenant), orDash(a.Condition))
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
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", d.Name, orDash(d.Tenant), d.Condition, d.Active, d.Revoked, serves)
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
