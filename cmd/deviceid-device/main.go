// Command deviceid-device simulates a device: it makes a key, enrolls over EST with
// its one-time code, connects to its MQTT broker authenticating the broker by the
// DNSSEC-validated TLSA RRset at _<port>._tcp.<host>, publishes telemetry on
// devices/<name>/telemetry, re-enrolls before its certificate expires, and reconnects
// with backoff. The enrollment code is read from a file or standard input
// (-code-file), never taken on the command line, where ps would show it.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/device"
	"github.com/deviceid/deviceid/internal/trustflags"
	"github.com/deviceid/deviceid/internal/version"
)

func main() {
	if err := run(flag.NewFlagSet("deviceid-device", flag.ContinueOnError), os.Args[1:], os.Stdin, os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "deviceid-device:", err)
		}
		os.Exit(1)
	}
}

// run parses the command line with fs (empty; -h and the flag errors go to its
// output) and runs the device until it is interrupted.
func run(fs *flag.FlagSet, args []string, stdin io.Reader, out io.Writer) error {
	name := fs.String("name", "", "the device name, e.g. thermo1 (required)")
	zone := fs.String("zone", "iot.example", "the zone")
	codeFile := fs.String("code-file", "", "a file holding the one-time enrollment code, or - for standard input (for the first enrollment)")
	signerAddr := fs.String("signer", "127.0.0.1:8443", "host:port of the signer's EST")
	signerCA := fs.String("signer-ca", ".deviceid-dev/ca.pem", "the CA of the signer's HTTPS certificate, PEM")
	broker := fs.String("broker", "127.0.0.1:8883", "host:port to connect to")
	brokerName := fs.String("broker-name", "", "the broker's name for its TLSA RRset, host:port (default: -broker)")
	trust := trustflags.Register(fs, ".deviceid-dev/ds.txt", "127.0.0.1:1053")
	state := fs.String("state", "", "directory for the key and the certificate (default .deviceid-device/<name>)")
	interval := fs.Duration("interval", 5*time.Second, "between telemetry messages")
	showVersion := fs.Bool("version", false, "print the version")
	cli.SetUsage(fs, "deviceid-device -name NAME [-code-file FILE|-] [flags]",
		`Simulates a device: makes a key, enrolls over EST with its one-time code (read from
-code-file, or standard input with -code-file -; never a flag's value, which ps shows),
connects to its MQTT broker authenticating it by DANE, publishes telemetry on
devices/<name>/telemetry, re-enrolls before its certificate expires, and reconnects
with backoff (1 s doubling to 30 s; once DNS shows its own key revoked or no longer
vouched for, 1 minute doubling to an hour, said once in the log). Its key and
certificate stay in -state, so a restart connects without a code. The example is the
device of make run.`,
		`deviceid-device -name thermo-sim -code-file .deviceid-dev/thermo-sim.code \
    -broker-name mqtt.demo.iot.example:8883`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(out, "deviceid-device", version.String())
		return nil
	}
	code, err := readCode(*codeFile, stdin)
	if err != nil {
		return fmt.Errorf("-code-file: %w", err)
	}
	return start(*name, *zone, code, *signerAddr, *signerCA, *broker, *brokerName, trust, *state, *interval)
}

// readCode reads the enrollment code from file, or from stdin when file is "-"; no
// file or an empty one, no code (the device enrolled before).
func readCode(file string, stdin io.Reader) (string, error) {
	var b []byte
	var err error
	switch file {
	case "":
		return "", nil
	case "-":
		b, err = io.ReadAll(io.LimitReader(stdin, 4096))
	default:
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", err
	}
	code := strings.TrimSpace(string(b))
	if code == "" && file == "-" {
		return "", errors.New("no code on standard input")
	}
	return code, nil // an empty file: no code, as for a device enrolled before (make run's second start)
}

func start(name, zone, code, signerAddr, signerCA, broker, brokerName string, trust *trustflags.Flags, state string, interval time.Duration) error {
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
	v, err := trust.Verifier([]string{zone})
	if err != nil {
		return err
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
