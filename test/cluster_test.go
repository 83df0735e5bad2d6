package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// convergeTimeout is how soon after a recovery both replicas must serve the same data.
const convergeTimeout = 10 * time.Second

// try calls the admin API without failing the test: during faults requests fail.
func (s *signerServer) try(method, path, body string) (int, []byte, error) {
	req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// replica is one CoreDNS of the cluster test with the unbound that validates it.
type replica struct {
	name    string
	c       *testenv.CoreDNS
	unbound string
}

// soaSerial asks a replica for the zone's SOA serial.
func soaSerial(r replica) (uint32, error) {
	m, err := resolve(r.c.UDP, "udp", zone, dns.TypeSOA)
	if err != nil {
		return 0, err
	}
	for _, rr := range m.Answer {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa.Serial, nil
		}
	}
	return 0, fmt.Errorf("no SOA: %v", m)
}

// converged waits until both replicas serve the same SOA serial and the device's
// expected answer, within convergeTimeout.
func converged(t *testing.T, what string, replicas []replica, device string, want []string) {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		err := func() error {
			var serials []uint32
			for _, r := range replicas {
				s, err := soaSerial(r)
				if err != nil {
					return fmt.Errorf("%s: %v", r.name, err)
				}
				serials = append(serials, s)
				if err := answerIs(t, r.c, device+"._device.iot.example.", dns.RcodeSuccess, want); err != nil {
					return fmt.Errorf("%s: %v", r.name, err)
				}
			}
			if serials[0] != serials[1] {
				return fmt.Errorf("SOA serials %v", serials)
			}
			return nil
		}()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: replicas not converged within %s: %v", what, convergeTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bareKey is a public key for an enrollment, with the 3 1 1 record it publishes.
func bareKey() (body, ee string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(key.Public())
	sum := sha256.Sum256(der)
	return fmt.Sprintf(`{"public_key": %q}`, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "3 1 1 " + hex.EncodeToString(sum[:])
}

// TestClusterFaults runs a real 3-member etcd cluster (each member its own data
// directory and ports), two CoreDNS replicas (one reaching etcd through proxies that
// can cut it off) each validated by its own unbound, and two signers, and goes
// through a leader loss, a follower loss, a quorum loss, a member restarted on its
// data and a replica cut off from every member. Throughout, both replicas answer
// every query for the data they had with a signed, validating answer; after each
// recovery they converge; writes during the quorum loss get 503 and change nothing.
func TestClusterFaults(t *testing.T) {
	cluster := testenv.StartCluster(t, 3)
	endpoints := cluster.Endpoints()
	var proxied []string
	var proxies []*proxy
	for _, e := range endpoints {
		p := startProxy(t, strings.TrimPrefix(e, "http://"))
		proxies = append(proxies, p)
		proxied = append(proxied, "http://"+p.addr())
	}
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	var replicas []replica
	for i, eps := range [][]string{endpoints, proxied} {
		port := dnsPort(t)
		c := testenv.StartCoreDNS(t, signedCorefile(port, strings.Join(eps, " "), ksk))
		waitLoaded(t, c)
		replicas = append(replicas, replica{name: fmt.Sprintf("replica %d", i+1), c: c, unbound: startUnbound(t, port, ksk.ds)})
	}
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "cluster CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	settings := etcdclient.Settings{Endpoints: endpoints}
	signers := []*signerServer{serveSigner(t, authority, dir+"/ca.pem", settings), serveSigner(t, authority, dir+"/ca.pem", settings)}

	// The devices every replica has loaded, asked for throughout.
	loaded := map[string]string{}
	for i := range 10 {
		body, ee := bareKey()
		name := fmt.Sprintf("base%d", i)
		if status, b, err := signers[i%2].try("POST", "/api/v1/devices/"+name+"/enroll", body); status != http.StatusCreated {
			t.Fatalf("enroll %s: %d %s %v", name, status, b, err)
		}
		loaded[name] = ee
	}
	converged(t, "seed", replicas, "base9", []string{loaded["base9"]})

	// Queries to both replicas (signed, direct) and their unbounds (validated), all along.
	probe := startProber(5*time.Millisecond, func(i int) (int, []string) {
		name := fmt.Sprintf("base%d._device.iot.example.", i%10)
		r := replicas[i%2]
		var failed []string
		for _, addr := range []string{r.c.UDP, r.unbound} {
			m, err := resolve(addr, "udp", name, dns.TypeTLSA)
			ok := err == nil && m.Rcode == dns.RcodeSuccess && len(m.Answer) == 2 // the TLSA and its RRSIG
			if addr == r.unbound {
				ok = ok && m.AuthenticatedData
			}
			if !ok {
				failed = append(failed, fmt.Sprintf("%s via %s: %v %v", name, addr, err, m))
			}
		}
		return 2, failed
	})
	write := func(what, device string) string {
		t.Helper()
		body, ee := bareKey()
		testenv.Eventually(t, what+": a write is taken", func() error {
			s, b, err := signers[0].try("POST", "/api/v1/devices/"+device+"/enroll", body)
			if s != http.StatusCreated {
				return fmt.Errorf("%d %s %v", s, b, err)
			}
			return nil
		})
		return ee
	}
	waitLeader := func(what string) {
		t.Helper()
		testenv.Eventually(t, what+": a leader", func() error {
			if cluster.Leader() < 0 {
				return fmt.Errorf("no leader")
			}
			return nil
		})
	}

	// 1. The leader dies; a new one is elected; writes go on; it comes back on its data.
	leader := cluster.Leader()
	cluster.Members[leader].Stop()
	waitLeader("leader killed")
	converged(t, "leader killed", replicas, "after-leader", []string{write("leader killed", "after-leader")})
	cluster.Members[leader].Start()
	converged(t, "leader restarted", replicas, "after-restart", []string{write("leader restarted", "after-restart")})

	// 2. A follower dies and comes back.
	follower := (cluster.Leader() + 1) % 3
	cluster.Members[follower].Stop()
	converged(t, "follower killed", replicas, "after-follower", []string{write("follower killed", "after-follower")})
	cluster.Members[follower].Start()

	// 3. Quorum lost: two of three down. Writes get 503 and change nothing; /healthz
	// says why; the replicas answer from what they have.
	survivor := cluster.Leader()
	down := []int{(survivor + 1) % 3, (survivor + 2) % 3}
	for _, i := range down {
		cluster.Members[i].Stop()
	}
	// The survivor steps down once it hears from no quorum (an election timeout).
	testenv.Eventually(t, "quorum lost", func() error {
		if l := cluster.Leader(); l >= 0 {
			return fmt.Errorf("member %d still leads", l)
		}
		return nil
	})
	body, _ := bareKey()
	if status, b, err := signers[1].try("POST", "/api/v1/devices/during-outage/enroll", body); status != http.StatusServiceUnavailable {
		t.Errorf("a write without quorum: %d %s %v, want 503", status, b, err)
	}
	if status, b, _ := signers[0].try("GET", "/healthz", ""); status != http.StatusServiceUnavailable ||
		!strings.Contains(string(b), "connection refused") || !strings.Contains(string(b), "no leader") {
		t.Errorf("/healthz without quorum: %d %s", status, b)
	}
	for _, i := range down {
		cluster.Members[i].Start()
	}
	waitLeader("quorum back")
	converged(t, "quorum back", replicas, "after-quorum", []string{write("quorum back", "after-quorum")})
	if err := answerIs(t, replicas[0].c, "during-outage._device.iot.example.", dns.RcodeNameError, nil); err != nil {
		t.Errorf("the write refused during the outage: %v", err)
	}
	if status, b, _ := signers[0].try("GET", "/healthz", ""); status != http.StatusOK {
		t.Errorf("/healthz after recovery: %d %s", status, b)
	}

	// 4. Replica 2 is cut off from every member; it serves what it had; reconnected,
	// it catches up.
	for _, p := range proxies {
		p.cut()
	}
	ee := write("replica cut off", "while-cut")
	if err := answerIs(t, replicas[1].c, "base1._device.iot.example.", dns.RcodeSuccess, []string{loaded["base1"]}); err != nil {
		t.Errorf("the cut-off replica: %v", err)
	}
	for _, p := range proxies {
		p.restore()
	}
	converged(t, "replica reconnected", replicas, "while-cut", []string{ee})

	asked, failures := probe.done()
	if len(failures) != 0 {
		t.Errorf("%d of %d answers failed during the faults; first: %s", len(failures), asked, failures[0])
	}
	if asked < 100 {
		t.Errorf("only %d queries asked", asked)
	}
}

// TestClusterWritersLeaderKilled: 50 writers spread over two signers enroll while the
// leader is killed. Every acknowledged enrollment is in the final state with its
// certificate, and no certificate was returned without its record.
func TestClusterWritersLeaderKilled(t *testing.T) {
	cluster := testenv.StartCluster(t, 3)
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "cluster CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	settings := etcdclient.Settings{Endpoints: cluster.Endpoints()}
	signers := []*signerServer{serveSigner(t, authority, dir+"/ca.pem", settings), serveSigner(t, authority, dir+"/ca.pem", settings)}
	type ack struct {
		device string
		cert   []byte
	}
	acks := make(chan ack, 50)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 50 {
		wg.Go(func() {
			<-start
			device := fmt.Sprintf("w%d", i%10) // five writers per device
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			body := fmt.Sprintf(`{"csr": %q}`, testenv.CSRPEM(t, key, ""))
			status, b, err := signers[i%2].try("POST", "/api/v1/devices/"+device+"/enroll", body)
			if err != nil || status != http.StatusCreated {
				return // not acknowledged: allowed while the leader is gone
			}
			var er httpapi.EnrollResponse
			if err := json.Unmarshal(b, &er); err != nil || er.Certificate == "" {
				t.Errorf("acknowledged without a certificate: %s", b)
				return
			}
			blk, _ := pem.Decode([]byte(er.Certificate))
			acks <- ack{device, blk.Bytes}
		})
	}
	close(start)
	time.Sleep(20 * time.Millisecond) // the writers are under way
	cluster.Members[cluster.Leader()].Stop()
	wg.Wait()
	close(acks)
	reg := &registry.Registry{Client: testenv.Client(t, cluster.Endpoints()...), Prefix: "/deviceid", Zone: zone}
	n := 0
	for a := range acks {
		n++
		rec, _, err := reg.Get(t.Context(), a.device)
		if err != nil {
			t.Errorf("%s: %v", a.device, err)
			continue
		}
		found := false
		for _, c := range rec.Credentials {
			found = found || string(c.Cert) == string(a.cert)
		}
		if !found {
			t.Errorf("%s: an acknowledged certificate is not in the final record", a.device)
		}
	}
	if n == 0 {
		t.Error("no write was acknowledged")
	}
	t.Logf("%d of 50 writes acknowledged across the leader loss", n)
}
