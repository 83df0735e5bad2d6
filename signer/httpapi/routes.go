package httpapi

import (
	"net/http"

	"github.com/deviceid/deviceid/signer/registry"
)

// route is one endpoint of the admin API, described once: the handler, and what
// the OpenAPI document says about it (openapi.go builds the document from this table,
// and deviceid-signer its commands, through Routes).
type route struct {
	method, path string
	summary      string
	operator     bool             // the registry operator only
	query        []queryParam     // query parameters
	request      any              // the JSON body's type; nil for none
	status       int              // of success
	response     any              // the success body's type; nil for none
	errors       []int            // the error statuses it answers with, besides 401, 403 and 503
	handle       func(c *apiCall) // the handler
}

type queryParam struct{ name, about string }

// RouteInfo describes one route of the admin API to a client that builds its
// requests from the route table, as deviceid-signer's commands do.
type RouteInfo struct {
	Method   string
	Path     string   // a net/http pattern; {name}, {service}, {tenant} and {id} are path parameters
	ID       string   // the operation's id in the OpenAPI document, e.g. postDevicesNameRevoke
	Summary  string   // a sentence without its full stop
	Operator bool     // the registry operator only
	Query    []string // the query parameters it takes
	Response any      // a zero value of the success body's type; nil for none
}

// Routes returns the admin API's routes.
func Routes() []RouteInfo {
	infos := make([]RouteInfo, len(routes))
	for i, rt := range routes {
		infos[i] = RouteInfo{Method: rt.method, Path: rt.path, ID: operationID(rt), Summary: rt.summary, Operator: rt.operator, Response: rt.response}
		for _, q := range rt.query {
			infos[i].Query = append(infos[i].Query, q.name)
		}
	}
	return infos
}

// Errors every device route may answer.
var deviceErrors = []int{http.StatusBadRequest, http.StatusNotFound}

var listQuery = []queryParam{
	{"tenant", "only this tenant's devices (a tenant sees only its own anyway)"},
	{"state", "active or suspended"},
	{"prefix", "device names starting with this"},
	{"attr", "key=value; repeat for more, every one must match"},
	{"after", "the next of the previous page"},
	{"limit", "1 to 1000, default 100"},
}

var serviceQuery = []queryParam{
	{"tenant", "only this tenant's services (a tenant sees only its own anyway)"},
	{"prefix", "service names starting with this, e.g. _8883._tcp."},
	listQuery[4], listQuery[5],
}

// routes is the whole admin API.
var routes = []route{
	{method: "GET", path: "/api/v1/whoami", summary: "Who the request's credentials belong to", status: 200, response: WhoAmI{}, handle: (*apiCall).whoami},

	{method: "GET", path: "/api/v1/devices", summary: "List devices a page at a time, with filters; invalid records are flagged", query: listQuery,
		status: 200, response: ListResponse{}, errors: []int{400, 404}, handle: (*apiCall).list},
	{method: "GET", path: "/api/v1/export", summary: "Export devices as JSON lines (one ExportLine each)", query: listQuery[:4],
		status: 200, response: ExportLine{}, errors: []int{400, 404}, handle: (*apiCall).export},
	{method: "GET", path: "/api/v1/devices/{name}", summary: "A device's record and keys", status: 200, response: DeviceView{}, errors: deviceErrors, handle: (*apiCall).get},
	{method: "DELETE", path: "/api/v1/devices/{name}", summary: "Delete a device (an invalid record too), its codes and its records in DNS", status: 204, errors: deviceErrors, handle: (*apiCall).delete},
	{method: "POST", path: "/api/v1/devices/{name}/register", summary: "Reserve a name for a tenant, with no key yet, and set its attributes", request: RegisterRequest{},
		status: 200, response: DeviceView{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).register},
	{method: "POST", path: "/api/v1/devices/{name}/enroll", summary: "Enroll a key: a CSR (a certificate is issued) or a bare public key", request: EnrollRequest{},
		status: 201, response: EnrollResponse{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).enroll},
	{method: "POST", path: "/api/v1/devices/{name}/code", summary: "Issue a one-time enrollment code for EST, valid 24 h (registers the device if needed)", request: CodeRequest{},
		status: 201, response: CodeResponse{}, errors: []int{400, 404, 409, 415}, handle: (*apiCall).code},
	{method: "POST", path: "/api/v1/devices/{name}/revoke", summary: "Revoke one of a device's keys, or all, with an RFC 5280 reason", request: RevokeRequest{},
		status: 200, response: DeviceView{}, errors: []int{400, 404, 413, 415}, handle: (*apiCall).revoke},
	{method: "POST", path: "/api/v1/devices/{name}/suspend", summary: "Suspend a device: DNS stops vouching for its keys within a second", status: 200, response: DeviceView{}, errors: deviceErrors, handle: (*apiCall).suspend},
	{method: "POST", path: "/api/v1/devices/{name}/resume", summary: "Resume a suspended device", status: 200, response: DeviceView{}, errors: deviceErrors, handle: (*apiCall).resume},
	{method: "PUT", path: "/api/v1/devices/{name}/attributes", summary: "Replace a device's attributes (with none, remove them all)", request: AttributesRequest{},
		status: 200, response: DeviceView{}, errors: []int{400, 404, 413, 415}, handle: (*apiCall).attributes},
	{method: "POST", path: "/api/v1/devices/{name}/transfer", summary: "Start a transfer: a one-time code for the gaining tenant, valid 7 days", status: 201, response: CodeResponse{}, errors: deviceErrors, handle: (*apiCall).startTransfer},
	{method: "DELETE", path: "/api/v1/devices/{name}/transfer", summary: "Cancel a pending transfer", status: 204, errors: deviceErrors, handle: (*apiCall).cancelTransfer},
	{method: "POST", path: "/api/v1/devices/{name}/transfer/accept", summary: "Complete a transfer with the losing tenant's code", request: AcceptRequest{},
		status: 200, response: DeviceView{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).acceptTransfer},
	{method: "POST", path: "/api/v1/devices/{name}/assign", summary: "Give a device to a tenant without a transfer code (a device from before tenants, a dispute)", operator: true,
		request: AssignRequest{}, status: 200, response: DeviceView{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).assign},
	{method: "GET", path: "/api/v1/devices/{name}/dns", summary: "The TLSA records DNS serves for the device right now", status: 200, response: DNSAnswer{}, errors: deviceErrors, handle: (*apiCall).dns},

	{method: "GET", path: "/api/v1/services", summary: "List services (DANE server identities) a page at a time", query: serviceQuery,
		status: 200, response: ServiceList{}, errors: []int{400, 404}, handle: (*apiCall).listServices},
	{method: "GET", path: "/api/v1/services/{service}", summary: "A service's keys", status: 200, response: DeviceView{}, errors: deviceErrors, handle: (*apiCall).getService},
	{method: "DELETE", path: "/api/v1/services/{service}", summary: "Delete a service: DNS stops publishing its keys", status: 204, errors: deviceErrors, handle: (*apiCall).deleteService},
	{method: "POST", path: "/api/v1/services/{service}/keys", summary: "Publish a key for a service (rotation: the new key beside the old, then revoke the old)", request: ServiceKeyRequest{},
		status: 201, response: DeviceView{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).publishServiceKey},
	{method: "POST", path: "/api/v1/services/{service}/revoke", summary: "Revoke one of a service's keys, or all: DNS publishes 255 1 1 in their place", request: RevokeRequest{},
		status: 200, response: DeviceView{}, errors: []int{400, 404, 413, 415}, handle: (*apiCall).revokeServiceKey},

	{method: "GET", path: "/api/v1/audit", summary: "The audit trail, oldest first, with filters",
		query: []queryParam{{"device", "one device"}, {"tenant", "entries that concern this tenant (a tenant sees only its own)"}, {"operation", "e.g. device.revoke"}, {"actor", "e.g. token:<id>"},
			{"since", "entries at or after this time (RFC 3339)"}, {"until", "entries before this time (RFC 3339)"}, {"after", "the next of the previous page"}, {"limit", "1 to 1000, default 100"}},
		status: 200, response: AuditResponse{}, errors: []int{400}, handle: (*apiCall).audit},

	{method: "GET", path: "/api/v1/overview", summary: "Devices by condition, the last 14 days' enrollments, revocations and transfers, devices expiring within 30 days, and the DNS server's serial and signatures",
		query: []queryParam{{"tenant", "one tenant's part (a tenant sees only its own)"}}, status: 200, response: Overview{}, errors: []int{400, 404}, handle: (*apiCall).overview},

	{method: "GET", path: "/api/v1/keys", summary: "The zone's DNSSEC keys, what each does now and its timeline, and the key manager's policy", operator: true,
		status: 200, response: KeysView{}, handle: (*apiCall).keys},

	{method: "GET", path: "/api/v1/tenants", summary: "List tenants (a tenant sees itself)", status: 200, response: TenantList{}, handle: (*apiCall).tenants},
	{method: "POST", path: "/api/v1/tenants", summary: "Create a tenant", operator: true, request: TenantRequest{}, status: 201, response: registry.Tenant{}, errors: []int{400, 413, 415}, handle: (*apiCall).createTenant},
	{method: "GET", path: "/api/v1/tenants/{tenant}", summary: "One tenant", status: 200, response: registry.Tenant{}, errors: []int{400, 404}, handle: (*apiCall).tenant},
	{method: "DELETE", path: "/api/v1/tenants/{tenant}", summary: "Delete a disabled tenant that has no devices, and its tokens", operator: true, status: 204, errors: []int{400, 404, 409}, handle: (*apiCall).deleteTenant},
	{method: "POST", path: "/api/v1/tenants/{tenant}/disable", summary: "Disable a tenant: its credentials are refused; its devices stay in DNS", operator: true, status: 200, response: registry.Tenant{}, errors: []int{400, 404}, handle: (*apiCall).disableTenant},
	{method: "POST", path: "/api/v1/tenants/{tenant}/enable", summary: "Enable a disabled tenant", operator: true, status: 200, response: registry.Tenant{}, errors: []int{400, 404}, handle: (*apiCall).enableTenant},
	{method: "GET", path: "/api/v1/tenants/{tenant}/tokens", summary: "A tenant's tokens (never their secrets)", status: 200, response: TokenList{}, errors: []int{400, 404}, handle: (*apiCall).listTokens},
	{method: "POST", path: "/api/v1/tenants/{tenant}/tokens", summary: "Issue a bearer token for a tenant (its secret is shown once, stored only as a hash)", request: TokenRequest{},
		status: 201, response: registry.NewToken{}, errors: []int{400, 404, 409, 413, 415}, handle: (*apiCall).issueToken},
	{method: "DELETE", path: "/api/v1/tenants/{tenant}/tokens/{id}", summary: "Revoke a tenant's token", status: 204, errors: []int{400, 404}, handle: (*apiCall).revokeToken},
}
