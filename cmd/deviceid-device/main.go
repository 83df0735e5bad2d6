// Command deviceid-device simulates a device: it makes a key, enrolls over EST with
// its one-time code, connects to its MQTT broker authenticating the broker by the
// DNSSEC-validated TLSA RRset at _<port>._tcp.<host>, publishes telemetry on
// devices/<name>/telemetry, re-enrolls before its certificate expires, and reconnects
// with backoff.
package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/device"
	"github.com/deviceid/deviceid/internal/version"
	"github.com/deviceid/deviceid/verify"
)

func main() {
	name := flag.String("name", "", "the device name, e.g. thermo1 (required)")
	zone := flag.String("zone", "iot.example", "the zone")
	code := flag.String("code", "", "the one-time enrollment code (for the first enrollment)")
	signerAddr := flag.String("signer", "127.0.0.1:8443", "host:port of the signer's EST")
	signerCA := flag.String("signer-ca", ".deviceid-dev/ca.pem", "the CA of the signer's HTTPS certificate, PEM")
	broker := flag.String("broker", "127.0.0.1:8883", "host:port to connect to")
	brokerName := flag.String("broker-name", "", "the broker's name for its TLSA RRset, host:port (default: -broker)")
	resolver := flag.String("resolver", "", "a validating resolver (host:port) whose AD bit is trusted")
	dsText := flag.String("ds", ".deviceid-dev/ds.txt", "instead of -resolver: the zone's DS (a file or the record), validating locally")
	server := flag.String("server", "127.0.0.1:1053", "with -ds: the zone's authoritative server")
	state := flag.String("state", "", "directory for the key and the certificate (default .deviceid-device/<name>)")
	interval := flag.Duration("interval", 5*time.Second, "between telemetry messages")
	showVersion := flag.Bool("version", false, "print the version")
	flag.Parse()
	if *showVersion {
		fmt.Println("deviceid-device", version.String())
		return
	}
	if err := run(*name, *zone, *code, *signerAddr, *signerCA, *broker, *brokerName, *resolver, *dsText, *server, *state, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "deviceid-device:", err)
		os.Exit(1)
	}
}

func run(name, zone, code, signerAddr, signerCA, broker, brokerName, resolver, dsText, server, state string, interval time.Duration) error {
	if name == "" {
		return fmt.Errorf("-name is required")
	}
	if brokerName == "" {
		brokerName = broker
	}
	host, portText, err := net.SplitHostPort(brokerName)
	if err != nil {
		return fmt.Errorf("-broker-name: %w", err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("-broker-name: port %q", portText)
	}
	pemCA, err := os.ReadFile(signerCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	v := &verify.Verifier{Zones: []string{zone}, Resolver: resolver, Server: server}
	if resolver == "" {
		if v.TrustAnchor, err = verify.ParseTrustAnchor(dsText); err != nil {
			return fmt.Errorf("-ds: %w", err)
		}
	}
	if state == "" {
		state = ".deviceid-device/" + name
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := device.New(ctx, device.Config{Name: name, Zone: zone, Code: code, Signer: signerAddr, SignerCA: pool, Broker: broker,
		BrokerHost: host, BrokerPort: port, Verifier: v, StateDir: state, Interval: interval})
	if err != nil {
		return err
	}
	return d.Run(ctx)
}
