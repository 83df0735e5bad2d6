//go:build soak

package test

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"

	"crypto/elliptic"

	"github.com/miekg/dns"
)

// TestSoak (make soak; DEVICEID_SOAK sets the duration, 30m by default) runs mixed DNS
// queries and enrollments against a 3-member cluster, two CoreDNS replicas and two
// signers, restarting one member every two minutes, and reports errors, resident
// memory and goroutines at the start and the end.
func TestSoak(t *testing.T) {
	duration, err := time.ParseDuration(os.Getenv("DEVICEID_SOAK"))
	if err != nil {
		duration = 30 * time.Minute
	}
	cluster := testenv.StartCluster(t, 3)
	// As in production (deploy/etcd), old revisions are compacted; here every minute,
	// so that a steady registry keeps a steady footprint. And the raft log each member
	// keeps in memory (up to snapshot-count + catch-up entries: 15,000 by default, some
	// 20 MB a member at this rate) is cut short, since the three members share this
	// process's heap with what the soak measures.
	for _, m := range cluster.Members {
		m.Stop()
		m.Cfg.CompactionRetention = "1m"
		m.Cfg.SnapshotCount = 2000
	}
	for _, m := range cluster.Members {
		go m.Start()
	}
	testenv.Eventually(t, "cluster restarted with compaction", func() error {
		if cluster.Leader() < 0 {
			return fmt.Errorf("no leader")
		}
		return nil
	})
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	var replicas []*testenv.CoreDNS
	for range 2 {
		corefile := signedCorefile(dnsPort(t), strings.Join(cluster.Endpoints(), " "), ksk)
		// DEVICEID_SOAK_SIGNATURE_CACHE=N: a smaller proof cache fills within the run,
		// so that the run shows memory once every cache is full.
		if n := os.Getenv("DEVICEID_SOAK_SIGNATURE_CACHE"); n != "" {
			corefile = strings.Replace(corefile, "deviceid {", "deviceid {\n        signature_cache "+n, 1)
		}
		c := testenv.StartCoreDNS(t, corefile)
		waitLoaded(t, c)
		replicas = append(replicas, c)
	}
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "soak CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	settings := etcdclient.Settings{Endpoints: cluster.Endpoints()}
	signers := []*signerServer{serveSigner(t, authority, dir+"/ca.pem", settings), serveSigner(t, authority, dir+"/ca.pem", settings)}

	var queries, queryErrors, enrolled, enrollErrors atomic.Int64
	var firstError atomic.Value
	fail := func(counter *atomic.Int64, format string, args ...any) {
		counter.Add(1)
		firstError.CompareAndSwap(nil, fmt.Sprintf(format, args...))
	}
	deadline := time.Now().Add(duration)
	done := make(chan struct{})
	// Enrollments, 5 a second, retried while a member restarts (every operation is
	// idempotent; a 503 during an election is not an error if the retry lands). The
	// registry holds at most 500 devices: each name is deleted before it is enrolled
	// again, so the data stays the same size and memory shows leaks, not growth.
	go func() {
		defer close(done)
		for i := 0; time.Now().Before(deadline); i++ {
			body, _ := bareKey()
			name := fmt.Sprintf("soak%d", i%500)
			if i >= 500 {
				for try := 0; try < 20; try++ {
					if status, _, _ := signers[i%2].try("DELETE", "/api/v1/devices/"+name, ""); status == http.StatusNoContent || status == http.StatusNotFound {
						break
					}
					time.Sleep(500 * time.Millisecond)
				}
			}
			ok := false
			for try := 0; try < 20 && !ok; try++ {
				status, _, _ := signers[i%2].try("POST", "/api/v1/devices/"+name+"/enroll", body)
				ok = status == http.StatusCreated || status == http.StatusOK
				if !ok {
					time.Sleep(500 * time.Millisecond)
				}
			}
			if ok {
				enrolled.Add(1)
			} else {
				fail(&enrollErrors, "enrollment %s failed 20 times", name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	// Queries, about 200 a second over both replicas: devices, names that do not exist, the apex.
	go func() {
		for i := 0; time.Now().Before(deadline); i++ {
			name := []string{fmt.Sprintf("soak%d._device.iot.example.", i%max(1, min(500, int(enrolled.Load())))), fmt.Sprintf("nx%d._device.iot.example.", i), zone}[i%3]
			c := replicas[i%2]
			m, err := resolve(c.UDP, "udp", name, dns.TypeTLSA)
			queries.Add(1)
			if err != nil || m.Rcode == dns.RcodeServerFailure {
				fail(&queryErrors, "%s: %v %v", name, err, m)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	rss := func() string {
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
			}
		}
		return "?"
	}
	// The live heap after a collection: what the process holds, apart from memory the
	// runtime has not given back to the system yet.
	heap := func() string {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return fmt.Sprintf("%d kB", m.HeapInuse>>10)
	}
	time.Sleep(30 * time.Second) // warmed up
	startRSS, startHeap, startG := rss(), heap(), runtime.NumGoroutine()
	restarts := 0
	for next := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); next = next.Add(2 * time.Minute) {
		time.Sleep(time.Until(next))
		if time.Now().After(deadline) {
			break
		}
		m := cluster.Members[restarts%3]
		m.Stop()
		time.Sleep(5 * time.Second)
		m.Start()
		t.Logf("%s: restarted member %d; %d queries (%d errors), %d enrollments (%d errors), RSS %s, heap %s, %d goroutines",
			time.Now().Format(time.TimeOnly), restarts%3, queries.Load(), queryErrors.Load(), enrolled.Load(), enrollErrors.Load(), rss(), heap(), runtime.NumGoroutine())
		restarts++
	}
	<-done
	report := fmt.Sprintf("soak of %s: %d member restarts; %d DNS queries, %d errors; %d enrollments, %d errors;\n"+
		"resident memory %s at the start, %s at the end; live heap %s and %s; goroutines %d at the start, %d at the end",
		duration, restarts, queries.Load(), queryErrors.Load(), enrolled.Load(), enrollErrors.Load(), startRSS, rss(), startHeap, heap(), startG, runtime.NumGoroutine())
	t.Log(report)
	// DEVICEID_SOAK_HEAP=FILE keeps a heap profile of the end, for go tool pprof.
	if file := os.Getenv("DEVICEID_SOAK_HEAP"); file != "" {
		if f, err := os.Create(file); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	if e := firstError.Load(); e != nil {
		t.Errorf("errors during the soak; first: %v", e)
	}
}
