package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/signer/ca"
)

// Each flag's default comes from the environment variable named in its help, so
// that a container or a systemd unit needs no arguments.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// envInt and envFloat are env for numbers: a value that does not parse keeps def
// (the flag's own parsing reports a bad value given on the command line).
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(env(name, "")); err == nil {
		return n
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(env(name, "")); err == nil {
		return d
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if n, err := strconv.ParseFloat(env(name, ""), 64); err == nil {
		return n
	}
	return def
}

// flagOutput is where -h writes (standard error when nil); tests read it.
var flagOutput io.Writer

// command is one subcommand's flag set, with its usage line and an example for -h.
func command(name, args, about, example string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if flagOutput != nil {
		fs.SetOutput(flagOutput)
	}
	cli.SetUsage(fs, "deviceid-signer "+name+" "+args, about, example)
	return fs
}

// etcdFlags reach the registry in etcd: the zone, the prefix, and the etcd client
// settings CoreDNS reads too (the same DEVICEID_ETCD* variables).
type etcdFlags struct {
	zone, prefix, endpoints string
	etcd                    etcdclient.Settings
}

func (f *etcdFlags) register(fs *flag.FlagSet) {
	e := etcdclient.FromEnv()
	fs.StringVar(&f.zone, "zone", env("DEVICEID_ZONE", ""), "the zone devices are named in, e.g. iot.example ($DEVICEID_ZONE; required)")
	fs.StringVar(&f.prefix, "prefix", env("DEVICEID_PREFIX", "/deviceid"), "etcd prefix of deviceid's records ($DEVICEID_PREFIX)")
	fs.StringVar(&f.endpoints, "etcd", strings.Join(e.Endpoints, " "), "etcd endpoints, separated by spaces or commas ($"+etcdclient.EnvEndpoints+")")
	fs.StringVar(&f.etcd.CertFile, "etcd-cert", e.CertFile, "etcd client certificate, PEM ($"+etcdclient.EnvCert+")")
	fs.StringVar(&f.etcd.KeyFile, "etcd-key", e.KeyFile, "etcd client key, PEM ($"+etcdclient.EnvKey+")")
	fs.StringVar(&f.etcd.CAFile, "etcd-ca", e.CAFile, "CA of the etcd servers' certificates, PEM; empty: the system's ($"+etcdclient.EnvCA+")")
	fs.StringVar(&f.etcd.Username, "etcd-user", e.Username, "etcd user, with etcd authentication ($"+etcdclient.EnvUser+")")
	fs.StringVar(&f.etcd.PasswordFile, "etcd-password-file", e.PasswordFile, "file holding the etcd user's password ($"+etcdclient.EnvPasswordFile+", or the password in $"+etcdclient.EnvPassword+")")
	f.etcd.Password = e.Password
}

// settings are the etcd client settings from the flags, checked.
func (f *etcdFlags) settings() (etcdclient.Settings, error) {
	if f.zone == "" {
		return etcdclient.Settings{}, errors.New("-zone is required")
	}
	s := f.etcd
	s.Endpoints = etcdclient.SplitEndpoints(f.endpoints)
	return s, s.Validate()
}

// caFlags name the CA: its certificate and its key, in a file or an HSM.
type caFlags struct {
	caCert, caKey string
	lifetime      time.Duration
}

func (f *caFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.caCert, "ca-cert", env("DEVICEID_CA_CERT", "ca.pem"), "CA certificate, PEM ($DEVICEID_CA_CERT)")
	fs.StringVar(&f.caKey, "ca-key", env("DEVICEID_CA_KEY", "ca-key.pem"), "CA key, ECDSA P-256 or P-384: a PEM file, or a pkcs11: URI (RFC 7512) of a key in an HSM ($DEVICEID_CA_KEY)")
	fs.DurationVar(&f.lifetime, "lifetime", envDuration("DEVICEID_LIFETIME", ca.DefaultLifetime), "lifetime of issued device certificates ($DEVICEID_LIFETIME)")
}

func (f *caFlags) load(zone string) (*ca.CA, error) {
	authority, err := ca.LoadCA(f.caCert, f.caKey, zone)
	if err != nil {
		return nil, fmt.Errorf("loading the CA: %w", err)
	}
	authority.Lifetime = f.lifetime
	return authority, nil
}
