package main

import (
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer"
)

// The operator's commands work on etcd directly, through the same registry and
// enrollment workflow the signer runs, or, with -server, speak the admin API of a
// running signer. show and list print a table, or with -json the API's JSON.

// adminFlags are the flags every operator command has.
type adminFlags struct {
	etcdFlags
	server, tokenFile, serverCA string
	device                      string
	json                        bool
}

func (f *adminFlags) register(fs *flag.FlagSet, device bool) {
	f.etcdFlags.register(fs)
	fs.StringVar(&f.server, "server", env("DEVICEID_SERVER", ""), "URL of a running signer (https://host:8443); empty: work on etcd directly ($DEVICEID_SERVER)")
	fs.StringVar(&f.tokenFile, "token-file", env("DEVICEID_TOKEN_FILE", ""), "with -server: the file holding the admin bearer token ($DEVICEID_TOKEN_FILE)")
	fs.StringVar(&f.serverCA, "server-ca", env("DEVICEID_CA_CERT", "ca.pem"), "with -server: the CA of the signer's HTTPS certificate, PEM ($DEVICEID_CA_CERT)")
	fs.BoolVar(&f.json, "json", false, "print the API's JSON instead of a table")
	if device {
		fs.StringVar(&f.device, "device", "", "the device name, e.g. sensor7 (required)")
	}
}

// adminArgs are the operation's arguments from the command's flags.
type adminArgs struct {
	enroll     signer.EnrollRequest
	revoke     signer.RevokeRequest
	out, after string
	limit      int
	ca         caFlags
}

// The operator commands: their usage, what they do, and an example.
var adminCommands = map[string]struct{ args, about, example string }{
	"enroll": {"-device NAME (-csr FILE | -pubkey FILE) [flags]", "Enrolls a device with a CSR (a certificate is issued) or a bare public key.",
		"deviceid-signer enroll -zone iot.example -device sensor9 -csr sensor9.csr -out sensor9.pem -ca-cert ca.pem -ca-key ca-key.pem"},
	"revoke": {"-device NAME [-spki-sha256 HEX] [-reason REASON] [flags]", "Revokes one of a device's keys, or all of them, with an RFC 5280 reason.",
		"deviceid-signer revoke -zone iot.example -device sensor9 -reason keyCompromise"},
	"delete": {"-device NAME [flags]", "Deletes a device's record, an invalid one too.",
		"deviceid-signer delete -zone iot.example -device sensor9"},
	"show": {"-device NAME [-json] [flags]", "Prints a device's record: its keys, their state and what DNS publishes for them.",
		"deviceid-signer show -zone iot.example -device sensor9"},
	"list": {"[-after NAME] [-limit N] [-json] [flags]", "Lists devices a page at a time, with their keys and whether DNS serves them; invalid records are flagged.",
		"deviceid-signer list -zone iot.example -limit 50"},
	"code": {"-device NAME [flags]", "Issues a one-time enrollment code for the device's first EST enrollment (valid 24 h).",
		"deviceid-signer code -zone iot.example -device sensor9"},
}

// adminCommand runs one operation built from the command's flags and prints the answer.
func adminCommand(name string, args []string) error {
	c := adminCommands[name]
	fs := command(name, c.args, c.about, c.example)
	var f adminFlags
	f.register(fs, name != "list")
	var a adminArgs
	var csrFile, keyFile *string
	var supersede *bool
	switch name {
	case "enroll":
		a.ca.register(fs)
		csrFile = fs.String("csr", "", "a PKCS#10 CSR file (PEM or DER)")
		keyFile = fs.String("pubkey", "", "a public key file (PEM or DER SubjectPublicKeyInfo), for a device without a certificate")
		supersede = fs.Bool("supersede", false, "revoke the device's other keys (reason superseded) in the same write")
		fs.StringVar(&a.out, "out", "", "write the issued certificate (PEM) here")
	case "revoke":
		fs.StringVar(&a.revoke.SPKISHA256, "spki-sha256", "", "the SHA-256 of the key to revoke (hex, as in its 3 1 1 record); empty: all keys")
		fs.StringVar(&a.revoke.Reason, "reason", "unspecified", "the RFC 5280 reason")
	case "list":
		fs.StringVar(&a.after, "after", "", "start after this device")
		fs.IntVar(&a.limit, "limit", 100, "how many devices, at most 1000")
	}
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
	return f.print(os.Stdout, name, answer)
}

// local carries out the operation on etcd directly. Only enroll needs the CA.
func (f *adminFlags) local(name string, a adminArgs) (any, error) {
	settings, err := f.settings()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg := &signer.Registry{Prefix: f.prefix, Zone: f.zone}
	if reg.Client, err = settings.Connect(ctx, 10*time.Second, reg.ZonePrefix()); err != nil {
		return nil, err
	}
	defer reg.Client.Close()
	switch name {
	case "enroll":
		ca, err := a.ca.load(f.zone)
		if err != nil {
			return nil, err
		}
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
		entries, next, err := reg.ListRecords(ctx, a.after, a.limit)
		return listing{entries, next}, err
	case "code":
		code, err := reg.IssueCode(ctx, f.device, signer.DefaultCodeLifetime)
		return &signer.CodeResponse{Code: code, Expires: time.Now().Add(signer.DefaultCodeLifetime).UTC()}, err
	}
	return nil, fmt.Errorf("unknown command %q", name)
}

// listing is a page of list on etcd directly: the records themselves, not only names.
type listing struct {
	entries []signer.Entry
	next    string
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
	if f.tokenFile == "" {
		return nil, errors.New("-token-file is required with -server")
	}
	b, err := os.ReadFile(f.tokenFile)
	if err != nil {
		return nil, err
	}
	token := strings.TrimSpace(string(b))
	client := http.DefaultClient
	if pemCA, err := os.ReadFile(f.serverCA); err == nil { // trust the signer's CA when we have it
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemCA)
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
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
	b, err = io.ReadAll(resp.Body)
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

// print writes an answer: JSON, or for show and list a table.
func (f *adminFlags) print(w io.Writer, name string, answer any) error {
	if name == "delete" {
		_, err := fmt.Fprintf(w, "deleted %s\n", f.device)
		return err
	}
	if l, ok := answer.(listing); ok && f.json {
		resp := signer.ListResponse{Next: l.next, Devices: []string{}}
		for _, e := range l.entries {
			resp.Devices = append(resp.Devices, e.Name)
		}
		answer = resp
	}
	if f.json || (name != "show" && name != "list") {
		return json.NewEncoder(w).Encode(answer)
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	defer tw.Flush()
	now := time.Now()
	switch a := answer.(type) {
	case *record.Device:
		fmt.Fprintln(tw, "KEY (SHA-256 of the SPKI)\tSTATUS\tNOT AFTER\tCERTIFICATE\tDNS PUBLISHES")
		for _, c := range a.Credentials {
			fmt.Fprintln(tw, credentialRow(c, now))
		}
	case listing:
		fmt.Fprintln(tw, "DEVICE\tKEYS\tACTIVE\tREVOKED\tDNS SERVES IT")
		for _, e := range a.entries {
			if e.Err != nil {
				fmt.Fprintf(tw, "%s\t-\t-\t-\tno: INVALID RECORD: %v\n", e.Name, e.Err)
				continue
			}
			active, revoked := 0, 0
			for _, c := range e.Device.Credentials {
				switch {
				case c.Status == record.StatusRevoked:
					revoked++
				case !c.Expired(now):
					active++
				}
			}
			serves := "no (nothing to publish)"
			if active+revoked > 0 {
				serves = "yes"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", e.Name, len(e.Device.Credentials), active, revoked, serves)
		}
		if a.next != "" {
			fmt.Fprintf(tw, "(more: -after %s)\n", a.next)
		}
	case *signer.ListResponse:
		fmt.Fprintln(tw, "DEVICE")
		for _, n := range a.Devices {
			fmt.Fprintln(tw, n)
		}
		if a.Next != "" {
			fmt.Fprintf(tw, "(more: -after %s)\n", a.Next)
		}
	}
	return nil
}

// credentialRow is one credential as a table row.
func credentialRow(c record.Credential, now time.Time) string {
	sum := sha256.Sum256(c.SPKI)
	notAfter, cert := "-", "no"
	if c.NotAfter != nil {
		notAfter = c.NotAfter.UTC().Format(time.RFC3339)
	}
	if c.Cert != nil {
		cert = "yes"
	}
	dns := "3 1 1"
	if c.Cert != nil {
		dns += ", 4 0 0"
	}
	switch {
	case c.Status == record.StatusRevoked:
		dns = "255 1 1 (revoked: " + c.Reason + ")"
	case c.Expired(now):
		dns = "nothing (expired)"
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", hex.EncodeToString(sum[:]), c.Status, notAfter, cert, dns)
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
// an intermediate CA for a parent CA to sign, and an admin API token beside it.
func initCA(args []string) error {
	fs := command("init-ca", "-dir DIR -zone ZONE [flags]",
		"Makes a self-signed root CA (ca.pem and ca-key.pem, or the key in an HSM with -key), or with -csr the key\n"+
			"and CSR of an intermediate CA, and writes an admin API bearer token (admin-token) if there is none.",
		"deviceid-signer init-ca -dir /etc/deviceid -zone iot.example")
	dir := fs.String("dir", ".", "directory to write ca.pem, ca-key.pem and admin-token into (made if missing)")
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
		if err := signer.InitIntermediate(*dir, *name, c, *key); err != nil {
			return err
		}
		fmt.Printf("wrote %s: have the CSR signed as a CA (basicConstraints cA, keyCertSign),\n"+
			"then write the certificate, followed by its chain, to %s\n", filepath.Join(*dir, signer.CARequestFile), filepath.Join(*dir, signer.CACertFile))
	} else {
		ca, err := signer.InitCA(*dir, *name, *zone, c, *key)
		if err != nil {
			return err
		}
		where := filepath.Join(*dir, signer.CAKeyFile)
		if *key != "" {
			where = "the HSM (serve with -ca-key '" + *key + "')"
		}
		fmt.Printf("wrote %s, its key in %s; key identifier %s\n", filepath.Join(*dir, signer.CACertFile), where, ca.AKI())
	}
	tokenFile := filepath.Join(*dir, "admin-token")
	made, err := writeToken(tokenFile)
	if err != nil {
		return err
	}
	if made {
		fmt.Printf("wrote the admin API bearer token to %s (serve -token-file %s)\n", tokenFile, tokenFile)
	}
	return nil
}

// writeToken writes a new random bearer token to file unless it exists, and reports
// whether it wrote one.
func writeToken(file string) (bool, error) {
	if _, err := os.Stat(file); err == nil {
		return false, nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	return true, os.WriteFile(file, []byte(hex.EncodeToString(raw)+"\n"), 0o600)
}
