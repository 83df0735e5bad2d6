// Command deviceid-mqtt is deviceid's demo MQTT broker: MQTT over TLS 1.3 on 8883,
// devices authenticated by DANE (their certificate must match the DNSSEC-validated
// TLSA RRset at their _device name; the MQTT client id must be the device's name),
// topics limited to devices/<device>/#, and connected devices checked again every
// second so that a revoked or suspended device is cut off within the TTL. Devices
// authenticate the broker by the TLSA RRset at _8883._tcp.<host>: -publish puts the
// broker's key there through the signer's admin API at start.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/mqttbroker"
	"github.com/deviceid/deviceid/internal/version"
	"github.com/deviceid/deviceid/verify"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8883", "address for MQTT over TLS")
	certFile := flag.String("cert", "", "the broker's certificate, PEM (required)")
	keyFile := flag.String("key", "", "the broker's key, PEM (required)")
	zones := flag.String("zones", "iot.example", "zones whose devices may connect, separated by commas")
	resolver := flag.String("resolver", "", "a validating resolver (host:port) whose AD bit is trusted")
	dsText := flag.String("ds", "", "instead of -resolver: the zone's DS record (a file, or the record itself), validating locally")
	server := flag.String("server", "127.0.0.1:1053", "with -ds: the zone's authoritative server")
	publish := flag.String("publish", "", "publish the broker's key as this service (e.g. _8883._tcp.mqtt.demo) through the signer at -signer")
	signerURL := flag.String("signer", "https://127.0.0.1:8443", "the signer's URL, for -publish")
	tokenFile := flag.String("token-file", "", "for -publish: a bearer token of the service's tenant (or the operator's)")
	signerCA := flag.String("signer-ca", "", "for -publish: the CA of the signer's HTTPS certificate, PEM")
	showVersion := flag.Bool("version", false, "print the version")
	flag.Parse()
	if *showVersion {
		fmt.Println("deviceid-mqtt", version.String())
		return
	}
	if err := run(*listen, *certFile, *keyFile, *zones, *resolver, *dsText, *server, *publish, *signerURL, *tokenFile, *signerCA); err != nil {
		fmt.Fprintln(os.Stderr, "deviceid-mqtt:", err)
		os.Exit(1)
	}
}

func run(listen, certFile, keyFile, zones, resolver, dsText, server, publish, signerURL, tokenFile, signerCA string) error {
	if certFile == "" || keyFile == "" {
		return fmt.Errorf("-cert and -key are required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	v := &verify.Verifier{Zones: strings.Split(zones, ","), Resolver: resolver, Server: server}
	if dsText != "" {
		if v.TrustAnchor, err = verify.ParseTrustAnchor(dsText); err != nil {
			return fmt.Errorf("-ds: %w", err)
		}
	} else if resolver == "" {
		return fmt.Errorf("give -resolver (a validating resolver) or -ds (validate locally)")
	}
	if publish != "" {
		if err := publishKey(signerURL, tokenFile, signerCA, publish, cert); err != nil {
			return fmt.Errorf("publishing the broker's key as %s: %w", publish, err)
		}
		slog.Info("published the broker's key", "service", publish)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := mqttbroker.Start(ctx, mqttbroker.Config{Listen: listen, Certificate: cert, Verifier: v})
	if err != nil {
		return err
	}
	slog.Info("deviceid-mqtt serving", "addr", b.Addr(), "zones", zones)
	<-ctx.Done()
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
