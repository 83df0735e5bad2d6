package httpapi

import (
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

var update = flag.Bool("update", false, "rewrite docs/openapi.json from the route table")

const docFile = "../../docs/openapi.json"

// TestOpenAPIDocument: the document is valid OpenAPI 3, has an operation for every
// route and no other, and docs/openapi.json is the document the signer serves.
func TestOpenAPIDocument(t *testing.T) {
	served := OpenAPIDocument()
	if *update {
		if err := os.WriteFile(docFile, served, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(docFile)
	if err != nil || !bytes.Equal(committed, served) {
		t.Errorf("%s is not the served document (%v): run go test ./signer -run TestOpenAPIDocument -update", docFile, err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(served)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("invalid OpenAPI document: %v", err)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for _, rt := range routes {
		key := rt.method + " " + rt.path
		if !documented[key] {
			t.Errorf("route %s is not documented", key)
		}
		delete(documented, key)
		if !strings.HasPrefix(rt.path, "/api/v1/") {
			t.Errorf("route %s is outside /api/v1/", key)
		}
	}
	for key := range documented {
		t.Errorf("documented %s is no route", key)
	}
}
