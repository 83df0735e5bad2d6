// Package embedetcd starts an etcd member inside the process, for the dev stack and
// the tests (through internal/testenv).
package embedetcd

import (
	"errors"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Config says where the embedded etcd keeps its data and listens.
type Config struct {
	Name      string // member name; "default" when empty
	Dir       string // data directory; reused on restart
	ClientURL string // http://127.0.0.1:PORT, or https:// with the TLS files below
	PeerURL   string // http://127.0.0.1:PORT
	// CompactionRetention, when set, compacts the history older than it (periodic
	// mode, e.g. "1h"), as a production cluster does.
	CompactionRetention string
	// QuotaBytes raises etcd's backend quota (2 GiB by default); ten million device
	// records need about 8 GiB.
	QuotaBytes int64
	// SnapshotCount, when set, is how many entries the raft log holds before a snapshot
	// truncates it (etcd's default: 10,000, with 5,000 more kept for slow followers;
	// SnapshotCount/2 here): members in one process share its heap.
	SnapshotCount uint64
	// InitialCluster lists every member of a new cluster as name=peerURL,...; empty:
	// a cluster of this member alone.
	InitialCluster string

	// Client TLS: the server's certificate and key, and the CA that client
	// certificates must chain to (client certificate authentication is then required).
	CertFile, KeyFile, ClientCAFile string
}

// Start runs etcd and waits until it is ready to serve.
func Start(c Config) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = c.Dir
	cfg.LogLevel = "panic" // etcd's own logs drown the caller's
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	if c.Name != "" {
		cfg.Name = c.Name
	}
	if c.QuotaBytes != 0 {
		cfg.QuotaBackendBytes = c.QuotaBytes
	}
	if c.SnapshotCount != 0 {
		cfg.SnapshotCount, cfg.SnapshotCatchUpEntries = c.SnapshotCount, c.SnapshotCount/2
	}
	if c.CompactionRetention != "" {
		cfg.AutoCompactionMode, cfg.AutoCompactionRetention = "periodic", c.CompactionRetention
	}
	cfg.InitialCluster = cfg.Name + "=" + c.PeerURL
	if c.InitialCluster != "" {
		cfg.InitialCluster = c.InitialCluster
	}
	if c.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = c.CertFile
		cfg.ClientTLSInfo.KeyFile = c.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = c.ClientCAFile
		cfg.ClientTLSInfo.ClientCertAuth = c.ClientCAFile != ""
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd was not ready within 30s")
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
