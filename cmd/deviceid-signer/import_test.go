package main

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"
)

// importTestbed is an etcd with tenant acme, a CA, and the flags to reach them.
func importTestbed(t *testing.T) (*testenv.Etcd, *registry.Registry, []string) {
	t.Helper()
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t)
	if _, err := stdout(t, func() error { return initCA([]string{"-dir", dir, "-zone", "iot.example"}) }); err != nil {
		t.Fatal(err)
	}
	args := []string{"-zone", "iot.example", "-etcd", etcd.URL(), "-ca-cert", filepath.Join(dir, "ca.pem"), "-ca-key", filepath.Join(dir, "ca-key.pem")}
	if _, err := stdout(t, func() error { return runAdmin("tenant-create", append(args[:4:4], "-tenant", "acme")) }); err != nil {
		t.Fatal(err)
	}
	return etcd, &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: "iot.example"}, args
}

func pubKeyB64(t *testing.T) string {
	der, _ := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	return base64.StdEncoding.EncodeToString(der)
}

func revisionOf(t *testing.T, r *registry.Registry) int64 {
	resp, err := r.Client.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestImport imports JSON lines of every kind, with bad lines among them: the good
// ones are in the registry, each bad one is listed with why, and a second run
// changes nothing.
func TestImport(t *testing.T) {
	_, reg, args := importTestbed(t)
	file := filepath.Join(t.TempDir(), "devices.jsonl")
	csr := base64.StdEncoding.EncodeToString(testenv.CSR(t, testenv.DeviceKey(t), ""))
	lines := []string{
		`{"name": "reserved1"}`,
		`{"name": "Attrs1", "attributes": {"model": "th-200", "serial": "A1"}}`,
		fmt.Sprintf(`{"name": "bare1", "public_key": %q}`, pubKeyB64(t)),
		fmt.Sprintf(`{"name": "cert1", "csr": %q, "attributes": {"model": "x"}}`, csr),
		`{"name": "bad_name"}`,
		`{"name": "x", "owner": "acme"}`,
		`not json`,
		`{"name": "other", "tenant": "initech"}`,
		`{"name": "badattr", "attributes": {"Bad Key": "v"}}`,
		fmt.Sprintf(`{"name": "both", "public_key": %q, "csr": %q}`, pubKeyB64(t), csr),
		`{"attributes": {"model": "x"}}`,
	}
	testenv.WriteFile(t, file, []byte(strings.Join(lines, "\n")+"\n"))
	imp := append(args, "-file", file, "-tenant", "acme")
	out, err := stdout(t, func() error { return importCommand(imp) })
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"imported 4 lines", "7 rejected", "line 5 bad_name", "line 6", "unknown field", "line 7", "bad JSON",
		"line 8 other", "no such tenant", "line 9 badattr", "line 10 both", "not both", "line 11", "no name"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	ctx := t.Context()
	for name, keys := range map[string]int{"reserved1": 0, "attrs1": 0, "bare1": 1, "cert1": 1} {
		d, _, err := reg.Get(ctx, name)
		if err != nil || d.Tenant != "acme" || len(d.Credentials) != keys {
			t.Errorf("%s: %+v %v", name, d, err)
		}
	}
	if d, _, _ := reg.Get(ctx, "attrs1"); d == nil || d.Attributes["serial"] != "A1" {
		t.Errorf("attributes: %+v", d)
	}
	if d, _, _ := reg.Get(ctx, "cert1"); d == nil || d.Credentials[0].Cert == nil {
		t.Errorf("cert1 got no certificate: %+v", d)
	}
	// A run from the start again (-restart) duplicates nothing: no write at all.
	before := revisionOf(t, reg)
	if out, err := stdout(t, func() error { return importCommand(append(imp, "-restart")) }); err != nil || !strings.Contains(out, "imported 4 lines") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if after := revisionOf(t, reg); after != before {
		t.Errorf("the second run wrote to etcd: revision %d -> %d", before, after)
	}
	// Without -restart it resumes after the last line done: nothing to do.
	if out, _ := stdout(t, func() error { return importCommand(imp) }); !strings.Contains(out, "imported 0 lines, 11 done by an earlier run, 7 rejected") {
		t.Errorf("resumed run:\n%s", out)
	}
}

// TestImportCSV imports a CSV with attribute columns; a bad header is refused.
func TestImportCSV(t *testing.T) {
	_, reg, args := importTestbed(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "devices.csv")
	testenv.WriteFile(t, file, []byte("name,tenant,attr.model,attr.serial,public_key\n"+
		"csv1,acme,th-200,S1,\ncsv2,acme,th-300,,"+pubKeyB64(t)+"\ncsv3,acme\n"))
	out, err := stdout(t, func() error { return importCommand(append(args, "-file", file)) })
	if err != nil || !strings.Contains(out, "imported 2 lines") || !strings.Contains(out, "line 3 csv3: 2 fields") {
		t.Fatalf("%v\n%s", err, out)
	}
	if d, _, _ := reg.Get(t.Context(), "csv2"); d == nil || d.Attributes["model"] != "th-300" || len(d.Credentials) != 1 || d.Attributes["serial"] != "" {
		t.Errorf("csv2: %+v", d)
	}
	bad := filepath.Join(dir, "bad.csv")
	testenv.WriteFile(t, bad, []byte("name,color\nx,red\n"))
	if err := importCommand(append(args, "-file", bad)); err == nil || !strings.Contains(err.Error(), `unknown column "color"`) {
		t.Errorf("bad header: %v", err)
	}
}

// TestImportResumes stops etcd while an import runs: the run stops with its
// checkpoint saved, and the next run imports the rest, each line exactly once.
func TestImportResumes(t *testing.T) {
	etcd, reg, args := importTestbed(t)
	importRetries = []time.Duration{10 * time.Millisecond}
	defer func() {
		importRetries = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
	}()
	file := filepath.Join(t.TempDir(), "devices.jsonl")
	var b strings.Builder
	const n = 3000
	for i := range n {
		fmt.Fprintf(&b, `{"name": "d%04d", "attributes": {"batch": "7"}}`+"\n", i)
	}
	testenv.WriteFile(t, file, []byte(b.String()))
	imp := append(args, "-file", file, "-tenant", "acme", "-timeout", "2s", "-workers", "4")
	done := make(chan error, 1)
	go func() { _, err := stdout(t, func() error { return importCommand(imp) }); done <- err }()
	// Stop etcd once the run has saved some progress.
	testenv.Eventually(t, "some progress saved", func() error {
		var st importState
		b, err := os.ReadFile(file + ".progress")
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil && st.Done == 0 {
			err = fmt.Errorf("nothing done yet")
		}
		return err
	})
	etcd.Stop()
	err := <-done
	var st importState
	b2, _ := os.ReadFile(file + ".progress")
	json.Unmarshal(b2, &st)
	if err == nil || !strings.Contains(err.Error(), "run the same command again") || st.Done >= n {
		t.Fatalf("interrupted run: %v, checkpoint %d", err, st.Done)
	}
	etcd.Start()
	out, err := stdout(t, func() error { return importCommand(imp) })
	if err != nil || !strings.Contains(out, fmt.Sprintf("done by an earlier run, 0 rejected (of %d)", n)) {
		t.Fatalf("resumed: %v\n%s", err, out)
	}
	entries := 0
	for e, err := range exportAll(t, reg) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Tenant != "acme" || e.Attributes["batch"] != "7" {
			t.Errorf("%s: %+v", e.Name, e)
		}
		entries++
	}
	if entries != n {
		t.Errorf("%d devices, want %d", entries, n)
	}
	// Each device was registered once: one audit entry each, however the run was cut.
	audit, _, err := reg.Audit(t.Context(), registry.OperatorActor("test"), registry.AuditFilter{Operation: "device.register", Limit: 1000})
	count := len(audit)
	for next := ""; err == nil && len(audit) == 1000; count += len(audit) {
		next = audit[len(audit)-1].ID
		audit, _, err = reg.Audit(t.Context(), registry.OperatorActor("test"), registry.AuditFilter{Operation: "device.register", Limit: 1000, After: next})
	}
	if count != n {
		t.Errorf("%d registrations in the audit trail, want %d", count, n)
	}
}

// exportAll yields every device of the registry with its name.
func exportAll(t *testing.T, reg *registry.Registry) func(yield func(httpapi.ExportLine, error) bool) {
	return func(yield func(httpapi.ExportLine, error) bool) {
		var lines []httpapi.ExportLine
		err := reg.Export(t.Context(), registry.OperatorActor("test"), registry.Filter{Limit: 1000}, func(e registry.Entry) error {
			lines = append(lines, httpapi.ExportLine{Name: e.Name, Device: *e.Device})
			return nil
		})
		if err != nil {
			yield(httpapi.ExportLine{}, err)
			return
		}
		for _, l := range lines {
			if !yield(l, nil) {
				return
			}
		}
	}
}

// FuzzImportLines feeds arbitrary files to the JSON-lines and CSV readers: every line
// comes out parsed or with an error, and nothing panics.
func FuzzImportLines(f *testing.F) {
	f.Add([]byte(`{"name": "a", "attributes": {"k": "v"}}`+"\n"+`not json`+"\n"), false)
	f.Add([]byte("name,tenant,attr.model\na,acme,x\n\"b,c\n"), true)
	f.Add([]byte("name,color\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, csv bool) {
		file := filepath.Join(t.TempDir(), "in.jsonl")
		if csv {
			file = filepath.Join(t.TempDir(), "in.csv")
		}
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out := make(chan parsed)
		errc := make(chan error, 1)
		go func() { errc <- lines(file, out) }()
		last := 0
		for p := range out {
			if p.n <= last {
				t.Fatalf("line %d after %d", p.n, last)
			}
			last = p.n
		}
		<-errc
	})
}

// TestRegistryCommandsBadInput: bad flags are refused with a clear error before anything is sent.
func TestRegistryCommandsBadInput(t *testing.T) {
	_, reg, args := importTestbed(t)
	before := revisionOf(t, reg)
	direct := args[:4:4]
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"register", "-device", "x", "-attr", "novalue"}, "want key=value"},
		{[]string{"register", "-attr", "a=b"}, "-device is required"},
		{[]string{"register", "-device", "Bad_Name"}, "Bad Request"},
		{[]string{"attributes", "-device", "x", "-attr", "Bad Key=v"}, "Bad Request"},
		{[]string{"tenant-create", "-tenant", "Not OK"}, "Bad Request"},
		{[]string{"token", "-tenant", "nosuch"}, "no such tenant"},
		{[]string{"token-revoke", "-tenant", "acme"}, "-id is required"},
		{[]string{"transfer-accept", "-device", "x"}, "-code-file is required"},
		{[]string{"list", "-state", "asleep"}, "Bad Request"},
		{[]string{"audit", "-limit", "5000"}, "Bad Request"},
		{[]string{"suspend", "-device", "nosuch"}, "no such device"},
		{[]string{"assign", "-device", "x"}, "assign needs -tenant"},
		{[]string{"assign", "-device", "nosuch", "-tenant", "acme"}, "no such device"},
	} {
		err := runAdmin(tc.cmd[0], append(append([]string{}, direct...), tc.cmd[1:]...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.cmd, err, tc.want)
		}
	}
	if err := importCommand(append(args, "-file", "/nonexistent.jsonl")); err == nil {
		t.Error("import of a missing file")
	}
	if after := revisionOf(t, reg); after != before {
		t.Errorf("etcd changed: %d -> %d", before, after)
	}
}

// TestRegistryCommands runs the tenant and lifecycle commands on etcd directly and
// checks what they print and write.
func TestRegistryCommands(t *testing.T) {
	_, reg, args := importTestbed(t)
	direct := args[:4:4]
	cmd := func(c ...string) string {
		t.Helper()
		out, err := stdout(t, func() error { return runAdmin(c[0], append(append([]string{}, direct...), c[1:]...)) })
		if err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
		return out
	}
	cmd("tenant-create", "-tenant", "globex")
	if out := cmd("tenants"); !strings.Contains(out, `"acme"`) || !strings.Contains(out, `"globex"`) {
		t.Errorf("tenants: %s", out)
	}
	if out := cmd("token", "-tenant", "acme", "-label", "ci"); !strings.Contains(out, `"token":"did_`) {
		t.Errorf("token: %s", out)
	}
	cmd("register", "-device", "lamp", "-tenant", "acme", "-attr", "model=th-200")
	cmd("attributes", "-device", "lamp", "-attr", "model=th-300", "-attr", "serial=9")
	cmd("suspend", "-device", "lamp")
	if out := cmd("list", "-tenant", "acme", "-state", "suspended", "-attr", "model=th-300"); !strings.Contains(out, "lamp") || !strings.Contains(out, "suspended") {
		t.Errorf("list: %s", out)
	}
	cmd("resume", "-device", "lamp")
	out := cmd("transfer", "-device", "lamp")
	var code httpapi.CodeResponse
	if err := json.Unmarshal([]byte(out), &code); err != nil || code.Code == "" {
		t.Fatalf("transfer: %v %s", err, out)
	}
	codeFile := filepath.Join(t.TempDir(), "transfer-code")
	if err := os.WriteFile(codeFile, []byte(code.Code+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd("transfer-accept", "-device", "lamp", "-tenant", "globex", "-code-file", codeFile, "-keep-keys")
	if d, _, _ := reg.Get(t.Context(), "lamp"); d == nil || d.Tenant != "globex" || d.Attributes["serial"] != "9" {
		t.Errorf("after the transfer: %+v", d)
	}
	if out := cmd("assign", "-device", "lamp", "-tenant", "acme"); !strings.Contains(out, `"tenant":"acme"`) {
		t.Errorf("assign: %s", out)
	}
	cmd("assign", "-device", "lamp", "-tenant", "globex", "-keep-keys")
	if out := cmd("export", "-tenant", "globex"); !strings.Contains(out, `"name":"lamp"`) || strings.Count(out, "\n") != 1 {
		t.Errorf("export: %s", out)
	}
	out = cmd("audit", "-device", "lamp")
	for _, op := range []string{"device.register", "device.attributes", "device.suspend", "device.resume", "transfer.start", "transfer.accept", "device.assign", `"actor":"cli:`} {
		if !strings.Contains(out, op) {
			t.Errorf("audit lacks %s: %s", op, out)
		}
	}
	cmd("delete", "-device", "lamp")
	pub := filepath.Join(t.TempDir(), "broker.pub")
	der, _ := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	testenv.WriteFile(t, pub, der)
	if out := cmd("service-key", "-service", "_8883._tcp.mqtt.globex", "-tenant", "globex", "-pubkey", pub); !strings.Contains(out, `"tenant":"globex"`) {
		t.Errorf("service-key: %s", out)
	}
	if out := cmd("services"); !strings.Contains(out, "_8883._tcp.mqtt.globex") {
		t.Errorf("services: %s", out)
	}
	if out := cmd("services", "-name-prefix", "_443.", "-limit", "1"); strings.Contains(out, "_8883") {
		t.Errorf("services by prefix: %s", out)
	}
	if out := cmd("service-revoke", "-service", "_8883._tcp.mqtt.globex"); !strings.Contains(out, `"status":"revoked"`) {
		t.Errorf("service-revoke: %s", out)
	}
	cmd("service-show", "-service", "_8883._tcp.mqtt.globex")
	cmd("service-delete", "-service", "_8883._tcp.mqtt.globex")
	cmd("tenant-disable", "-tenant", "globex")
	cmd("tenant-delete", "-tenant", "globex")
	if out := cmd("tenants"); strings.Contains(out, "globex") {
		t.Errorf("globex after delete: %s", out)
	}
}

// TestReindexCommand: a record put into etcd directly joins acme's list after
// reindex, and a dry run before it reports it and writes nothing.
func TestReindexCommand(t *testing.T) {
	_, reg, args := importTestbed(t)
	direct := args[:4:4]
	if _, err := reg.Client.Put(t.Context(), record.DeviceKey(reg.Prefix, reg.Zone, "raw"), `{"version": 1, "tenant": "acme"}`); err != nil {
		t.Fatal(err)
	}
	before := revisionOf(t, reg)
	out, err := stdout(t, func() error { return reindexCommand(append(slices.Clone(direct), "-dry-run")) })
	if err != nil || !strings.Contains(out, `"added":["acme/raw"]`) || revisionOf(t, reg) != before {
		t.Errorf("dry run: %v %s", err, out)
	}
	if out, err := stdout(t, func() error { return reindexCommand(slices.Clone(direct)) }); err != nil || !strings.Contains(out, `"added":["acme/raw"]`) {
		t.Errorf("reindex: %v %s", err, out)
	}
	if entries, _, err := reg.Search(t.Context(), registry.Actor{ID: "t", Tenant: "acme"}, registry.Filter{}); err != nil || len(entries) != 1 || entries[0].Name != "raw" {
		t.Errorf("acme's list after reindex: %v %v", entries, err)
	}
	if err := reindexCommand([]string{"-etcd", "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "-zone") {
		t.Errorf("no zone: %v", err)
	}
}
