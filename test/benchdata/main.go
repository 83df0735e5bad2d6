// Command benchdata prepares and serves the data of `make bench`: it runs an embedded
// etcd, writes N device records into it (unless they are there already), writes the
// same records as a zone file for CoreDNS's file plugin, and writes dnsperf query
// files. It then serves etcd until interrupted.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/deviceid/deviceid/internal/embedetcd"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const zone = "iot.example"

func main() {
	n := flag.Int("n", 100000, "number of devices")
	spkiOnly := flag.Bool("spki-only", false, "write SPKI-only credentials (3 1 1 records) instead of certificates")
	dir := flag.String("dir", "bench-out", "output directory (etcd data, zone file, query files)")
	clientURL := flag.String("etcd", "http://127.0.0.1:23790", "etcd client URL")
	peerURL := flag.String("etcd-peer", "http://127.0.0.1:23800", "etcd peer URL")
	quota := flag.Int64("quota", 0, "etcd backend quota in bytes (0: etcd's default of 2 GiB; ten million devices need 8 GiB)")
	zoneFile := flag.Bool("zone-file", true, "also write the records as a zone file for the file plugin")
	flag.Parse()
	if err := run(*n, *spkiOnly, *zoneFile, *quota, *dir, *clientURL, *peerURL); err != nil {
		log.Fatal(err)
	}
}

func run(n int, spkiOnly, zoneFile bool, quota int64, dir, clientURL, peerURL string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	e, err := embedetcd.Start(embedetcd.Config{Dir: filepath.Join(dir, "etcd"), ClientURL: clientURL, PeerURL: peerURL, QuotaBytes: quota})
	if err != nil {
		return err
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()

	ctx := context.Background()
	resp, err := cli.Get(ctx, record.ZonePrefix("/deviceid", zone), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if resp.Count != int64(n) {
		start := time.Now()
		if _, err := cli.Delete(ctx, "/deviceid/", clientv3.WithPrefix()); err != nil {
			return err
		}
		if err := populate(ctx, cli, dir, n, spkiOnly, zoneFile); err != nil {
			return err
		}
		log.Printf("wrote %d devices in %s", n, time.Since(start).Round(time.Millisecond))
	}
	if err := queryFiles(dir, n); err != nil {
		return err
	}
	fmt.Println("ready") // the bench script waits for this line
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
	return nil
}

func deviceName(i int) string { return fmt.Sprintf("dev%07d", i) }

// populate writes n devices to etcd in transactions of 128 puts (etcd's default
// limit), and with zoneFile the same RRsets to dir/zone.db for the file plugin.
func populate(ctx context.Context, cli *clientv3.Client, dir string, n int, spkiOnly, zoneFile bool) error {
	ca, err := testenv.NewCA("bench CA")
	if err != nil {
		return err
	}
	name := filepath.Join(dir, "zone.db")
	if !zoneFile {
		name = os.DevNull
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	zf := bufio.NewWriter(f)
	fmt.Fprintf(zf, "$ORIGIN %s.\n@ 60 IN SOA ns1 hostmaster 1 7200 1800 1209600 60\n@ 60 IN NS ns1\n", zone)
	now := time.Now()
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	// One key pair per device costs a keygen each; a million SPKI-only devices share
	// a few keys, which changes nothing for the server.
	var shared []*ecdsa.PrivateKey
	for range 16 {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		shared = append(shared, k)
	}
	for i := range n {
		name := deviceName(i)
		owner, _ := record.DeviceOwner(name, zone)
		var cred record.Credential
		if spkiOnly {
			cred.SPKI = mustSPKI(shared[i%len(shared)])
		} else {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, err := ca.Issue(owner[:len(owner)-1], key.Public(), now.AddDate(1, 0, 0))
			if err != nil {
				return err
			}
			cred.Cert = der
		}
		cred.Status = record.StatusActive
		d := &record.Device{Version: record.Version, Credentials: []record.Credential{cred}}
		value, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if err := d.Validate(); err != nil {
			return err
		}
		if zoneFile {
			for _, rr := range d.TLSA(owner, 60, now, record.RenderOptions{RevokedUsage: 255, Discovery: true}) {
				fmt.Fprintln(zf, rr.String())
			}
		}
		ops = append(ops, clientv3.OpPut(record.DeviceKey("/deviceid", zone, name), string(value)))
		if len(ops) == 128 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return zf.Flush()
}

func mustSPKI(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		panic(err)
	}
	return der
}

// queryFiles writes the dnsperf inputs: hot (1,000 names repeated), wide (every
// device once, shuffled) and nonexistent (500,000 random names: each query needs a
// denial signed afresh).
func queryFiles(dir string, n int) error {
	write := func(name string, lines int, qname func(i int) string) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		w := bufio.NewWriter(f)
		for i := range lines {
			fmt.Fprintf(w, "%s._device.%s TLSA\n", qname(i), zone)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	}
	r := mrand.New(mrand.NewPCG(1, 2))
	hot := min(1000, n)
	if err := write("hot.txt", 100000, func(int) string { return deviceName(r.IntN(hot)) }); err != nil {
		return err
	}
	perm := r.Perm(n)
	if err := write("wide.txt", n, func(i int) string { return deviceName(perm[i]) }); err != nil {
		return err
	}
	return write("nonexistent.txt", 500000, func(int) string {
		v, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
		return fmt.Sprintf("nx%x", v)
	})
}
