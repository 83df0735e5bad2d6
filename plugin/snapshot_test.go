package deviceid

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runZone runs the zone iot.example of cfg on cli, on clock, until the test ends.
func runZone(t *testing.T, cli *clientv3.Client, cfg *config, clock *testenv.Clock) (*Deviceid, *zone, func()) {
	d := newDeviceid(cfg)
	d.now = clock.Now
	z := d.zones["iot.example."]
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { z.run(ctx, cli); close(done) }()
	var once bool
	stop := func() {
		if !once {
			once = true
			cancel()
			<-done
			if z.keyring != nil {
				z.keyring.close()
			}
		}
	}
	t.Cleanup(stop)
	return d, z, stop
}

// tlsaSig is the inception of the RRSIG of a device's TLSA answer, verified.
func tlsaSig(t *testing.T, d *Deviceid, now time.Time, name string) uint32 {
	t.Helper()
	signedBy(t, d, now, name, dns.TypeTLSA) // verifies every RRSIG
	m, _ := ask(t, d, name, dns.TypeTLSA, true, false)
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.RRSIG); ok {
			return s.Inception
		}
	}
	t.Fatalf("%s: no RRSIG", name)
	return 0
}

// TestSnapshot: a replica keeps its zone's snapshot; one that restarts with etcd out
// of reach serves from it at once, with the signatures it had; one that restarts
// after etcd compacted past it serves it, then loads in full. A file that is not
// right is refused, saying why.
func TestSnapshot(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	ctx := t.Context()
	keyDir, snapDir := t.TempDir(), t.TempDir()
	keyFiles := []string{genKey(t, keyDir, "iot.example.", dns.ECDSAP256SHA256, true), genKey(t, keyDir, "iot.example.", dns.ECDSAP256SHA256, false)}
	newConfig := func(keys ...string) *config {
		c := caddyConfig(t)
		c.validity, c.cds, c.keyFiles = 24*time.Hour, true, keys
		c.snapshotDir, c.snapshotInterval = snapDir, 20*time.Millisecond
		if err := c.loadKeys(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	clock := testenv.NewClock(time.Now())
	for i := range 20 {
		testenv.Put(t, cli, record.DeviceKey("/deviceid", "iot.example", fmt.Sprintf("sensor%d", i)), deviceValue(t))
	}
	d, z, stop := runZone(t, cli, newConfig(keyFiles...), clock)
	<-z.loaded
	const device = "sensor7._device.iot.example."
	inception := tlsaSig(t, d, clock.Now(), device)
	rev := z.current().revision.Load()
	testenv.Eventually(t, "the snapshot written", func() error {
		if got := snapshotRevision.WithLabelValues("iot.example."); testutil.ToFloat64(got) < float64(rev) {
			return fmt.Errorf("snapshot of revision %v, want %d", testutil.ToFloat64(got), rev)
		}
		return nil
	})
	stop()
	good, err := os.ReadFile(z.snapshotFile())
	if err != nil {
		t.Fatal(err)
	}

	// etcd out of reach: served from the snapshot, the same signatures.
	away, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer away.Close()
	d2, z2, stop2 := runZone(t, away, newConfig(keyFiles...), clock)
	select {
	case <-z2.loaded:
	case <-time.After(10 * time.Second):
		t.Fatal("not serving from the snapshot")
	}
	if got := tlsaSig(t, d2, clock.Now(), device); got != inception {
		t.Errorf("after the restart signed at %d, want the snapshot's signature of %d", got, inception)
	}
	if n := z2.current().devices.Load(); n != 20 {
		t.Errorf("%d devices from the snapshot, want 20", n)
	}
	stop2()

	// Bad files: each refused with its reason.
	bad := []struct {
		name, err string
		data      []byte
	}{
		{"truncated", "cut", good[:len(good)-100]},
		{"no checksum", "checksum", good[:len(good)-2]},
		{"a byte flipped", "checksum", flip(good, len(good)/2)},
		{"another zone", "zone", bytes.Replace(good, []byte(`"zone":"iot.example."`), []byte(`"zone":"iot.exampla."`), 1)},
		{"another version", "version", bytes.Replace(good, []byte(`"version":2`), []byte(`"version":1`), 1)},
		{"not a snapshot", "not a deviceid snapshot", []byte("hello")},
		{"empty", "not a deviceid snapshot", nil},
		{"bytes after", "after the checksum", append(slices.Clone(good), 0)},
		// Files whose checksum is right, as a writer with a bug would make them.
		{"a name twice", "more than once", resum(bytes.Replace(good, []byte("sensor1._device"), []byte("sensor2._device"), 1))},
		{"a name of another zone", "not a name below the zone", resum(bytes.Replace(good, []byte("sensor1._device.iot.example."), []byte("sensor1._device.iot.exampla."), 1))},
		{"a name in upper case", "only lower case", resum(bytes.Replace(good, []byte("sensor1._device"), []byte("SENSOR1._device"), 1))},
		{"an entry too long", "length", resum(longFirstEntry(good))},
		{"an escaped dot", "only lower case", resum(bytes.Replace(good, []byte("sensor1._device"), []byte("sensor\\._device"), 1))},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			z := newDeviceid(newConfig(keyFiles...)).zones["iot.example."]
			if err := os.WriteFile(z.snapshotFile(), tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if x, err := z.readSnapshot(); err == nil || !strings.Contains(err.Error(), tt.err) {
				if x != nil {
					t.Logf("read %d names, %d bytes of %d", x.st.len(), len(tt.data), len(good))
				}
				t.Errorf("error %v, want %q", err, tt.err)
			}
		})
	}
	os.WriteFile(z.snapshotFile(), good, 0o600)
	// Signed by other keys than the zone's now: not served.
	other := newDeviceid(newConfig(genKey(t, keyDir, "iot.example.", dns.ECDSAP256SHA256, true))).zones["iot.example."]
	if _, err := other.readSnapshot(); err == nil || !strings.Contains(err.Error(), "other keys") {
		t.Errorf("signed by other keys: %v", err)
	}

	// Another configuration, or a snapshot too old: not used.
	changed := newConfig(keyFiles...)
	changed.ttl = 30
	if _, err := newDeviceid(changed).zones["iot.example."].readSnapshot(); err == nil || !strings.Contains(err.Error(), "another configuration") {
		t.Errorf("with another ttl: %v", err)
	}
	late := newDeviceid(newConfig(keyFiles...))
	late.now = func() time.Time { return clock.Now().Add(25 * time.Hour) }
	if _, err := late.zones["iot.example."].readSnapshot(); err == nil || !strings.Contains(err.Error(), "ago") {
		t.Errorf("a day old, beyond the signatures' validity: %v", err)
	}
	behind := newDeviceid(newConfig(keyFiles...)) // a clock two hours behind the writer's
	behind.now = func() time.Time { return clock.Now().Add(-2 * time.Hour) }
	if _, err := behind.zones["iot.example."].readSnapshot(); err == nil || !strings.Contains(err.Error(), "ahead of this clock") {
		t.Errorf("written ahead of this clock: %v", err)
	}

	// Changes while the replica was down: replayed from the snapshot's revision, with
	// no full load.
	testenv.Put(t, cli, record.DeviceKey("/deviceid", "iot.example", "added"), deviceValue(t))
	if _, err := cli.Delete(ctx, record.DeviceKey("/deviceid", "iot.example", "sensor3")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(z.snapshotFile(), good, 0o600) // of the revision before the changes
	d4, z4, stop4 := runZone(t, cli, newConfig(keyFiles...), clock)
	<-z4.loaded
	fromSnapshot := z4.current()
	testenv.Eventually(t, "the changes made while the replica was down", func() error {
		if m, _ := ask(t, d4, "added._device.iot.example.", dns.TypeTLSA, false, false); len(m.Answer) == 0 {
			return errors.New("added: not served")
		}
		if m, _ := ask(t, d4, "sensor3._device.iot.example.", dns.TypeTLSA, false, false); len(m.Answer) != 0 {
			return errors.New("sensor3: still served")
		}
		return nil
	})
	if z4.current() != fromSnapshot {
		t.Error("loaded in full: the changes were not followed from the snapshot's revision")
	}
	if n := z4.current().devices.Load(); n != 20 {
		t.Errorf("%d devices after the changes, want 20", n)
	}
	stop4()

	// etcd compacted past the snapshot: served, then loaded in full.
	testenv.Put(t, cli, record.DeviceKey("/deviceid", "iot.example", "late"), deviceValue(t))
	resp, _ := cli.Get(ctx, "x")
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(z.snapshotFile(), good, 0o600) // older than the compaction
	d3, z3, stop3 := runZone(t, cli, newConfig(keyFiles...), clock)
	<-z3.loaded
	testenv.Eventually(t, "the device written after the snapshot", func() error {
		if m, _ := ask(t, d3, "late._device.iot.example.", dns.TypeTLSA, false, false); len(m.Answer) == 0 {
			return fmt.Errorf("late: %s", dns.RcodeToString[m.Rcode])
		}
		return nil
	})
	if got := z3.current().devices.Load(); got != 21 {
		t.Errorf("%d devices after the full load, want 21 (20, one added, one deleted, one late)", got)
	}
	testenv.Eventually(t, "a snapshot that names its etcd cluster", func() error {
		if b, _ := os.ReadFile(z3.snapshotFile()); !bytes.Contains(b, []byte(`"cluster_id":`)) {
			return errors.New("no cluster_id")
		}
		return nil
	})
	stop3()

	// Another etcd cluster, further along than the snapshot's revision: its data, not
	// the snapshot's.
	etcd2 := testenv.StartEtcd(t)
	ocli := etcd2.Client()
	for i := range 60 {
		testenv.Put(t, ocli, fmt.Sprintf("/elsewhere/%d", i), "x")
	}
	testenv.Put(t, ocli, record.DeviceKey("/deviceid", "iot.example", "onb"), deviceValue(t))
	d5, _, _ := runZone(t, ocli, newConfig(keyFiles...), clock)
	testenv.Eventually(t, "the other cluster's data", func() error {
		if m, _ := ask(t, d5, "onb._device.iot.example.", dns.TypeTLSA, false, false); m == nil || len(m.Answer) == 0 {
			return errors.New("onb: not served")
		}
		if m, _ := ask(t, d5, device, dns.TypeTLSA, false, false); m == nil || len(m.Answer) != 0 {
			return errors.New("sensor7 of the snapshot still served")
		}
		return nil
	})
}

// resum returns a snapshot with its checksum made right again.
func resum(b []byte) []byte {
	c := slices.Clone(b)
	body := c[:len(c)-4]
	binary.BigEndian.PutUint32(c[len(c)-4:], crc32.Checksum(body, castagnoli))
	return c
}

// longFirstEntry returns a snapshot whose first entry's length runs past its section.
func longFirstEntry(b []byte) []byte {
	c := slices.Clone(b)
	first := len(snapshotMagic) + 4 + int(binary.BigEndian.Uint32(c[len(snapshotMagic):])) + 4 // the header, the section's length
	binary.BigEndian.PutUint32(c[first:], 1<<16)
	return c
}

func flip(b []byte, i int) []byte {
	c := slices.Clone(b)
	c[i] ^= 0xff
	return c
}

// FuzzDecodeSnapshot: a snapshot file of any content is refused or read, never a panic,
// and what is read holds only names of the zone.
func FuzzDecodeSnapshot(f *testing.F) {
	z := snapshotZone(f, 1)
	if _, err := z.writeSnapshot(); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(z.snapshotFile())
	f.Add(good, false, int64(len(good)))
	f.Add(good[:len(good)/2], true, int64(len(good)))
	f.Fuzz(func(t *testing.T, data []byte, fix bool, size int64) {
		if fix && len(data) > 4 {
			data = resum(data) // past the checksum, to the checks of each entry
		}
		x, err := z.decodeSnapshot(bytes.NewReader(data), min(max(size, 0), int64(len(data))))
		if err != nil {
			return
		}
		for i := range x.st.shards {
			x.st.each(i, func(e entry) bool {
				if !dns.IsSubDomain("iot.example.", string(e.owner())) {
					t.Errorf("read a name outside the zone: %q", e.owner())
				}
				return true
			})
		}
		x.st.free()
	})
}

// BenchmarkSnapshot reads and writes the snapshot of a zone of a million devices.
func BenchmarkSnapshot(b *testing.B) {
	z := snapshotZone(b, 1_000_000)
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			if _, err := z.writeSnapshot(); err != nil {
				b.Fatal(err)
			}
		}
	})
	if _, err := z.writeSnapshot(); err != nil {
		b.Fatal(err)
	}
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			y, err := z.readSnapshot()
			if err != nil {
				b.Fatal(err)
			}
			y.st.free()
		}
	})
}

// snapshotZone returns the zone iot.example., signed with a new key, holding n devices
// (unsigned), served, with its snapshot kept in a directory of the test's.
func snapshotZone(tb testing.TB, n int) *zone {
	dir := tb.TempDir()
	c := caddyConfig(tb)
	c.validity, c.keyFiles, c.snapshotDir = 24*time.Hour, []string{genKey(tb, dir, "iot.example.", dns.ECDSAP256SHA256, true)}, dir
	if err := c.loadKeys(); err != nil {
		tb.Fatal(err)
	}
	z := newDeviceid(c).zones["iot.example."]
	x := z.newData(7, z.keys)
	rdata := make([]byte, 35)
	for i := range n {
		rdata[3] = byte(i)
		z.put(x, fmt.Sprintf("sensor%d._device.iot.example.", i), appendRecord(nil, 0, atQuestion(dns.TypeTLSA, dns.ClassINET, 3600, rdata)), true, nil)
	}
	z.swap(x)
	return z
}

// TestSnapshotFullDisk: a disk that fills while a snapshot is written (a file size
// limit, which the kernel enforces as it does a full disk) fails the write; the last
// snapshot stays whole and no temporary file is left. The limit is the process's, so
// the writes run in a child process of this test binary that holds nothing else.
func TestSnapshotFullDisk(t *testing.T) {
	if os.Getenv("DEVICEID_FULL_DISK_CHILD") != "" {
		fullDiskChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSnapshotFullDisk$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "DEVICEID_FULL_DISK_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("file too large")) {
		t.Fatalf("the child: %v\n%s", err, out)
	}
}

func fullDiskChild(t *testing.T) {
	z := snapshotZone(t, 200)
	if _, err := z.writeSnapshot(); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(z.snapshotFile())
	z.put(z.current(), "late._device.iot.example.", appendRecord(nil, 0, atQuestion(dns.TypeTLSA, dns.ClassINET, 3600, make([]byte, 35))), true, nil)
	var limit syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_FSIZE, &limit)
	limit.Cur = uint64(len(good) / 2)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		t.Fatal(err)
	}
	_, err := z.writeSnapshot()
	t.Logf("writing with the disk full: %v", err)
	if err == nil {
		t.Error("a snapshot written past the disk's end")
	}
	if b, _ := os.ReadFile(z.snapshotFile()); !bytes.Equal(b, good) {
		t.Error("a failed write changed the last snapshot")
	}
	if tmps, _ := filepath.Glob(z.snapshotFile() + ".tmp*"); len(tmps) != 0 {
		t.Errorf("left behind: %v", tmps)
	}
	if x, err := z.readSnapshot(); err != nil || x.devices.Load() != 200 {
		t.Errorf("the last snapshot after the failure: %v", err)
	}
}
