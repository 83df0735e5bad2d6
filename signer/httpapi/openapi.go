package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3gen"
)

// OpenAPIDocument is the OpenAPI 3 document of the admin API, built from the route
// table (routes.go) and the Go types of its requests and answers, so that the two
// cannot drift apart. docs/openapi.json is a copy (a test keeps it current).
var OpenAPIDocument = sync.OnceValue(func() []byte {
	doc, err := openAPI()
	if err != nil {
		panic(err) // the route table is wrong: a test catches it
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
})

var pathParam = regexp.MustCompile(`\{([a-z]+)\}`)

// pathParams describes the path parameters.
var pathParams = map[string]string{
	"name":    "the device name, e.g. sensor7 or c90a.airquality (folded to lower case)",
	"tenant":  "the tenant name",
	"id":      "the token's id",
	"service": "the service endpoint relative to the zone, _<port>._<tcp|udp>.<host>, e.g. _8883._tcp.mqtt.acme",
}

func openAPI() (*openapi3.T, error) {
	schemas := openapi3.Schemas{}
	// Each schema inline, from a generator of its own: shared component schemas
	// would come out of one generator incomplete.
	schemaOf := func(v any) (*openapi3.SchemaRef, error) {
		ref, err := openapi3gen.NewSchemaRefForValue(v, nil, openapi3gen.SchemaCustomizer(strictObjects))
		if err != nil {
			return nil, fmt.Errorf("%T: %w", v, err)
		}
		return ref, nil
	}
	errSchema, err := schemaOf(ErrorResponse{})
	if err != nil {
		return nil, err
	}
	doc := &openapi3.T{
		OpenAPI: "3.0.3",
		Info: &openapi3.Info{Title: "deviceid admin API", Version: "1",
			Description: "The registry's admin API for the operator and its tenants (docs/api.md)."},
		Paths:      openapi3.NewPaths(),
		Components: &openapi3.Components{Schemas: schemas, SecuritySchemes: openapi3.SecuritySchemes{}},
		Security:   openapi3.SecurityRequirements{{"bearer": {}}},
	}
	doc.Components.SecuritySchemes["bearer"] = &openapi3.SecuritySchemeRef{Value: openapi3.NewJWTSecurityScheme().WithBearerFormat("opaque")}
	for _, rt := range routes {
		op := &openapi3.Operation{Summary: rt.summary, OperationID: operationID(rt), Responses: openapi3.NewResponses()}
		if rt.operator {
			op.Description = "The registry operator only."
		}
		for _, m := range pathParam.FindAllStringSubmatch(rt.path, -1) {
			p := openapi3.NewPathParameter(m[1]).WithSchema(openapi3.NewStringSchema()).WithDescription(pathParams[m[1]])
			op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Value: p})
		}
		for _, q := range rt.query {
			schema := openapi3.NewStringSchema()
			if q.name == "limit" {
				schema = openapi3.NewIntegerSchema().WithMin(1).WithMax(1000)
			}
			if q.name == "attr" {
				schema = openapi3.NewArraySchema().WithItems(openapi3.NewStringSchema())
			}
			op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Value: openapi3.NewQueryParameter(q.name).WithSchema(schema).WithDescription(q.about)})
		}
		if rt.request != nil {
			ref, err := schemaOf(rt.request)
			if err != nil {
				return nil, err
			}
			op.RequestBody = &openapi3.RequestBodyRef{Value: openapi3.NewRequestBody().WithJSONSchemaRef(ref)}
		}
		success := openapi3.NewResponse().WithDescription(http.StatusText(rt.status))
		if rt.response != nil {
			ref, err := schemaOf(rt.response)
			if err != nil {
				return nil, err
			}
			mediaType := "application/json"
			if _, ok := rt.response.(ExportLine); ok {
				mediaType = "application/jsonl"
			}
			success.WithContent(openapi3.NewContentWithSchemaRef(ref, []string{mediaType}))
		}
		op.AddResponse(rt.status, success)
		for _, status := range append([]int{401, 403, 429, 503}, rt.errors...) { // 429: the failure limiter, the quotas
			op.AddResponse(status, openapi3.NewResponse().WithDescription(http.StatusText(status)).WithJSONSchemaRef(errSchema))
		}
		doc.AddOperation(rt.path, rt.method, op)
	}
	return doc, doc.Validate(openapi3.NewLoader().Context)
}

// strictObjects makes a struct's schema as strict as encoding/json's output: every
// field without omitempty is required, and no other property is allowed.
func strictObjects(_ string, t reflect.Type, _ reflect.StructTag, schema *openapi3.Schema) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t.PkgPath() == "time" {
		return nil
	}
	schema.Required = nil
	for _, f := range reflect.VisibleFields(t) {
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous || !f.IsExported() || name == "-" || name == "" {
			continue
		}
		if !strings.Contains(opts, "omitempty") {
			schema.Required = append(schema.Required, name)
		}
	}
	no := false
	schema.AdditionalProperties = openapi3.AdditionalProperties{Has: &no}
	return nil
}

// operationID names an operation after its method and path: GET /api/v1/devices/{name}/dns → getDevicesNameDns.
func operationID(rt route) string {
	id := strings.ToLower(rt.method)
	for part := range strings.SplitSeq(strings.TrimPrefix(rt.path, "/api/v1/"), "/") {
		part = strings.Trim(part, "{}")
		id += strings.ToUpper(part[:1]) + part[1:]
	}
	return id
}
