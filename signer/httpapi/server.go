// Package httpapi is the signer's HTTPS shell over package registry and package ca:
// EST and CA discovery, the admin JSON API (routes.go, with its OpenAPI document),
// the web console, /healthz and /metrics, the client limits, and the one table
// where the registry's errors become HTTP statuses (statusOf in api.go).
package httpapi

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"log"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

// Server is what the signer serves over HTTPS: EST and CA discovery under
// /.well-known/, the admin API under /api/, the web console under /console/, /healthz,
// which reports whether etcd answers and why not, and /metrics.
type Server struct {
	API  // the admin API's settings; its CA and registry serve EST too
	Etcd etcdclient.Settings
	// MetricsToken, when set, is the bearer token /metrics requires; "" leaves it open.
	MetricsToken string
	Limits       Limits
	Now          func() time.Time // the failure limiter's clock; nil: time.Now
}

// Handler returns the server's routes, behind the checks every request passes: a
// client address with too many refused requests is answered 429, and a browser's
// cross-origin write is refused (http.CrossOriginProtection, by Sec-Fetch-Site and
// Origin) — a client certificate is sent by the browser on its own, so a form on
// another site could otherwise act with it.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/.well-known/", (&EST{CA: s.CA, Registry: s.Registry, Timeout: s.Timeout}).Handler())
	mux.Handle("/api/", s.API.Handler())
	mux.Handle("/console/", ConsoleHandler())
	mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusFound))
	mux.HandleFunc("GET /healthz", s.health)
	mux.Handle("GET /metrics", s.metrics(promhttp.Handler()))
	limiter := newFailureLimiter(s.Limits.withDefaults(), s.Now)
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusForbidden, errors.New("a cross-origin request from a browser is refused: use the console of this signer"))
	}))
	return secureHeaders(cop.Handler(limiter.handler(mux)))
}

// metrics guards /metrics with MetricsToken when one is set.
func (s *Server) metrics(next http.Handler) http.Handler {
	if s.MetricsToken == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(bearer), []byte(s.MetricsToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="deviceid-metrics"`)
			writeError(w, http.StatusUnauthorized, errors.New("/metrics needs the metrics bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HTTPServer is the signer's http.Server with its limits and timeouts, and the
// listener to serve it on (ln with at most Limits.MaxConnections at once).
func (s *Server) HTTPServer(ln net.Listener, cert tls.Certificate, errorLog *log.Logger) (*http.Server, net.Listener) {
	l := s.Limits.withDefaults()
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         TLSConfig(cert),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          errorLog,
	}
	return srv, netutil.LimitListener(ln, l.MaxConnections)
}

// health answers 200 when etcd serves the zone's prefix with a leader, and 503 with
// each endpoint's problem otherwise.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	settings := s.Etcd
	if len(settings.Endpoints) == 0 {
		settings.Endpoints = s.Registry.Client.Endpoints()
	}
	if err := settings.Check(r.Context(), s.Registry.Client, s.Registry.ZonePrefix()); err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	w.Write([]byte("ok\n"))
}

// TLSConfig is the server's TLS configuration: its certificate, and client
// certificates asked for but neither required nor checked during the handshake: the
// handlers that use them (re-enrollment, the admin API) check them, and answer a
// wrong one with a JSON error instead of a failed handshake.
func TLSConfig(serverCert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
		// TLS 1.2 with forward secrecy and AEAD only (no CBC); TLS 1.3's are all so.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

// Handler returns the API's routes under /api/v1/.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.method+" "+rt.path, a.authenticate(rt))
	}
	doc := OpenAPIDocument()
	mux.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	return secureHeaders(jsonMisses(mux))
}

// authenticate finds the request's actor and runs the route for it. A body must be
// JSON (Content-Type application/json): a browser cannot send that across sites
// without the API's consent, and the API gives none (no CORS), so no other site's
// page can make a signed-in console's browser change anything.
func (a *API) authenticate(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := a.context(r)
		defer cancel()
		actor, status, err := a.actor(ctx, r)
		if err != nil {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="deviceid"`)
			}
			writeError(w, status, err)
			return
		}
		if rt.operator && !actor.Operator {
			writeError(w, http.StatusForbidden, errors.New("only the registry operator may do this"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// An empty body needs the header too when a client certificate authenticated
			// the request: a browser sends the certificate to any site's form.
			ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if ct != "application/json" && (r.ContentLength != 0 || actor.ByCertificate) {
				writeError(w, http.StatusUnsupportedMediaType, errors.New("the request must be JSON (Content-Type: application/json), even with an empty body when authenticated by a client certificate"))
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		rt.handle(&apiCall{api: a, w: w, r: r, ctx: ctx, actor: actor})
	})
}
