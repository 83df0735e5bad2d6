package deviceid

// snapshot DIR: each zone's signed index and the etcd revision it reflects, kept in a
// local file, so that a replica that restarts serves at once from it (signatures
// included: no signing storm) and follows etcd from that revision; a full load only
// when etcd has compacted past it, and then the snapshot's data is served meanwhile.
//
// The file: a magic line, a length-prefixed JSON header (version, zone, revision, the
// keys that made the signatures), sections of at most 8 MiB of the index's entries as
// the store holds them, each entry and section length-prefixed, an empty section, and
// a CRC-32C of all that. It is written to a temporary file
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
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

const (
	snapshotMagic   = "deviceid zone snapshot\n"
	snapshotVersion = 2
	maxSnapshotHdr  = 1 << 20
	// snapshotSection bounds a section of entries: the unit read and checked at once.
	snapshotSection = 8 << 20
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
// entries are copied out under the zone's write lock (they must be of one revision),
// into memory outside the heap as large as the zone's, and written to the file after
// it: changes from etcd wait for a copy, not for the disk. Queries and signing wait
// only while their shard is copied.
func (z *zone) writeSnapshot() (int64, error) {
	path := z.snapshotFile()
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing
	defer tmp.Close()
	var sections [][]byte
	defer func() {
		for _, b := range sections {
			freeChunk(b)
		}
	}()

	z.write.Lock()
	paused := time.Now()
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
	var n int64
	var nomem error
	for i := range x.st.shards {
		x.st.each(i, func(e entry) bool {
			if len(sections) == 0 || len(sections[len(sections)-1])+4+len(e) > snapshotSection {
				b, err := tryChunk(snapshotSection, true)
				if err != nil {
					nomem = err
					return false
				}
				sections = append(sections, b[:0])
			}
			b := &sections[len(sections)-1]
			*b = append(binary.BigEndian.AppendUint32(*b, uint32(len(e))), e...)
			n++
			return true
		})
	}
	replaced := z.current() != x
	z.write.Unlock()
	snapshotPause.WithLabelValues(z.origin).Set(time.Since(paused).Seconds())
	switch {
	case nomem != nil:
		return 0, fmt.Errorf("no memory to copy the index into: %v", nomem)
	case replaced:
		return 0, errors.New("the zone was loaded again while it was written")
	case n != h.Entries:
		return 0, fmt.Errorf("the index changed while it was written (%d entries, %d counted)", n, h.Entries)
	}

	crc := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(tmp, crc), 1<<20)
	hdr, _ := json.Marshal(h)
	w.WriteString(snapshotMagic)
	binary.Write(w, binary.BigEndian, uint32(len(hdr)))
	w.Write(hdr)
	for _, b := range sections {
		binary.Write(w, binary.BigEndian, uint32(len(b)))
		w.Write(b)
	}
	binary.Write(w, binary.BigEndian, uint32(0)) // no more sections
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
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return z.decodeSnapshot(f, storedSize(info))
}

// decodeSnapshot reads a snapshot of about size bytes from f. Its sections are read in
// turn and their entries put into the index by as many workers as there are CPUs.
func (z *zone) decodeSnapshot(f io.Reader, size int64) (*zoneData, error) {
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
	x := z.newData(h.Revision, ks)
	// The file's size, bounded by what the header claims, lays out the store: a few
	// large chunks and maps made once. (The header is not checked yet: a size is
	// believed only as far as the file bears it out.)
	smallest := int64(4 + hdrLen + 2 + len(z.origin) + 2*x.st.nz*sigSize)
	x.st.reserve(size, min(h.Entries, size/smallest))

	// Sections are read in turn and handed to the workers; a few buffers go around.
	workers := min(runtime.GOMAXPROCS(0), 8)
	free := make(chan []byte, workers+1)
	for range workers + 1 {
		free <- nil
	}
	work := make(chan []byte)
	var entries, devices atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	counts := make([]belowCounts, workers)
	for w := range workers {
		counts[w] = belowCounts{stored: map[string]uint32{}, made: map[string]uint32{}}
		wg.Go(func() {
			for b := range work {
				if err := z.readSection(x, b, &entries, &devices, counts[w]); err != nil {
					failed.CompareAndSwap(nil, &err)
				}
				free <- b
			}
		})
	}
	var err error
	for i := 0; failed.Load() == nil; i++ {
		var n uint32
		if err = binary.Read(r, binary.BigEndian, &n); err != nil {
			err = fmt.Errorf("cut after %d sections", i)
			break
		}
		if n == 0 {
			break
		}
		if n > snapshotSection {
			err = fmt.Errorf("section %d has a length of %d", i, n)
			break
		}
		b := <-free
		if cap(b) < int(n) {
			b = make([]byte, n)
		}
		b = b[:n]
		if _, err = io.ReadFull(r, b); err != nil {
			err = fmt.Errorf("cut in section %d", i)
			break
		}
		work <- b
	}
	close(work)
	wg.Wait()
	bad := func(err error) (*zoneData, error) {
		x.st.free()
		return refuse(err)
	}
	if p := failed.Load(); p != nil {
		return bad(*p)
	}
	if err != nil {
		return bad(err)
	}
	var sum uint32
	if err := binary.Read(br, binary.BigEndian, &sum); err != nil || sum != crc.Sum32() {
		return bad(errors.New("the checksum does not match: the file is damaged"))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad(errors.New("bytes after the checksum"))
	}
	switch n := int64(x.st.len()); {
	case entries.Load() != h.Entries:
		return bad(fmt.Errorf("%d entries, and its header says %d", entries.Load(), h.Entries))
	case n != h.Entries:
		return bad(fmt.Errorf("%d of its names are in it more than once", h.Entries-n))
	}
	if err := checkBelow(counts); err != nil {
		return bad(err)
	}
	if keyring != nil {
		z.keyring.close()
		z.keyring = keyring
	}
	x.devices.Store(devices.Load())
	x.clusterID = h.ClusterID
	z.setSerial(x, h.Revision, z.now())
	return x, nil
}

// belowCounts are, for the names with records below them, the counts their entries
// hold and the counts the names read make.
type belowCounts struct{ stored, made map[string]uint32 }

// checkBelow checks that every entry's count of the records below it is what the names
// read make: a wrong count would deny names that exist, or keep names that do not.
func checkBelow(counts []belowCounts) error {
	stored, made := map[string]uint32{}, map[string]uint32{}
	for _, c := range counts {
		for name, n := range c.stored {
			stored[name] += n
		}
		for name, n := range c.made {
			made[name] += n
		}
	}
	for name, n := range made {
		if stored[name] != n {
			return fmt.Errorf("%q counts %d names with records below it, and there are %d", name, stored[name], n)
		}
	}
	for name, n := range stored {
		if made[name] != n {
			return fmt.Errorf("%q counts %d names with records below it, and there are %d", name, n, made[name])
		}
	}
	return nil
}

// readSection checks the entries of a snapshot's section and puts them into x; it
// counts them, the devices among them, and the names below each name. Signatures
// that are not valid now are dropped, to be made again.
func (z *zone) readSection(x *zoneData, b []byte, entries, devices *atomic.Int64, below belowCounts) error {
	now := uint32(z.now().Unix())
	unsigned := make([]byte, 2*x.st.nz*sigSize)
	for len(b) > 0 {
		if len(b) < 4 {
			return errors.New("a section ends in an entry's length")
		}
		n := binary.BigEndian.Uint32(b)
		if n < hdrLen || int64(n) > int64(len(b)-4) {
			return fmt.Errorf("an entry has a length of %d", n)
		}
		e := entry(b[4 : 4+n : 4+n])
		b = b[4+n:]
		owner, err := z.checkEntry(x, e)
		if err != nil {
			return err
		}
		if e.flags()&flagDevice != 0 {
			devices.Add(1)
		}
		if n := e.below(); n > 0 {
			below.stored[owner] = n
		}
		if e.flags()&flagRecord != 0 {
			z.ancestors(owner, func(a string) { below.made[a]++ })
		}
		if inc, exp := e.signed(); inc != 0 && (now < inc || now >= exp) {
			e.setSigs(entrySigs{sigs: unsigned}) // made again
		}
		x.st.set(owner, e)
		entries.Add(1)
	}
	return nil
}

// checkEntry checks an entry read from a snapshot as the store will read it: its
// length, a name of the zone below the apex in the store's form, flags that go with
// its records, and records that are whole. It returns the entry's owner.
func (z *zone) checkEntry(x *zoneData, e entry) (string, error) {
	if hdrLen+int(e[hdrOwner]) > len(e) || entryLen(e, x.st.nz) != len(e) {
		return "", errors.New("an entry's lengths do not add up")
	}
	if e.rrLen() > maxRRset {
		return "", fmt.Errorf("an RRset of %d octets, more than %d", e.rrLen(), maxRRset)
	}
	owner := string(e.owner())
	// The names etcd's records make (record.DeviceName, ServiceName): lower case
	// letters, digits, '-', '_' and dots; no escapes, so a dot is a dot.
	for i := range len(owner) {
		if c := owner[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return "", fmt.Errorf("%q has %q: only lower case letters, digits, '-', '_' and '.' are in names", owner, c)
		}
	}
	if len(owner) <= len(z.origin) || !strings.HasSuffix(owner, z.origin) || owner[len(owner)-len(z.origin)-1] != '.' {
		return "", fmt.Errorf("%q is not a name below the zone", owner)
	}
	if _, ok := dns.IsDomainName(owner); !ok {
		return "", fmt.Errorf("%q is not a domain name", owner)
	}
	f := e.flags()
	if f&^(flagRecord|flagDevice) != 0 || f&flagDevice != 0 && f&flagRecord == 0 || (f&flagRecord != 0) != (e.rrLen() > 0) || f&flagRecord == 0 && e.below() == 0 {
		return "", fmt.Errorf("%q: flags %d do not go with its records", owner, f)
	}
	for rr := e.rrset(); len(rr) > 0; {
		if len(rr) < 20 || len(rr) < 20+int(binary.BigEndian.Uint16(rr[18:])) {
			return "", fmt.Errorf("%q: a record is cut", owner)
		}
		rr = rr[20+int(binary.BigEndian.Uint16(rr[18:])):]
	}
	return owner, nil
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
