// Package testenv is the one place for what the tests start and make: etcd (a
// single node that can be stopped and started again, or a cluster), a test PKI,
// CSRs, CoreDNS, and polling. Every test package uses it; nothing shipped does.
package testenv

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/embedetcd"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Etcd is one etcd member that a test can stop and start again on its ports and data.
type Etcd struct {
	t   testing.TB
	Cfg embedetcd.Config
	e   *embed.Etcd
}

// StartEtcd runs a single-node etcd on free loopback ports and stops it when the test ends;
// opts may change its configuration (a larger quota, say).
// A free port can be taken by another test process between FreePort and etcd's bind:
// then it tries other ports.
func StartEtcd(t testing.TB, opts ...func(*embedetcd.Config)) *Etcd {
	t.Helper()
	for attempt := 0; ; attempt++ {
		s := &Etcd{t: t, Cfg: embedetcd.Config{
			Dir:       t.TempDir(),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		}}
		for _, o := range opts {
			o(&s.Cfg)
		}
		e, err := embedetcd.Start(s.Cfg)
		if err != nil && attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			continue
		}
		if err != nil {
			t.Fatalf("starting etcd: %v", err)
		}
		s.e = e
		t.Cleanup(s.Stop)
		return s
	}
}

// URL is the member's client URL.
func (s *Etcd) URL() string { return s.Cfg.ClientURL }

// Start starts the member again after Stop, on the same ports and data.
func (s *Etcd) Start() {
	s.t.Helper()
	e, err := embedetcd.Start(s.Cfg)
	if err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	s.e = e
}

// Stop stops the member; stopping a stopped member does nothing.
func (s *Etcd) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Client returns a client of the member, closed when the test ends.
func (s *Etcd) Client() *clientv3.Client { return Client(s.t, s.URL()) }

// Client returns an etcd client of endpoints, closed when the test ends.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Cluster is an etcd cluster of separate members, each with its own data directory
// and ports, in this process.
type Cluster struct {
	Members []*Etcd
}

// StartCluster runs an n-member cluster on loopback and stops it when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := layout(t, n, embedetcd.Config{})
	c.start(t)
	return c
}

// layout places n members on free loopback ports, each with its own data directory,
// clients served over TLS with tls's files when it names a certificate.
func layout(t testing.TB, n int, tls embedetcd.Config) *Cluster {
	t.Helper()
	scheme := "http"
	if tls.CertFile != "" {
		scheme = "https"
	}
	c := &Cluster{}
	var initial []string
	for i := range n {
		cfg := tls
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(t.TempDir(), "data")
		cfg.ClientURL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, FreePort(t))
		cfg.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		initial = append(initial, cfg.Name+"="+cfg.PeerURL)
		c.Members = append(c.Members, &Etcd{t: t, Cfg: cfg})
	}
	for _, m := range c.Members {
		m.Cfg.InitialCluster = strings.Join(initial, ",")
	}
	return c
}

// start starts every member at once (each waits for a quorum) and stops them when
// the test ends.
func (c *Cluster) start(t testing.TB) {
	t.Helper()
	errs := make(chan error, len(c.Members))
	for _, m := range c.Members {
		go func() {
			e, err := embedetcd.Start(m.Cfg)
			m.e = e
			errs <- err
		}()
	}
	for range c.Members {
		if err := <-errs; err != nil {
			t.Fatalf("starting the etcd cluster: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Stop()
		}
	})
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.URL())
	}
	return out
}

// Leader returns the index of the member that leads, or -1.
func (c *Cluster) Leader() int {
	for i, m := range c.Members {
		if m.e != nil && m.e.Server.Leader() == m.e.Server.MemberID() {
			return i
		}
	}
	return -1
}

// Put writes key=value through cli, failing the test on error.
func Put(t testing.TB, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := embedetcd.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// RestoreCluster restores an etcd snapshot file into a new n-member cluster, as
// 'etcdutl snapshot restore' does for each member, starts it, and stops it when the
// test ends.
func RestoreCluster(t testing.TB, n int, snapshotPath string) *Cluster {
	t.Helper()
	c := layout(t, n, embedetcd.Config{})
	for _, m := range c.Members {
		err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
			SnapshotPath: snapshotPath, Name: m.Cfg.Name, OutputDataDir: m.Cfg.Dir,
			PeerURLs: []string{m.Cfg.PeerURL}, InitialCluster: m.Cfg.InitialCluster, InitialClusterToken: "restored",
		})
		if err != nil {
			t.Fatalf("restoring the snapshot for %s: %v", m.Cfg.Name, err)
		}
	}
	c.start(t)
	return c
}

// Snapshot saves a snapshot of the cluster's data through cli, as 'etcdctl snapshot
// save' does, and returns the file.
func Snapshot(t testing.TB, cli *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	file := filepath.Join(t.TempDir(), "snapshot.db")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return file
}

// Revision returns etcd's current revision, to tell that a request changed nothing.
func Revision(t testing.TB, c *clientv3.Client) int64 {
	t.Helper()
	resp, err := c.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}
