// Command importbench measures `deviceid-signer import` (make bench-import): it runs an
// embedded etcd, writes a JSON-lines file of N devices with public keys, and in each
// round times the import (register and enroll through the registry's own workflow,
// audited) beside raw etcd puts of the same records by as many writers, and prints
// devices per second and the ratio, with medians over the rounds.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/deviceid/deviceid/internal/embedetcd"
	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	n := flag.Int("n", 100000, "devices")
	rounds := flag.Int("rounds", 3, "rounds")
	workers := flag.Int("workers", 8, "import -workers, and as many raw writers")
	signerBin := flag.String("signer", "bin/deviceid-signer", "the deviceid-signer binary")
	dir := flag.String("dir", "bench-out/import", "work directory")
	flag.Parse()
	if err := run(*n, *rounds, *workers, *signerBin, *dir); err != nil {
		log.Fatal(err)
	}
}

func run(n, rounds, workers int, signerBin, dir string) error {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	const url = "http://127.0.0.1:23791"
	e, err := embedetcd.Start(embedetcd.Config{Dir: filepath.Join(dir, "etcd"), ClientURL: url, PeerURL: "http://127.0.0.1:23801", QuotaBytes: 8 << 30})
	if err != nil {
		return err
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	signer := func(args ...string) error {
		cmd := exec.Command(signerBin, args...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("%s %v: %w\n%s", signerBin, args, err, out)
		}
		return nil
	}
	if err := signer("init-ca", "-dir", dir, "-zone", "iot.example"); err != nil {
		return err
	}
	// The file: one public key per device.
	file := filepath.Join(dir, "devices.jsonl")
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	spkis := make([][]byte, n)
	enc := json.NewEncoder(f)
	for i := range n {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		spkis[i], _ = x509.MarshalPKIXPublicKey(key.Public())
		enc.Encode(map[string]any{"name": fmt.Sprintf("dev%07d", i), "public_key": base64.StdEncoding.EncodeToString(spkis[i]),
			"attributes": map[string]string{"model": "th-200", "batch": "b1"}})
	}
	f.Close()

	var importRates, rawRates, ratios []float64
	for r := range rounds {
		prefix := fmt.Sprintf("/imp%d", r)
		common := []string{"-zone", "iot.example", "-etcd", url, "-prefix", prefix}
		if err := signer(append([]string{"tenant-create", "-tenant", "acme"}, common...)...); err != nil {
			return err
		}
		start := time.Now()
		args := append([]string{"import", "-file", file, "-tenant", "acme", "-restart", "-workers", fmt.Sprint(workers),
			"-ca-cert", filepath.Join(dir, "ca.pem"), "-ca-key", filepath.Join(dir, "ca-key.pem")}, common...)
		if err := signer(args...); err != nil {
			return err
		}
		imported := time.Since(start)

		raw, err := rawPuts(cli, fmt.Sprintf("/raw%d", r), spkis, workers)
		if err != nil {
			return err
		}
		ir, rr := float64(n)/imported.Seconds(), float64(n)/raw.Seconds()
		importRates, rawRates, ratios = append(importRates, ir), append(rawRates, rr), append(ratios, ir/rr)
		fmt.Printf("round %d: import %.0f devices/s (%.1f s), raw etcd puts %.0f/s (%.1f s), ratio %.2f\n", r+1, ir, imported.Seconds(), rr, raw.Seconds(), ir/rr)
		cli.Delete(context.Background(), prefix+"/", clientv3.WithPrefix())
		cli.Delete(context.Background(), fmt.Sprintf("/raw%d/", r), clientv3.WithPrefix())
	}
	fmt.Printf("median of %d rounds, %d devices, %d workers: import %.0f devices/s, raw etcd puts %.0f/s, ratio %.2f\n",
		rounds, n, workers, median(importRates), median(rawRates), median(ratios))
	return nil
}

// rawPuts writes the records an import writes (the device record; no index, audit
// or checks) with one put each, by workers writers.
func rawPuts(cli *clientv3.Client, prefix string, spkis [][]byte, workers int) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(spkis); i += workers {
				d := record.Device{Version: record.Version, Tenant: "acme", Attributes: map[string]string{"model": "th-200", "batch": "b1"},
					Credentials: []record.Credential{{SPKI: spkis[i], Status: record.StatusActive}}}
				b, _ := json.Marshal(d)
				if _, err := cli.Put(context.Background(), record.DeviceKey(prefix, "iot.example", fmt.Sprintf("dev%07d", i)), string(b)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
