package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"
)

// apiCall is one authenticated request of the admin API, and how it is answered.
type apiCall struct {
	api   *API
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context
	actor registry.Actor
}

func (c *apiCall) reg() *registry.Registry { return c.api.Registry }

func (c *apiCall) name() string { return c.r.PathValue("name") }

func (c *apiCall) query(k string) string { return c.r.URL.Query().Get(k) }

// read decodes the JSON body into v; an empty body is an empty object.
func (c *apiCall) read(v any) bool { return readJSON(c.w, c.r, v) }

// reply writes v with status, or the error's status.
func (c *apiCall) reply(status int, v any, err error) {
	if err != nil {
		setRetryAfter(c.w, err)
		writeError(c.w, statusOf(err), err)
		return
	}
	if v == nil {
		c.w.WriteHeader(status)
		return
	}
	writeJSON(c.w, status, v)
}

// deviceReply answers with a device's view.
func (c *apiCall) deviceReply(status int, d *record.Device, err error) {
	if err == nil && d == nil {
		err = registry.ErrNotFound
	}
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	name, _ := record.DeviceName(c.name())
	c.reply(status, view(name, d, c.reg().Clock()), nil)
}

// readJSON decodes the request body into v, refusing unknown fields and trailing
// data; on failure it writes the error and returns false.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == io.EOF {
		return true // no body: the request's defaults
	}
	if err == nil && dec.More() {
		err = errors.New("data after the JSON object")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", MaxBody))
	} else {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bad JSON: %v", err))
	}
	return false
}
