// Command deviceid-mqtt is deviceid's demo MQTT broker: MQTT over TLS 1.3 on 8883,
// devices authenticated by DANE (their certificate must match the DNSSEC-validated
// TLSA RRset at their _device name; the MQTT client id must be the device's name),
// one zone per broker, topics limited to devices/<device>/#, Wills checked against
// the same rule, each device's retained messages, subscriptions and packets bounded,
// and connected devices checked again every second so that a revoked or suspended
// device is cut off within the TTL (and one DNS cannot vouch for within the TTL and a
// grace period), its session and retained messages deleted; a session and retained
// messages belong to the key that made them, so a name's next key starts clean.
// Devices authenticate the broker by the TLSA RRset at
// _8883._tcp.<host>: -publish puts the broker's key there through the signer's admin
// API at start. internal/mqttbroker documents the rules; deviceid-mqtt -h lists the
// flags.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/mqttbroker"
	"github.com/deviceid/deviceid/internal/trustflags"
	"github.com/deviceid/deviceid/internal/version"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "deviceid-mqtt:", err)
		}
		os.Exit(1)
	}
}

const about = `deviceid's demo MQTT broker: MQTT over TLS 1.3, devices authenticated by DANE (the
TLSA RRset at <device>._device.<zone>, validated from the zone's DS or by a validating
resolver's AD bit). A broker serves one zone: a device's MQTT client id is its device
name, which is unique only within its zone. A device may publish and subscribe under
devices/<device>/ only (no $SYS, no shared subscriptions, no other device's topics),
and its Will must be on such a topic too, or the connection is refused. Connected
devices are verified again every second: a revoked one is cut off once its cached
answer expires, and one DNS cannot vouch for is cut off its TTL and -recheck-grace
after the last answer (fail closed); a device cut off loses its session and retained
messages. A session and retained messages belong to the key that made them: a device
connecting with another key (its name enrolled again) starts clean. The limits below
bound what one device can make the broker hold, its retained Wills included; a
refused publish gets reason code 0x97 (quota exceeded) or 0x87 (not authorized) in
MQTT 5, a disconnection in MQTT 3.1.1. The example is the broker of make run.`

// options are the command line's values, once parsed.
type options struct {
	listen, certFile, keyFile, zone, publish, signerURL, tokenFile, signerCA, metrics *string
	trust                                                                             *trustflags.Flags
	c                                                                                 mqttbroker.Config
	maxPacket, receiveMax, maxInflight                                                *uint
	showVersion                                                                       *bool
}

// flags is the broker's flag set, its -h and errors written to errOut.
func flags(errOut io.Writer) (*flag.FlagSet, *options) {
	fs := flag.NewFlagSet("deviceid-mqtt", flag.ContinueOnError)
	fs.SetOutput(errOut)
	o := &options{}
	o.listen = fs.String("listen", "127.0.0.1:8883", "address for MQTT over TLS")
	o.certFile = fs.String("cert", "", "the broker's certificate, PEM (required)")
	o.keyFile = fs.String("key", "", "the broker's key, PEM (required)")
	o.zone = fs.String("zone", "iot.example", "the one zone whose devices may connect")
	o.trust = trustflags.Register(fs, "", "127.0.0.1:1053")
	o.publish = fs.String("publish", "", "publish the broker's key as this service (e.g. _8883._tcp.mqtt.demo) through the signer at -signer")
	o.signerURL = fs.String("signer", "https://127.0.0.1:8443", "the signer's URL, for -publish")
	o.tokenFile = fs.String("token-file", "", "for -publish: a bearer token of the service's tenant (or the operator's)")
	o.signerCA = fs.String("signer-ca", "", "for -publish: the CA of the signer's HTTPS certificate, PEM")
	c := &o.c
	o.maxPacket = fs.Uint("max-packet-size", mqttbroker.DefaultMaxPacketSize, "the largest MQTT packet a client may send, bytes")
	fs.IntVar(&c.MaxRetained, "max-retained", mqttbroker.DefaultMaxRetained, "retained messages per device, retained Wills included")
	fs.IntVar(&c.MaxRetainedBytes, "max-retained-bytes", mqttbroker.DefaultMaxRetainedBytes, "payload bytes of one device's retained messages")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", mqttbroker.DefaultMaxSubscriptions, "topic filters per device")
	o.receiveMax = fs.Uint("receive-maximum", mqttbroker.DefaultReceiveMaximum, "QoS 1 and 2 messages a device may have unacknowledged (at most 65535)")
	o.maxInflight = fs.Uint("max-inflight", mqttbroker.DefaultMaxInflight, "QoS 1 and 2 messages held for a device until it acknowledges (at most 65535)")
	fs.DurationVar(&c.MaxSessionExpiry, "max-session-expiry", mqttbroker.DefaultMaxSessionExpiry, "how long a session outlives its connection, whatever a CONNECT or DISCONNECT asks for (a Will's delay too)")
	fs.DurationVar(&c.MaxMessageExpiry, "max-message-expiry", mqttbroker.DefaultMaxMessageExpiry, "how long a message, a retained one too, is kept")
	fs.Int64Var(&c.MaxClients, "max-clients", mqttbroker.DefaultMaxClients, "connected clients")
	fs.DurationVar(&c.RecheckGrace, "recheck-grace", mqttbroker.DefaultRecheckGrace, "how long past its answer's expiry a session stays while DNS cannot be reached")
	o.metrics = fs.String("metrics", "", "address for Prometheus's /metrics over HTTP, e.g. 127.0.0.1:9883 (deviceid_mqtt_*; empty: none)")
	o.showVersion = fs.Bool("version", false, "print the version")
	cli.SetUsage(fs, "deviceid-mqtt -cert FILE -key FILE [-zone ZONE] (-ds DS -server ADDR | -resolver ADDR) [flags]", about,
		`deviceid-mqtt -cert .deviceid-dev/broker.pem -key .deviceid-dev/broker-key.pem \
    -ds .deviceid-dev/ds.txt -server 127.0.0.1:1053`)
	return fs, o
}

// run serves until ctx ends; the usage and flag errors go to errOut.
func run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs, o := flags(errOut)
	c := &o.c
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *o.showVersion {
		fmt.Fprintln(out, "deviceid-mqtt", version.String())
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (deviceid-mqtt -h lists the flags)", fs.Args())
	}
	if strings.Contains(*o.zone, ",") {
		return fmt.Errorf("-zone %s: a broker serves one zone (device names are unique only within a zone); run one broker per zone", *o.zone)
	}
	if *o.maxPacket > math.MaxUint32 || *o.receiveMax > math.MaxUint16 || *o.maxInflight > math.MaxUint16 {
		return fmt.Errorf("-max-packet-size, -receive-maximum or -max-inflight out of range")
	}
	c.MaxPacketSize, c.ReceiveMaximum, c.MaxInflight = uint32(*o.maxPacket), uint16(*o.receiveMax), uint16(*o.maxInflight)
	v, err := o.trust.Verifier([]string{*o.zone})
	if err != nil {
		return err
	}
	if *o.certFile == "" || *o.keyFile == "" {
		return fmt.Errorf("-cert and -key are required")
	}
	cert, err := tls.LoadX509KeyPair(*o.certFile, *o.keyFile)
	if err != nil {
		return err
	}
	if *o.publish != "" {
		if err := publishKey(*o.signerURL, *o.tokenFile, *o.signerCA, *o.publish, cert); err != nil {
			return fmt.Errorf("publishing the broker's key as %s: %w", *o.publish, err)
		}
		slog.Info("published the broker's key", "service", *o.publish)
	}
	c.Listen, c.Certificate, c.Verifier = *o.listen, cert, v
	b, err := mqttbroker.Start(ctx, *c)
	if err != nil {
		return err
	}
	if *o.metrics != "" {
		if err := serveMetrics(ctx, *o.metrics, b); err != nil {
			return fmt.Errorf("-metrics: %w", err)
		}
	}
	slog.Info("deviceid-mqtt serving", "addr", b.Addr(), "zone", *o.zone)
	<-ctx.Done()
	return nil
}

// serveMetrics serves the broker's metrics, with the Go runtime's and the process's, at
// addr's /metrics until ctx ends.
func serveMetrics(ctx context.Context, addr string, b *mqttbroker.Broker) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(b.Collectors()...)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	slog.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return nil
}

// publishKey puts the broker's certificate's key in the service record through the
// signer's admin API (idempotent: publishing it again changes nothing).
func publishKey(signerURL, tokenFile, caFile, service string, cert tls.Certificate) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	client := http.DefaultClient
	if caFile != "" {
		pemCA, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemCA)
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	}
	body, _ := json.Marshal(map[string]string{"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))})
	req, _ := http.NewRequest("POST", strings.TrimSuffix(signerURL, "/")+"/api/v1/services/"+service+"/keys", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}
