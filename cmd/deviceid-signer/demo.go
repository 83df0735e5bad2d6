package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/verify"

	"github.com/miekg/dns"
)

// demoService is the dev stack's example of a server that authenticates devices by
// DANE: an HTTPS echo that greets a device by its identity name. It validates the
// TLSA answers itself from the zone's DS, asking the dev CoreDNS.
func demoService(ctx context.Context, listen, zone, dnsServer string, ds *dns.DS, authority *ca.CA) error {
	v := &verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{ds}, Server: dnsServer}
	cert, err := authority.ServerCertificate([]string{"127.0.0.1", "localhost"}, time.Now())
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			res, err := v.Verify(r.Context(), r.TLS.PeerCertificates) // cached since the handshake
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			fmt.Fprintf(w, "hello %s, authenticated by TLSA %d %d %d\n", res.Name, res.Matched.Usage, res.Matched.Selector, res.Matched.MatchingType)
		}),
		TLSConfig: &tls.Config{
			Certificates:          []tls.Certificate{cert},
			ClientAuth:            tls.RequireAnyClientCert, // DANE decides, not a CA pool
			VerifyPeerCertificate: v.VerifyPeerCertificate,
			MinVersion:            tls.VersionTLS13,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ServeTLS(ln, "", ""); err != http.ErrServerClosed {
		return err
	}
	return nil
}
