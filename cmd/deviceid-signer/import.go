package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deviceid/deviceid/signer/httpapi"
)

// ImportLine is one device to import: a name, its tenant and attributes, and a
// public key or a CSR to enroll (neither: the name is only registered).
type ImportLine struct {
	Name       string            `json:"name"`
	Tenant     string            `json:"tenant,omitempty"`
	Attributes map[string]string `json:"attributes,omitempty"`
	PublicKey  string            `json:"public_key,omitempty"`
	CSR        string            `json:"csr,omitempty"`
}

// importState is what a run keeps beside its file (FILE.progress) to resume: every
// line up to Done is finished, and the rejected ones are listed.
type importState struct {
	Done     int        `json:"done"`
	Rejected []rejected `json:"rejected"`
}

type rejected struct {
	Line  int    `json:"line"`
	Name  string `json:"name"`
	Error string `json:"error"`
}

const importAbout = `Imports devices from a CSV or JSON-lines file through the registry's own operations (register,
enroll), on etcd directly or through a running signer. Each line names a device and, optionally, its
tenant, attributes and a public key or CSR (PEM or base64 DER); a line with neither is only registered.

JSON lines: {"name": "sensor1", "tenant": "acme", "attributes": {"model": "th-200"}, "public_key": "..."}
CSV: a header row with the columns name, tenant, public_key, csr, and attr.<key> for each attribute.

The run is resumable and idempotent: FILE.progress records how far it got, a re-run after an
interruption goes on from there, and a line done twice changes nothing. Rejected lines are listed at
the end (and kept in FILE.progress) with why.`

// importCommand runs deviceid-signer import.
func importCommand(args []string) error {
	fs := command("import", "-file FILE [-tenant T] [flags]", importAbout,
		"deviceid-signer import -zone iot.example -file devices.jsonl -tenant acme")
	var f adminFlags
	f.register(fs)
	f.ca.register(fs)
	file := fs.String("file", "", "the CSV (.csv) or JSON-lines file (required)")
	tenant := fs.String("tenant", "", "the tenant of lines that name none")
	workers := fs.Int("workers", 8, "requests at once")
	restart := fs.Bool("restart", false, "ignore FILE.progress and start from the first line")
	timeout := fs.Duration("timeout", 30*time.Second, "of one request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		return errors.New("-file is required")
	}
	if *workers < 1 || *workers > 256 {
		return errors.New("-workers: 1 to 256")
	}
	needsCA, total, err := scanImport(*file)
	if err != nil {
		return err
	}
	f.timeout = *timeout
	// One log line per device would drown the progress: only warnings.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	client, done, err := f.client(needsCA && f.server == "")
	if err != nil {
		return err
	}
	defer done()
	im := &importer{client: client, tenant: *tenant, workers: *workers, stateFile: *file + ".progress", total: total,
		progress: newProgress(os.Stderr, total)}
	if !*restart {
		if err := im.loadState(); err != nil {
			return err
		}
	}
	err = im.run(*file)
	im.summary(os.Stdout)
	return err
}

// scanImport counts a file's lines (for the progress's ETA) and tells whether any has a CSR.
func scanImport(file string) (bool, int, error) {
	fh, err := os.Open(file)
	if err != nil {
		return false, 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	csr, n := false, 0
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			n++
		}
		csr = csr || strings.Contains(sc.Text(), "CERTIFICATE REQUEST") || strings.Contains(sc.Text(), `"csr"`) || n == 1 && strings.Contains(sc.Text(), "csr")
	}
	if isCSV(file) {
		n-- // the header
	}
	return csr, n, sc.Err()
}

func isCSV(file string) bool { return strings.EqualFold(filepath.Ext(file), ".csv") }

type importer struct {
	client    *apiClient
	tenant    string
	workers   int
	stateFile string
	total     int
	progress  *progress

	mu       sync.Mutex
	state    importState
	finished map[int]bool // lines after state.Done that are finished
	skipped  int          // lines done in an earlier run
	imported int
	refused  int // lines rejected in this run
}

func (im *importer) loadState() error {
	b, err := os.ReadFile(im.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = json.Unmarshal(b, &im.state)
	}
	if err != nil {
		return fmt.Errorf("%s: %w (remove it, or -restart)", im.stateFile, err)
	}
	return nil
}

func (im *importer) saveState() error {
	im.mu.Lock()
	b, _ := json.Marshal(im.state)
	im.mu.Unlock()
	tmp := im.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, im.stateFile)
}

// parsed is one line of the file, or why it does not parse.
type parsed struct {
	n    int
	line ImportLine
	err  error
}

// lines reads the file and sends its lines, numbered from 1 (the CSV header is line 0).
func lines(file string, out chan<- parsed) error {
	defer close(out)
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	if isCSV(file) {
		return csvLines(fh, out)
	}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 0; sc.Scan(); {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		n++
		var l ImportLine
		dec := json.NewDecoder(strings.NewReader(text))
		dec.DisallowUnknownFields()
		err := dec.Decode(&l)
		if err != nil {
			err = fmt.Errorf("bad JSON: %v", err)
		}
		out <- parsed{n: n, line: l, err: err}
	}
	return sc.Err()
}

func csvLines(r io.Reader, out chan<- parsed) error {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return fmt.Errorf("CSV header: %w", err)
	}
	for i, h := range header {
		header[i] = strings.TrimSpace(h)
		switch {
		case header[i] == "name", header[i] == "tenant", header[i] == "public_key", header[i] == "csr", strings.HasPrefix(header[i], "attr."):
		default:
			return fmt.Errorf("CSV header: unknown column %q (want name, tenant, public_key, csr, attr.<key>)", h)
		}
	}
	for n := 1; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		p := parsed{n: n}
		if err != nil {
			p.err = fmt.Errorf("bad CSV: %v", err)
		} else if len(rec) != len(header) {
			p.err = fmt.Errorf("%d fields, the header has %d", len(rec), len(header))
			if i := slices.Index(header, "name"); i >= 0 && i < len(rec) {
				p.line.Name = rec[i]
			}
		} else {
			for i, v := range rec {
				if v == "" {
					continue
				}
				switch h := header[i]; h {
				case "name":
					p.line.Name = v
				case "tenant":
					p.line.Tenant = v
				case "public_key":
					p.line.PublicKey = v
				case "csr":
					p.line.CSR = v
				default:
					if p.line.Attributes == nil {
						p.line.Attributes = map[string]string{}
					}
					p.line.Attributes[strings.TrimPrefix(h, "attr.")] = v
				}
			}
		}
		out <- p
	}
}

// run imports the lines after the checkpoint with the workers, saving the state
// every second and at the end. It stops at the first error that is not the line's
// fault (etcd or the signer unavailable), leaving the checkpoint for a re-run.
func (im *importer) run(file string) error {
	im.finished = map[int]bool{}
	work := make(chan parsed, im.workers*4)
	readErr := make(chan error, 1)
	go func() { readErr <- lines(file, work) }()
	var fatal atomic.Pointer[error]
	var wg sync.WaitGroup
	stop, stopped := make(chan struct{}), make(chan struct{})
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	go func() {
		defer close(stopped)
		for {
			select {
			case <-ticker.C:
				im.saveState()
				im.progress.show(im.count())
			case <-stop:
				return
			}
		}
	}()
	resumeAfter := im.state.Done // lines up to here were done by an earlier run
	for range im.workers {
		wg.Go(func() {
			for p := range work {
				if p.n <= resumeAfter {
					im.finish(p.n, nil, true)
					continue
				}
				if fatal.Load() != nil {
					continue // drain
				}
				err := p.err
				if err == nil {
					err = im.importLine(p.line)
				}
				var down *unavailableError
				if errors.As(err, &down) {
					fatal.CompareAndSwap(nil, &err)
					continue
				}
				im.finish(p.n, rejection(p, err), false)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-stopped
	im.progress.show(im.count())
	im.progress.end()
	if err := im.saveState(); err != nil {
		return err
	}
	if err := fatal.Load(); err != nil {
		return fmt.Errorf("stopped: %w; run the same command again to go on from line %d", *err, im.state.Done+1)
	}
	return <-readErr
}

func rejection(p parsed, err error) *rejected {
	if err == nil {
		return nil
	}
	return &rejected{Line: p.n, Name: p.line.Name, Error: err.Error()}
}

// finish records line n as done and moves the checkpoint over every finished line.
func (im *importer) finish(n int, rej *rejected, earlier bool) {
	im.mu.Lock()
	defer im.mu.Unlock()
	switch {
	case earlier:
		im.skipped++
		return
	case rej != nil:
		im.state.Rejected = append(im.state.Rejected, *rej)
		im.refused++
	default:
		im.imported++
	}
	im.finished[n] = true
	for im.finished[im.state.Done+1] {
		delete(im.finished, im.state.Done+1)
		im.state.Done++
	}
}

// count is how many lines this run has been through, and how many of those an
// earlier run had done.
func (im *importer) count() (int, int) {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.imported + im.refused + im.skipped, im.skipped
}

// unavailableError is a failure that is not the line's: the run stops.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return e.err.Error() }

// importLine enrolls the device's key with its attributes (registering it), or only
// registers it, as the API's enroll and register do: one idempotent write each.
func (im *importer) importLine(l ImportLine) error {
	if l.Name == "" {
		return errors.New("no name")
	}
	if l.PublicKey != "" && l.CSR != "" {
		return errors.New("give either public_key or csr, not both")
	}
	tenant := l.Tenant
	if tenant == "" {
		tenant = im.tenant
	}
	path := "/api/v1/devices/" + url.PathEscape(l.Name)
	if l.PublicKey != "" || l.CSR != "" {
		return im.send(apiRequest{method: "POST", path: path + "/enroll",
			body: httpapi.EnrollRequest{PublicKey: l.PublicKey, CSR: l.CSR, Tenant: tenant, Attributes: l.Attributes}})
	}
	return im.send(apiRequest{method: "POST", path: path + "/register", body: httpapi.RegisterRequest{Tenant: tenant, Attributes: l.Attributes}})
}

// importRetries are the waits before each retry of a request that etcd or the
// signer could not do; after the last the run stops.
var importRetries = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}

// send makes one request, retrying what etcd or the signer could not do for a
// while; a 4xx is the line's fault.
func (im *importer) send(req apiRequest) error {
	_, err := im.client.do(req)
	for _, wait := range importRetries {
		if err == nil || !retryable(err) {
			return err
		}
		time.Sleep(wait)
		_, err = im.client.do(req)
	}
	if err == nil || !retryable(err) {
		return err
	}
	return &unavailableError{err}
}

// retryable: the request failed for want of etcd or the signer (a 5xx, or no
// answer at all), not by the line's fault (a 4xx).
func retryable(err error) bool {
	var e *apiError
	return !errors.As(err, &e) || e.status >= 500
}

func (im *importer) summary(w io.Writer) {
	im.mu.Lock()
	defer im.mu.Unlock()
	fmt.Fprintf(w, "imported %d lines, %d done by an earlier run, %d rejected (of %d); progress in %s\n",
		im.imported, im.skipped, len(im.state.Rejected), im.total, im.stateFile)
	for _, r := range im.state.Rejected {
		fmt.Fprintf(w, "  line %d %s: %s\n", r.Line, r.Name, r.Error)
	}
}

// progress draws a progress bar with rate and ETA on a terminal, or writes a plain
// line every 5 seconds elsewhere.
type progress struct {
	w        io.Writer
	terminal bool
	total    int
	start    time.Time
	last     time.Time
}

func newProgress(w *os.File, total int) *progress {
	st, err := w.Stat()
	return &progress{w: w, terminal: err == nil && st.Mode()&os.ModeCharDevice != 0, total: total, start: time.Now()}
}

// show draws the progress: done lines of total, skipped of them done by an earlier
// run (which do not count in the rate).
func (p *progress) show(done, skipped int) {
	now := time.Now()
	if !p.terminal && now.Sub(p.last) < 5*time.Second && done < p.total {
		return
	}
	p.last = now
	elapsed := now.Sub(p.start).Seconds()
	rate := float64(done-skipped) / max(elapsed, 0.001)
	eta := "-"
	if rate > 0 {
		eta = (time.Duration(float64(p.total-done)/rate) * time.Second).Round(time.Second).String()
	}
	pct := 100 * float64(done) / float64(max(p.total, 1))
	if p.terminal {
		const width = 30
		fill := int(pct / 100 * width)
		fmt.Fprintf(p.w, "\r[%s%s] %d/%d %3.0f%% %.0f/s ETA %s ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill), done, p.total, pct, rate, eta)
	} else {
		fmt.Fprintf(p.w, "import: %d/%d lines (%.0f%%), %.0f/s, ETA %s\n", done, p.total, pct, rate, eta)
	}
}

func (p *progress) end() {
	if p.terminal {
		fmt.Fprintln(p.w)
	}
}
