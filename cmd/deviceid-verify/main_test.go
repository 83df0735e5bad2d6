package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// fakeResolver answers TLSA queries for one name with rrs, setting AD when ad. The
// real resolver path is tested end to end in test/; this checks the command itself.
func fakeResolver(t *testing.T, name string, rrs []dns.RR, ad bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.AuthenticatedData = ad
		if strings.EqualFold(r.Question[0].Name, name) {
			m.Answer = rrs
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestRun(t *testing.T) {
	ca, _ := testenv.NewCA("test")
	key, _ := testenv.NewDeviceKey()
	der, err := ca.Issue("sensor7._device.iot.example", key.Public(), time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(t.TempDir(), "device.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	c, _ := loadChain(certFile, "")
	sum := sha256.Sum256(c[0].RawSubjectPublicKeyInfo)
	rec := func(usage uint8) []dns.RR {
		return []dns.RR{&dns.TLSA{Hdr: dns.RR_Header{Name: "sensor7._device.iot.example.", Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 60},
			Usage: usage, Selector: 1, MatchingType: 1, Certificate: hex.EncodeToString(sum[:])}}
	}
	for _, tc := range []struct {
		name    string
		rrs     []dns.RR
		ad      bool
		ok      bool
		printed string
	}{
		{"matching record", rec(3), true, true, "accepted sensor7._device.iot.example.: matched TLSA 3 1 1"},
		{"revoked", rec(255), true, false, "the client's key is revoked"},
		{"no AD", rec(3), false, false, "not DNSSEC-validated"},
		{"no record", nil, true, false, "no usable TLSA record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeResolver(t, "sensor7._device.iot.example.", tc.rrs, tc.ad)
			var out bytes.Buffer
			err := run(flag.NewFlagSet("t", flag.ContinueOnError), []string{"-zones", "iot.example", "-resolver", addr, "-cert", certFile}, &out)
			if (err == nil) != tc.ok || !strings.Contains(out.String(), tc.printed) {
				t.Errorf("err %v, printed %q; want ok=%v and %q", err, out.String(), tc.ok, tc.printed)
			}
		})
	}
	if err := run(flag.NewFlagSet("t", flag.ContinueOnError), []string{"-cert", certFile}, &bytes.Buffer{}); err == nil {
		t.Error("missing -zones accepted")
	}
	// A resolver off loopback: its AD bit is trusted only when the path is declared so.
	if err := run(flag.NewFlagSet("t", flag.ContinueOnError), []string{"-zones", "iot.example", "-resolver", "192.0.2.1:53", "-cert", certFile}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "not on loopback") {
		t.Errorf("a resolver off loopback: %v", err)
	}
	if err := run(flag.NewFlagSet("t", flag.ContinueOnError), []string{"-zones", "iot.example", "-resolver", "192.0.2.1:53", "-resolver-trusted", "-timeout", "100ms", "-cert", certFile}, &bytes.Buffer{}); err == nil || strings.Contains(err.Error(), "not on loopback") {
		t.Errorf("a resolver off loopback declared trusted: %v", err)
	}
}

// TestUsage: -h has the usage line, an example and every flag with its default.
func TestUsage(t *testing.T) {
	var text bytes.Buffer
	fs := flag.NewFlagSet("deviceid-verify", flag.ContinueOnError)
	fs.SetOutput(&text)
	if err := run(fs, []string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	testenv.CheckUsage(t, fs, text.String())
}
