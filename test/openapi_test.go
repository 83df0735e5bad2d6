package test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/deviceid/deviceid/signer/httpapi"
)

// The e2e tests speak the admin API through apiCall, which validates every request
// and every answer against the OpenAPI document the signer serves, with kin-openapi.

var (
	docOnce   sync.Once
	docRouter routers.Router
	docErr    error
	// exercised records each documented operation answered with its documented status.
	exercised sync.Map
)

func init() {
	// An export is JSON lines: each line must be the documented object.
	openapi3filter.RegisterBodyDecoder("application/jsonl", func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		var first any
		dec := json.NewDecoder(body)
		err := dec.Decode(&first)
		if err == io.EOF {
			return map[string]any{"name": "", "version": 1, "credentials": []any{}}, nil // an empty export
		}
		return first, err
	})
}

func openAPIRouter(t testing.TB) routers.Router {
	docOnce.Do(func() {
		var doc *openapi3.T
		doc, docErr = openapi3.NewLoader().LoadFromData(httpapi.OpenAPIDocument())
		if docErr == nil {
			docErr = doc.Validate(context.Background())
		}
		if docErr == nil {
			doc.Servers = nil // match any host
			docRouter, docErr = gorillamux.NewRouter(doc)
		}
	})
	if docErr != nil {
		t.Fatalf("the OpenAPI document: %v", docErr)
	}
	return docRouter
}

// apiCall sends one admin API request with token, checks the request and the answer
// against the OpenAPI document, decodes a successful JSON answer into out, and
// returns the status.
func (s *signerServer) apiCall(t testing.TB, token, method, path, body string, out any) int {
	t.Helper()
	status, b := s.apiRaw(t, token, method, path, body)
	if out != nil && status < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return status
}

// apiRaw is apiCall returning the body.
func (s *signerServer) apiRaw(t testing.TB, token, method, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := openAPIRouter(t).FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s is not in the OpenAPI document: %v", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if body != "" && !strings.Contains(body, "not json") {
		if err := openapi3filter.ValidateRequest(t.Context(), in); err != nil && !strings.HasPrefix(t.Name(), "TestAPIBadInputE2E") {
			t.Errorf("%s %s: the request does not match the OpenAPI document: %v", method, path, err)
		}
		req.Body = io.NopCloser(strings.NewReader(body))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(b)
	if err := openapi3filter.ValidateResponse(t.Context(), out); err != nil {
		t.Errorf("%s %s: the answer (%d) does not match the OpenAPI document: %v\n%s", method, path, resp.StatusCode, err, bytes.TrimSpace(b))
	} else if resp.StatusCode < 300 {
		exercised.Store(route.Method+" "+route.Path, resp.StatusCode)
	}
	return resp.StatusCode, b
}

// admin is apiCall with the operator's token.
func (s *signerServer) admin(t testing.TB, method, path, body string, out any) int {
	t.Helper()
	return s.apiCall(t, adminToken, method, path, body, out)
}
