package deviceid

// snapshot DIR: each zone's signed index and the etcd revision it reflects, kept in a
// local file, so that a replica that restarts serves at once from it (signatures
// included: no signing storm) and follows etcd from that revision; a full load only
// when etcd has compacted past it, and then the snapshot's data is served meanwhile.
//
// The file: a magic line, a length-prefixed JSON header (version, zone, revision, the
// keys that made the signatures), the entries of the index as the store holds them,
// each length-prefixed, and a CRC-32C of all that. It is written to a temporary file
// that replaces the old one only once complete and synced: a torn write (a crash, a
// full disk) leaves the old one. A file that does not check out whole is not used.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

const (
	snapshotMagic   = "deviceid zone snapshot\n"
	snapshotVersion = 1
	maxSnapshotHdr  = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type snapshotHeader struct {
	Version  int    `json:"version"`
	Zone     string `json:"zone"`
	Revision int64  `json:"revision"`
	// ClusterID is the etcd cluster's the revision is of (0: not known).
	ClusterID uint64    `json:"cluster_id,omitempty"`
	Written   time.Time `json:"written"`
	// SignedBy are the DNSKEYs of the keys whose signatures the entries carry (none:
	// not signed); the snapshot serves only where the same keys sign.
	SignedBy []string `json:"signed_by"`
	// Keys are the zone's key records (keys etcd: the private keys wrapped), to find
	// the same keys before etcd answers.
	Keys map[string]json.RawMessage `json:"keys,omitempty"`
	// Config is what shaped the entries besides the records: the TTL, the prefix,
	// the rendering and the store's layout. Another makes the file unusable.
	Config  string `json:"config"`
	Entries int64  `json:"entries"`
}

// snapshotConfig describes what, besides the records, shaped the zone's entries.
func (z *zone) snapshotConfig() string {
	return fmt.Sprintf("ttl=%d prefix=%s render=%+v layout=%d/%d/%d", z.cfg.ttl, z.cfg.prefix, z.cfg.render, hdrLen, sigSize, maxRRset)
}

// maxSnapshotAge is how old a snapshot may be and still serve: the replica would
// otherwise answer from data that old while etcd is out of reach.
func (z *zone) maxSnapshotAge() time.Duration {
	if z.signer != nil {
		return z.signer.validity
	}
	return 7 * 24 * time.Hour
}

// snapshotFile is where the zone's snapshot is kept.
func (z *zone) snapshotFile() string {
	return filepath.Join(z.cfg.snapshotDir, strings.TrimSuffix(z.origin, ".")+".snapshot")
}

// zskNames names the keys that sign a key set's names.
func zskNames(ks *keySet) []string {
	if ks == nil {
		return nil
	}
	var out []string
	for _, k := range ks.zsk {
		out = append(out, fmt.Sprintf("%d %d %d %s", k.dnskey.Flags, k.dnskey.Protocol, k.dnskey.Algorithm, k.dnskey.PublicKey))
	}
	return out
}

// writeSnapshot writes the zone's data at its revision, and returns the revision. The
// etcd loop waits meanwhile (the entries must be of one revision); queries and
// signing wait only while their shard is copied.
func (z *zone) writeSnapshot() (int64, error) {
	path := z.snapshotFile()
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing
	defer tmp.Close()
	crc := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(tmp, crc), 1<<20)

	z.write.Lock()
	x := z.current()
	if x == nil {
		z.write.Unlock()
		return 0, errors.New("nothing loaded yet")
	}
	h := snapshotHeader{Version: snapshotVersion, Zone: z.origin, Revision: x.revision.Load(), ClusterID: z.clusterID.Load(), Written: z.now().UTC(),
		SignedBy: zskNames(x.apex.Load().keys), Config: z.snapshotConfig(), Entries: int64(x.st.len())}
	if z.keyring != nil {
		h.Keys = map[string]json.RawMessage{}
		for id, rec := range z.keyring.records {
			h.Keys[id], _ = json.Marshal(rec)
		}
	}
	hdr, _ := json.Marshal(h)
	w.WriteString(snapshotMagic)
	binary.Write(w, binary.BigEndian, uint32(len(hdr)))
	w.Write(hdr)
	var n int64
	var shard []byte
	for i := range x.st.shards {
		shard = shard[:0]
		x.st.each(i, func(e entry) bool {
			shard = binary.BigEndian.AppendUint32(shard, uint32(len(e)))
			shard = append(shard, e...)
			n++
			return true
		})
		w.Write(shard)
	}
	replaced := z.current() != x
	z.write.Unlock()
	switch {
	case replaced:
		return 0, errors.New("the zone was loaded again while it was written")
	case n != h.Entries:
		return 0, fmt.Errorf("the index changed while it was written (%d entries, %d counted)", n, h.Entries)
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	if err := binary.Write(tmp, binary.BigEndian, crc.Sum32()); err != nil {
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return 0, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	snapshotRevision.WithLabelValues(z.origin).Set(float64(h.Revision))
	return h.Revision, nil
}

// readSnapshot loads the zone's snapshot, checked whole: the zone's, of this version,
// signed by the keys that sign now, every entry in bounds, the checksum right.
// Signatures that are not valid now (expired, or not yet valid on a clock that is
// behind) are dropped, to be made again.
func (z *zone) readSnapshot() (*zoneData, error) {
	f, err := os.Open(z.snapshotFile())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Whoever can write the file decides what the replica serves while etcd is away.
	for _, name := range []string{z.cfg.snapshotDir, z.snapshotFile()} {
		if info, err := os.Stat(name); err != nil || info.Mode().Perm()&0o022 != 0 {
			return nil, fmt.Errorf("%s is writable by others than its owner: chmod go-w it", name)
		}
	}
	return z.decodeSnapshot(f)
}

// decodeSnapshot reads a snapshot from f.
func (z *zone) decodeSnapshot(f io.Reader) (*zoneData, error) {
	crc := crc32.New(castagnoli)
	br := bufio.NewReaderSize(f, 1<<20)
	r := io.TeeReader(br, crc)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != snapshotMagic {
		return nil, errors.New("not a deviceid snapshot")
	}
	var hlen uint32
	if err := binary.Read(r, binary.BigEndian, &hlen); err != nil || hlen > maxSnapshotHdr {
		return nil, errors.New("the header is cut or too large")
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, errors.New("the header is cut")
	}
	var h snapshotHeader
	if err := json.Unmarshal(hdr, &h); err != nil {
		return nil, fmt.Errorf("the header: %v", err)
	}
	switch {
	case h.Version != snapshotVersion:
		return nil, fmt.Errorf("version %d, not %d", h.Version, snapshotVersion)
	case h.Zone != z.origin:
		return nil, fmt.Errorf("it is zone %q's", h.Zone)
	case h.Revision <= 0 || h.Entries < 0:
		return nil, errors.New("the header has no revision")
	case h.Config != z.snapshotConfig():
		return nil, fmt.Errorf("it was written with another configuration (%s, now %s)", h.Config, z.snapshotConfig())
	case z.now().Sub(h.Written) > z.maxSnapshotAge():
		return nil, fmt.Errorf("it was written at %s, more than %s ago", h.Written.Format(time.RFC3339), z.maxSnapshotAge())
	case h.Written.Sub(z.now()) > time.Hour:
		return nil, fmt.Errorf("it was written at %s, ahead of this clock", h.Written.Format(time.RFC3339))
	}
	ks := z.keys
	var keyring *zoneKeys // the key records of the snapshot, in use once it is accepted
	if z.keyring != nil {
		keyring = newZoneKeys()
		records := map[string]*record.ZoneKey{}
		for _, id := range slices.Sorted(maps.Keys(h.Keys)) {
			rec, err := record.ParseZoneKey(z.origin, h.Keys[id])
			if err != nil {
				return nil, fmt.Errorf("key record %s: %v", id, err)
			}
			records[id] = rec
		}
		keyring.setRecords(z.origin, records)
		var err error
		if ks, err = z.keySetAt(keyring, z.now()); err != nil {
			keyring.close()
			return nil, fmt.Errorf("its keys: %v", err)
		}
	}
	refuse := func(err error) (*zoneData, error) {
		if keyring != nil {
			keyring.close()
		}
		return nil, err
	}
	if !slices.Equal(zskNames(ks), h.SignedBy) {
		return refuse(errors.New("it is signed by other keys than the zone's now"))
	}
	now := uint32(z.now().Unix())
	x := z.newData(h.Revision, ks)
	bad := func(err error) (*zoneData, error) {
		x.st.free()
		return refuse(err)
	}
	buf := make([]byte, hdrLen+255+maxRRset+2*x.st.nz*sigSize)
	var devices int64
	for i := int64(0); i < h.Entries; i++ {
		var n uint32
		if err := binary.Read(r, binary.BigEndian, &n); err != nil {
			return bad(fmt.Errorf("cut after %d of %d entries", i, h.Entries))
		}
		if n < hdrLen || int(n) > len(buf) {
			return bad(fmt.Errorf("entry %d has a length of %d", i, n))
		}
		e := entry(buf[:n])
		if _, err := io.ReadFull(r, e); err != nil {
			return bad(fmt.Errorf("cut in entry %d of %d", i, h.Entries))
		}
		if err := z.checkEntry(x, e); err != nil {
			return bad(fmt.Errorf("entry %d: %v", i, err))
		}
		if e.flags()&flagDevice != 0 {
			devices++
		}
		if inc, exp := e.signed(); inc != 0 && (now < inc || now >= exp) {
			e.setSigs(entrySigs{sigs: make([]byte, 2*x.st.nz*sigSize)}) // made again
		}
		x.st.set(string(e.owner()), e)
	}
	var sum uint32
	if err := binary.Read(br, binary.BigEndian, &sum); err != nil || sum != crc.Sum32() {
		return bad(errors.New("the checksum does not match: the file is damaged"))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad(errors.New("bytes after the checksum"))
	}
	if keyring != nil {
		z.keyring.close()
		z.keyring = keyring
	}
	x.devices.Store(devices)
	x.clusterID = h.ClusterID
	z.setSerial(x, h.Revision, z.now())
	return x, nil
}

// checkEntry checks an entry read from a snapshot as the store will read it: its
// length, a name of the zone below the apex in the store's form, seen once, flags that
// go with its records, and records that are whole.
func (z *zone) checkEntry(x *zoneData, e entry) error {
	if hdrLen+int(e[hdrOwner]) > len(e) || entryLen(e, x.st.nz) != len(e) {
		return errors.New("its lengths do not add up")
	}
	owner := string(e.owner())
	if owner != strings.ToLower(owner) || !dns.IsFqdn(owner) || owner == z.origin || !dns.IsSubDomain(z.origin, owner) {
		return fmt.Errorf("%q is not a name below the zone", owner)
	}
	if _, ok := dns.IsDomainName(owner); !ok {
		return fmt.Errorf("%q is not a domain name", owner)
	}
	if x.st.view(owner, func(entry) {}) {
		return fmt.Errorf("%q twice", owner)
	}
	f := e.flags()
	if f&^(flagRecord|flagDevice) != 0 || f&flagDevice != 0 && f&flagRecord == 0 || (f&flagRecord != 0) != (e.rrLen() > 0) || f&flagRecord == 0 && e.below() == 0 {
		return fmt.Errorf("%q: flags %d do not go with its records", owner, f)
	}
	for rr := e.rrset(); len(rr) > 0; {
		if len(rr) < 20 || len(rr) < 20+int(binary.BigEndian.Uint16(rr[18:])) {
			return fmt.Errorf("%q: a record is cut", owner)
		}
		rr = rr[20+int(binary.BigEndian.Uint16(rr[18:])):]
	}
	return nil
}

// keepSnapshot writes the zone's snapshot every interval while its data changed (a
// change, a new load, the first signing pass done, the cluster's id learnt), and at least every eighth of the
// signature validity, so that the signatures it holds stay fresh; until done is closed.
func (z *zone) keepSnapshot(done <-chan struct{}) {
	// Temporary files of a write that a crash cut short.
	if old, err := filepath.Glob(z.snapshotFile() + ".tmp*"); err == nil {
		for _, f := range old {
			os.Remove(f)
		}
	}
	t := time.NewTicker(z.cfg.snapshotInterval)
	defer t.Stop()
	var written int64
	var of *zoneData
	var signed bool // the first signing pass was done when it was written
	var cluster uint64
	var at time.Time
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		x := z.current()
		if x == nil || x == of && x.revision.Load() == written && x.passDone.Load() == signed && z.clusterID.Load() == cluster && time.Since(at) < z.maxSnapshotAge()/8 {
			continue
		}
		pass, id := x.passDone.Load(), z.clusterID.Load()
		rev, err := z.writeSnapshot()
		if err != nil {
			log.Errorf("zone %s: writing the snapshot %s: %v (the last one stays)", z.origin, z.snapshotFile(), err)
			snapshotFailures.WithLabelValues(z.origin).Inc()
			continue
		}
		written, of, signed, cluster, at = rev, x, pass, id, time.Now()
	}
}
