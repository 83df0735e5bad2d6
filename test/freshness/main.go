// Command freshness measures how soon a change written to etcd is served, signed:
// it enrolls and revokes devices at a steady rate and, after etcd acknowledges each
// write, asks the server every millisecond until the signed answer shows the change.
// It prints the time from the acknowledgement to that first answer (p50, p99), and
// the plugin's own figure from coredns_deviceid_update_duration_seconds.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	etcd := flag.String("etcd", "http://127.0.0.1:23791", "etcd client URL")
	server := flag.String("dns", "127.0.0.1:5303", "DNS server address")
	metrics := flag.String("metrics", "http://127.0.0.1:19153/metrics", "the server's prometheus URL")
	zone := flag.String("zone", "iot.example", "zone")
	n := flag.Int("n", 1000, "changes to make: enrollments and revocations alternately")
	rate := flag.Int("rate", 100, "changes a second")
	flag.Parse()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	before, err := histogram(*metrics, *zone)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var lost []string // changes not served within 10 s
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	defer tick.Stop()
	run := fmt.Sprintf("fresh%d", time.Now().Unix())
	keys := make([][]byte, (*n+1)/2)
	for i := range *n {
		<-tick.C
		// The first half of the changes enroll devices, the second half revokes them,
		// so that each state lasts long enough to be seen by a client that polls.
		k := i % len(keys)
		name := fmt.Sprintf("%s-%d", run, k)
		status := record.StatusActive
		if i >= len(keys) {
			status = record.StatusRevoked
		} else {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			keys[k], _ = x509.MarshalPKIXPublicKey(key.Public())
		}
		spki := keys[k]
		d := &record.Device{Version: record.Version, Credentials: []record.Credential{{SPKI: spki, Status: status}}}
		value, _ := json.Marshal(d)
		usage := "3 1 1 "
		if status == record.StatusRevoked {
			usage = "255 1 1 "
		}
		sum := sha256.Sum256(spki)
		want := usage + hex.EncodeToString(sum[:])
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Put(ctx, record.DeviceKey("/deviceid", *zone, name), string(value))
		cancel()
		if err != nil {
			log.Fatal(err)
		}
		acked := time.Now()
		wg.Go(func() {
			d, err := poll(*server, name+"._device."+*zone+".", want, acked)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				lost = append(lost, err.Error())
				return
			}
			lat = append(lat, d)
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if _, err := cli.Delete(ctx, record.DeviceKey("/deviceid", *zone, run), clientv3.WithPrefix()); err != nil {
		log.Printf("removing the devices of this run: %v", err)
	}
	cancel()
	for i, l := range lost {
		if i < 3 {
			fmt.Println("lost:", l)
		}
	}
	if len(lat) == 0 {
		log.Fatalf("no change was served (%d lost)", len(lost))
	}
	after, err := histogram(*metrics, *zone)
	if err != nil {
		log.Fatal(err)
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	fmt.Printf("client: %d changes at %d/s (%d not served within 10 s), etcd acknowledgement to the first signed answer: p50 %s p99 %s max %s\n",
		len(lat)+len(lost), *rate, len(lost), q(0.5).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	fmt.Printf("plugin: watch event to served, signed (coredns_deviceid_update_duration_seconds): p50 ≤ %s p99 ≤ %s over %d updates\n",
		quantile(before, after, 0.5), quantile(before, after, 0.99), int(after[inf]-before[inf]))
}

// poll asks for qname every 2 ms until the answer holds want and is signed; it
// returns the time from acked to that answer. (Every millisecond, the polls of the
// changes in flight were a load of their own once answers slowed.)
func poll(server, qname, want string, acked time.Time) (time.Duration, error) {
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(qname, dns.TypeTLSA)
	m.SetEdns0(1232, true)
	for {
		r, _, err := c.Exchange(m, server)
		if err == nil && shows(r, want) {
			return time.Since(acked), nil
		}
		if time.Since(acked) > 10*time.Second {
			return 0, fmt.Errorf("%s: %s not served after 10 s; the last answer: %v %v", qname, want, r, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func shows(r *dns.Msg, want string) bool {
	found, signed := false, false
	for _, rr := range r.Answer {
		switch x := rr.(type) {
		case *dns.TLSA:
			found = found || fmt.Sprintf("%d %d %d %s", x.Usage, x.Selector, x.MatchingType, x.Certificate) == want
		case *dns.RRSIG:
			signed = true
		}
	}
	return found && signed
}

const inf = 1e9 // the +Inf bucket

// histogram reads the cumulative buckets of the update histogram of zone.
func histogram(url, zone string) (map[float64]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := make(map[float64]float64)
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "coredns_deviceid_update_duration_seconds_bucket{") || !strings.Contains(line, `zone="`+zone+`.`) {
			continue
		}
		le := line[strings.Index(line, `le="`)+4:]
		le = le[:strings.Index(le, `"`)]
		bound := inf
		if le != "+Inf" {
			bound, _ = strconv.ParseFloat(le, 64)
		}
		v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		out[bound] = v
	}
	return out, s.Err()
}

// quantile returns the bucket bound under which the fraction p of the updates
// between the two readings fell.
func quantile(before, after map[float64]float64, p float64) string {
	total := after[inf] - before[inf]
	var bounds []float64
	for b := range after {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	for _, b := range bounds {
		if after[b]-before[b] >= p*total {
			if b == inf {
				return "+Inf"
			}
			return time.Duration(b * float64(time.Second)).String()
		}
	}
	return "?"
}
