package main

import (
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/deviceid/deviceid/signer"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The operator's commands speak the admin API: to a running signer with -server, or,
// without it, to the same API run in this process against etcd directly. One code
// path, whichever way the operator reaches the registry.

type adminFlags struct {
	serveFlags
	server, device string
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	f.serveFlags.register(fs)
	fs.StringVar(&f.server, "server", env("DEVICEID_SERVER", ""), "URL of a running signer (https://host:8443); empty: work on etcd directly ($DEVICEID_SERVER)")
	fs.StringVar(&f.device, "device", "", "the device name, e.g. sensor7")
}

// adminCommand runs one admin API request built from the command's flags and prints
// the JSON answer.
func adminCommand(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var f adminFlags
	f.register(fs)
	csrFile := fs.String("csr", "", "enroll: a PKCS#10 CSR file (PEM or DER)")
	keyFile := fs.String("pubkey", "", "enroll: a public key file (PEM or DER SubjectPublicKeyInfo), for a device without a certificate")
	out := fs.String("out", "", "enroll: write the issued certificate (PEM) here")
	spki := fs.String("spki-sha256", "", "revoke: the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
	reason := fs.String("reason", "unspecified", "revoke: the RFC 5280 reason")
	after := fs.String("after", "", "list: start after this device")
	limit := fs.Int("limit", 100, "list: how many devices")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if name != "list" && f.device == "" {
		return errors.New("-device is required")
	}
	path := "/api/v1/devices/" + url.PathEscape(f.device)
	method, body := "POST", ""
	switch name {
	case "enroll":
		req := signer.EnrollRequest{}
		switch {
		case *csrFile != "":
			b, err := readDERorPEM(*csrFile)
			if err != nil {
				return err
			}
			req.CSR = b
		case *keyFile != "":
			b, err := readDERorPEM(*keyFile)
			if err != nil {
				return err
			}
			req.PublicKey = b
		default:
			return errors.New("enroll needs -csr or -pubkey")
		}
		b, _ := json.Marshal(req)
		path, body = path+"/enroll", string(b)
	case "revoke":
		b, _ := json.Marshal(signer.RevokeRequest{SPKISHA256: *spki, Reason: *reason})
		path, body = path+"/revoke", string(b)
	case "code":
		path += "/code"
	case "delete":
		method = "DELETE"
	case "show":
		method = "GET"
	case "list":
		method, path = "GET", fmt.Sprintf("/api/v1/devices?after=%s&limit=%d", url.QueryEscape(*after), *limit)
	}
	status, answer, err := f.do(method, path, body)
	if err != nil {
		return err
	}
	if status >= 300 {
		return fmt.Errorf("%s: %s", http.StatusText(status), strings.TrimSpace(string(answer)))
	}
	if name == "enroll" && *out != "" {
		var er signer.EnrollResponse
		if err := json.Unmarshal(answer, &er); err != nil {
			return err
		}
		if err := os.WriteFile(*out, []byte(er.Certificate), 0o644); err != nil {
			return err
		}
	}
	os.Stdout.Write(answer)
	return nil
}

// do sends one request to the signer at -server, or to the API in this process.
func (f *adminFlags) do(method, path, body string) (int, []byte, error) {
	if f.server != "" {
		token, err := readToken(f.tokenFile)
		if err != nil {
			return 0, nil, err
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
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	if f.zone == "" {
		return 0, nil, errors.New("-zone is required")
	}
	ca, err := signer.LoadCA(f.caCert, f.caKey, f.zone)
	if err != nil {
		return 0, nil, fmt.Errorf("loading the CA (needed to work on etcd directly): %w", err)
	}
	ca.Lifetime = f.lifetime
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(f.etcd, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return 0, nil, err
	}
	defer cli.Close()
	token := make([]byte, 16)
	rand.Read(token)
	api := &signer.API{CA: ca, Registry: &signer.Registry{Client: cli, Prefix: f.prefix, Zone: f.zone}, Token: hex.EncodeToString(token)}
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+api.Token)
	rec := httptest.NewRecorder()
	api.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes(), nil
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
		if err := signer.InitIntermediate(*dir, *name, c); err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s and %s/%s: have the CSR signed as a CA (basicConstraints cA, keyCertSign),\n"+
			"then write the certificate, followed by its chain, to %s/%s\n", *dir, signer.CAKeyFile, *dir, signer.CARequestFile, *dir, signer.CACertFile)
		return nil
	}
	ca, err := signer.InitCA(*dir, *name, *zone, c)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s/%s and %s/%s; key identifier %s\n", *dir, signer.CACertFile, *dir, signer.CAKeyFile, ca.AKI())
	return nil
}
