package main

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The operator's commands work on etcd directly, through the same registry and
// enrollment workflow the signer runs, or, with -server, speak the admin API of a
// running signer. Both print the API's JSON answers.

type adminFlags struct {
	serveFlags
	server, device string
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	f.serveFlags.register(fs)
	fs.StringVar(&f.server, "server", env("DEVICEID_SERVER", ""), "URL of a running signer (https://host:8443); empty: work on etcd directly ($DEVICEID_SERVER)")
	fs.StringVar(&f.device, "device", "", "the device name, e.g. sensor7")
}

// adminArgs are the operation's arguments from the command's flags.
type adminArgs struct {
	enroll     signer.EnrollRequest
	revoke     signer.RevokeRequest
	out, after string
	limit      int
}

// adminCommand runs one operation built from the command's flags and prints the
// JSON answer.
func adminCommand(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var f adminFlags
	f.register(fs)
	csrFile := fs.String("csr", "", "enroll: a PKCS#10 CSR file (PEM or DER)")
	keyFile := fs.String("pubkey", "", "enroll: a public key file (PEM or DER SubjectPublicKeyInfo), for a device without a certificate")
	supersede := fs.Bool("supersede", false, "enroll: revoke the device's other keys (reason superseded) in the same write")
	var a adminArgs
	fs.StringVar(&a.out, "out", "", "enroll: write the issued certificate (PEM) here")
	fs.StringVar(&a.revoke.SPKISHA256, "spki-sha256", "", "revoke: the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
	fs.StringVar(&a.revoke.Reason, "reason", "unspecified", "revoke: the RFC 5280 reason")
	fs.StringVar(&a.after, "after", "", "list: start after this device")
	fs.IntVar(&a.limit, "limit", 100, "list: how many devices")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if name != "list" && f.device == "" {
		return errors.New("-device is required")
	}
	if name == "enroll" {
		var err error
		switch {
		case *csrFile != "":
			a.enroll.CSR, err = readDERorPEM(*csrFile)
		case *keyFile != "":
			a.enroll.PublicKey, err = readDERorPEM(*keyFile)
		default:
			err = errors.New("enroll needs -csr or -pubkey")
		}
		if err != nil {
			return err
		}
		a.enroll.Supersede = *supersede
	}
	var answer any
	var err error
	if f.server != "" {
		answer, err = f.remote(name, a)
	} else {
		answer, err = f.local(name, a)
	}
	if err != nil {
		return err
	}
	if er, ok := answer.(*signer.EnrollResponse); ok && a.out != "" {
		if err := os.WriteFile(a.out, []byte(er.Certificate), 0o644); err != nil {
			return err
		}
	}
	if answer != nil {
		enc := json.NewEncoder(os.Stdout)
		return enc.Encode(answer)
	}
	return nil
}

// local carries out the operation on etcd directly. Only enroll needs the CA.
func (f *adminFlags) local(name string, a adminArgs) (any, error) {
	if f.zone == "" {
		return nil, errors.New("-zone is required")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(f.etcd, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	reg := &signer.Registry{Client: cli, Prefix: f.prefix, Zone: f.zone}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch name {
	case "enroll":
		ca, err := signer.LoadCA(f.caCert, f.caKey, f.zone)
		if err != nil {
			return nil, fmt.Errorf("loading the CA (needed to enroll on etcd directly): %w", err)
		}
		ca.Lifetime = f.lifetime
		e := signer.Enrollment{Device: f.device}
		if e.CSR, e.PublicKey, err = a.enroll.Decode(); err != nil {
			return nil, err
		}
		if a.enroll.Supersede {
			e.Supersede = signer.SupersedeOthers
		}
		done, err := (&signer.Enroller{CA: ca, Registry: reg}).Enroll(ctx, e)
		if err != nil {
			return nil, err
		}
		resp := &signer.EnrollResponse{Device: done.Device}
		if done.Cert != nil {
			resp.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: done.Cert.Raw}))
		}
		return resp, nil
	case "revoke":
		spki, err := a.revoke.Digest()
		if err != nil {
			return nil, err
		}
		return reg.Revoke(ctx, f.device, spki, a.revoke.Reason, time.Now())
	case "delete":
		return nil, reg.Delete(ctx, f.device)
	case "show":
		d, _, err := reg.Get(ctx, f.device)
		return d, err
	case "list":
		names, next, err := reg.List(ctx, a.after, a.limit)
		return signer.ListResponse{Devices: names, Next: next}, err
	case "code":
		code, err := reg.IssueCode(ctx, f.device, signer.DefaultCodeLifetime)
		return signer.CodeResponse{Code: code, Expires: time.Now().Add(signer.DefaultCodeLifetime).UTC()}, err
	}
	return nil, fmt.Errorf("unknown command %q", name)
}

// remote sends the operation to the signer at -server and decodes its answer.
func (f *adminFlags) remote(name string, a adminArgs) (any, error) {
	path := "/api/v1/devices/" + url.PathEscape(f.device)
	method, body := "POST", ""
	var answer any
	switch name {
	case "enroll":
		b, _ := json.Marshal(a.enroll)
		path, body, answer = path+"/enroll", string(b), &signer.EnrollResponse{}
	case "revoke":
		b, _ := json.Marshal(a.revoke)
		path, body, answer = path+"/revoke", string(b), &record.Device{}
	case "code":
		path, answer = path+"/code", &signer.CodeResponse{}
	case "delete":
		method = "DELETE"
	case "show":
		method, answer = "GET", &record.Device{}
	case "list":
		method, path, answer = "GET", fmt.Sprintf("/api/v1/devices?after=%s&limit=%d", url.QueryEscape(a.after), a.limit), &signer.ListResponse{}
	}
	token, err := readToken(f.tokenFile)
	if err != nil {
		return nil, err
	}
	client := http.DefaultClient
	if f.caCert != "" {
		if pemCA, err := os.ReadFile(f.caCert); err == nil { // trust the signer's CA when we have it
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pemCA)
			client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
	}
	req, err := http.NewRequest(method, strings.TrimSuffix(f.server, "/")+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s: %s", http.StatusText(resp.StatusCode), e.Error)
		}
		return nil, fmt.Errorf("%s: %s", http.StatusText(resp.StatusCode), strings.TrimSpace(string(b)))
	}
	if answer == nil {
		return nil, nil
	}
	return answer, json.Unmarshal(b, answer)
}

func readToken(file string) (string, error) {
	if file == "" {
		return "", errors.New("-token-file is required with -server")
	}
	b, err := os.ReadFile(file)
	return strings.TrimSpace(string(b)), err
}

// readDERorPEM returns a file as the API takes it: PEM as it is, DER in base64.
func readDERorPEM(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	if strings.Contains(string(b), "-----BEGIN") {
		return string(b), nil
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// initCA makes a self-signed root CA in a directory, or with -csr the key and CSR of
// an intermediate CA for a parent CA to sign.
func initCA(args []string) error {
	fs := flag.NewFlagSet("init-ca", flag.ContinueOnError)
	dir := fs.String("dir", ".", "directory to write ca.pem and ca-key.pem into")
	zone := fs.String("zone", env("DEVICEID_ZONE", ""), "the zone the CA issues device names in ($DEVICEID_ZONE; required)")
	name := fs.String("name", "deviceid device CA", "the CA's common name")
	curve := fs.String("curve", "P-256", "P-256 or P-384")
	csr := fs.Bool("csr", false, "make an intermediate CA: write ca-key.pem and ca.csr; put the signed certificate and the chain above it in ca.pem")
	key := fs.String("key", "", "make the CA key in an HSM: a PKCS#11 URI (RFC 7512) with object=<label>, module-path and pin-source; serve then takes it as -ca-key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *zone == "" && !*csr {
		return errors.New("-zone is required")
	}
	c := elliptic.P256()
	switch *curve {
	case "P-256":
	case "P-384":
		c = elliptic.P384()
	default:
		return fmt.Errorf("curve %q: want P-256 or P-384", *curve)
	}
	if *csr {
		if err := signer.InitIntermediate(*dir, *name, c, ""); err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s and %s/%s: have the CSR signed as a CA (basicConstraints cA, keyCertSign),\n"+
			"then write the certificate, followed by its chain, to %s/%s\n", *dir, signer.CAKeyFile, *dir, signer.CARequestFile, *dir, signer.CACertFile)
		return nil
	}
	ca, err := signer.InitCA(*dir, *name, *zone, c, *key)
	if err != nil {
		return err
	}
	if *key != "" {
		fmt.Printf("made the CA key in the HSM and wrote %s/%s; key identifier %s\nserve with -ca-key '%s'\n", *dir, signer.CACertFile, ca.AKI(), *key)
		return nil
	}
	fmt.Printf("wrote %s/%s and %s/%s; key identifier %s\n", *dir, signer.CACertFile, *dir, signer.CAKeyFile, ca.AKI())
	return nil
}
