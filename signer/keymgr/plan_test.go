package keymgr

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

const zone = "iot.example."

// newRecord makes the record of a new key of role and algorithm, with a real DNSKEY.
func newRecord(t *testing.T, role string, alg uint8) *record.ZoneKey {
	t.Helper()
	m := &Manager{Registry: &registry.Registry{Zone: zone}, KEK: testKEK}
	rec, err := m.makeKey("k", role, alg)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

var testKEK, _ = kek.New(make([]byte, 32))

// moment is what the zone and its parent served at one time.
type moment struct {
	at                       time.Time
	dnskey, signsNames, ksks []string // key ids
	ds                       []string // ids of the keys whose DS the parent serves
}

// sim runs the plan every tick from start for d, applying its steps as the manager
// does, with a parent that makes its DS set what the zone's CDS say after lag
// (frozen: never), and records what was served.
type sim struct {
	t       *testing.T
	p       Policy
	keys    []Key
	parent  map[string]bool // ids whose DS the parent serves
	lag     time.Duration
	frozen  bool
	history []moment
	n       int
	events  []string
	waited  []string
	// log, when set, is told each step with its time.
	log func(at time.Time, st Step)
}

func (s *sim) dsSet() Parent {
	var ds []*dns.DS
	for _, k := range s.keys {
		if s.parent[k.ID] {
			dk, _ := k.Rec.PublicKey(zone)
			ds = append(ds, dk.ToDS(dns.SHA256))
		}
	}
	return Parent{Known: true, DS: ds}
}

func (s *sim) run(start time.Time, d, tick time.Duration) {
	var cdsSince time.Time
	var lastCDS string
	for now := start; now.Before(start.Add(d)); now = now.Add(tick) {
		steps, waiting, err := Plan(s.p, s.keys, s.dsSet(), now, nil, zone, func(role string) string { s.n++; return fmt.Sprintf("%s-%d", role, s.n) })
		if err != nil {
			s.t.Fatal(err)
		}
		s.waited = append(s.waited, waiting...)
		for _, st := range steps {
			s.events = append(s.events, st.Why)
			if s.log != nil {
				s.log(now, st)
			}
			switch {
			case st.New != "":
				rec := newRecord(s.t, st.New, s.p.Algorithm)
				rec.Timeline = st.Timeline
				s.keys = append(s.keys, Key{ID: st.ID, Rec: rec})
			case st.Delete:
				s.keys = slices.DeleteFunc(s.keys, func(k Key) bool { return k.ID == st.ID })
			default:
				i := slices.IndexFunc(s.keys, func(k Key) bool { return k.ID == st.ID })
				s.keys[i].Rec.Timeline = st.Timeline
			}
		}
		for _, k := range s.keys {
			if err := k.Rec.Validate(zone); err != nil {
				s.t.Fatalf("%s: key %s: %v", now, k.ID, err)
			}
		}
		// The parent's scanner follows the CDS after lag.
		var cds []string
		for _, k := range s.keys {
			if k.Rec.Syncs(now) {
				cds = append(cds, k.ID)
			}
		}
		if c := strings.Join(cds, ","); c != lastCDS {
			lastCDS, cdsSince = c, now
		}
		if !s.frozen && len(cds) > 0 && !now.Before(cdsSince.Add(s.lag)) {
			s.parent = map[string]bool{}
			for _, id := range cds {
				s.parent[id] = true
			}
		}
		m := moment{at: now}
		for _, k := range s.keys {
			if k.Rec.Published(now) {
				m.dnskey = append(m.dnskey, k.ID)
			}
			if k.Rec.Signs(now, s.p.DNSKEYTTL.D()) {
				if k.Rec.SEP() {
					m.ksks = append(m.ksks, k.ID)
				}
				if k.Rec.Role != record.RoleKSK {
					m.signsNames = append(m.signsNames, k.ID)
				}
			}
			if s.parent[k.ID] {
				m.ds = append(m.ds, k.ID)
			}
		}
		if len(m.signsNames) == 0 { // the plugin has the KSK sign the names
			m.signsNames = m.ksks
		}
		s.history = append(s.history, m)
		// What a validator can still hold: the longest TTL back.
		keep := max(s.p.DSTTL.D(), s.p.DNSKEYTTL.D(), s.p.ZoneMaxTTL.D())
		s.history = slices.DeleteFunc(s.history, func(h moment) bool { return now.Sub(h.at) > keep })
		s.check(m)
	}
}

// check asserts what a validator needs at m, with what it may hold from before: a DS
// set from up to the DS TTL ago matches a key that signs the DNSKEY RRset now; a
// DNSKEY RRset from up to its TTL ago holds a key that signs the names now; and a key
// that signed names up to the zone's largest TTL ago is still published.
func (s *sim) check(m moment) {
	if len(m.ksks) == 0 {
		s.t.Fatalf("%s: no key signs the DNSKEY RRset", m.at)
	}
	for _, h := range s.history {
		age := m.at.Sub(h.at)
		if age <= s.p.DSTTL.D() && len(h.ds) > 0 && !overlaps(h.ds, m.ksks) {
			s.t.Fatalf("%s: a DS set of %s (%v) matches no key signing the DNSKEY RRset (%v)", m.at, h.at, h.ds, m.ksks)
		}
		if age <= s.p.DNSKEYTTL.D() && !overlaps(h.dnskey, m.signsNames) {
			s.t.Fatalf("%s: a DNSKEY RRset of %s (%v) holds no key signing the names (%v)", m.at, h.at, h.dnskey, m.signsNames)
		}
		if age <= s.p.ZoneMaxTTL.D() {
			for _, id := range h.signsNames {
				if !slices.Contains(m.dnskey, id) {
					s.t.Fatalf("%s: key %s signed names at %s and is no longer published (%v)", m.at, id, h.at, m.dnskey)
				}
			}
		}
	}
}

func overlaps(a, b []string) bool {
	return slices.ContainsFunc(a, func(x string) bool { return slices.Contains(b, x) })
}

func count(events []string, prefix string) int {
	n := 0
	for _, e := range events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

var fast = Policy{Algorithm: dns.ECDSAP256SHA256, ZSKLifetime: Duration(time.Hour), KSKLifetime: Duration(4 * time.Hour),
	DNSKEYTTL: Duration(time.Minute), ZoneMaxTTL: Duration(2 * time.Minute), DSTTL: Duration(5 * time.Minute), Propagation: Duration(10 * time.Second)}

// TestPlanRollsUnattended: from nothing, ten hours of a fast policy roll the ZSK every
// hour and the KSK every four, and no validator ever lacks what it needs.
func TestPlanRollsUnattended(t *testing.T) {
	s := &sim{t: t, p: fast, lag: 3 * time.Minute}
	s.run(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), 10*time.Hour, 10*time.Second)
	if n := count(s.events, "zsk rollover (pre-publication)") / 2; n < 8 {
		t.Errorf("%d ZSK rollovers in ten hours, want about 10: %v", n, s.events)
	}
	if n := count(s.events, "ksk rollover (double-DS)"); n != 2 {
		t.Errorf("%d KSK rollovers in ten hours, want 2", n)
	}
	if len(s.keys) > 5 {
		t.Errorf("%d key records left: the old ones are not cleaned up", len(s.keys))
	}
}

func TestPlanCSK(t *testing.T) {
	p := fast
	p.CSK, p.ZSKLifetime = true, 0
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, p: p, lag: time.Minute}
	s.run(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), 9*time.Hour, 10*time.Second)
	if n := count(s.events, "csk rollover (double-DS)"); n != 2 {
		t.Errorf("%d CSK rollovers, want 2: %v", n, s.events)
	}
}

// TestPlanParentNeverPublishes: a parent that never takes the new DS holds the KSK
// rollover where it is, says why, and breaks nothing; the ZSK keeps rolling.
func TestPlanParentNeverPublishes(t *testing.T) {
	s := &sim{t: t, p: fast, lag: time.Minute}
	start := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	s.run(start, 10*time.Minute, 10*time.Second) // the first DS reaches the parent
	s.frozen = true
	s.run(start.Add(10*time.Minute), 8*time.Hour, 10*time.Second)
	if n := count(s.events, "the new key's DS has been at the parent"); n != 0 {
		t.Errorf("the KSK rollover went past the DS step %d times without the DS", n)
	}
	if len(s.waited) == 0 || !strings.Contains(s.waited[len(s.waited)-1], "does not serve its DS") {
		t.Errorf("waiting: %v", s.waited[max(0, len(s.waited)-1):])
	}
	if n := count(s.events, "zsk rollover (pre-publication)") / 2; n < 6 {
		t.Errorf("%d ZSK rollovers meanwhile", n)
	}
	// An unknown parent (unreachable) holds it too.
	steps, waiting, _ := Plan(fast, s.keys, Parent{Why: "ns1.example: timeout"}, start.Add(9*time.Hour), nil, zone, func(string) string { return "x" })
	for _, st := range steps {
		if strings.Contains(st.Why, "DS has been at the parent") {
			t.Errorf("a step past the DS with the parent unknown: %v", st)
		}
	}
	if !slices.ContainsFunc(waiting, func(w string) bool { return strings.Contains(w, "ns1.example: timeout") }) {
		t.Errorf("waiting with the parent unknown: %v", waiting)
	}
}

// TestPlanRequests: an operator's roll starts a rollover now; one asked while another
// of the same role is under way, or of a role the policy has not, is refused.
func TestPlanRequests(t *testing.T) {
	s := &sim{t: t, p: fast, lag: time.Minute}
	start := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	s.run(start, 10*time.Minute, 10*time.Second)
	now := start.Add(10 * time.Minute)
	id := func(string) string { return "new" }
	steps, _, err := Plan(fast, s.keys, s.dsSet(), now, &Request{Roll: record.RoleZSK}, zone, id)
	if err != nil || len(steps) != 2 || steps[0].New != record.RoleZSK {
		t.Fatalf("roll zsk: %v %v", steps, err)
	}
	s.keys = append(s.keys, Key{ID: "new", Rec: newRecord(t, record.RoleZSK, dns.ECDSAP256SHA256)})
	s.keys[len(s.keys)-1].Rec.Timeline = steps[0].Timeline
	if _, _, err := Plan(fast, s.keys, s.dsSet(), now, &Request{Roll: record.RoleZSK}, zone, id); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Errorf("a second zsk roll during one: %v", err)
	}
	if _, _, err := Plan(fast, s.keys, s.dsSet(), now, &Request{Roll: record.RoleCSK}, zone, id); err == nil || !strings.Contains(err.Error(), "no csk") {
		t.Errorf("a csk roll in a ksk/zsk zone: %v", err)
	}
	steps, _, err = Plan(fast, s.keys, s.dsSet(), now, &Request{Roll: record.RoleKSK}, zone, id)
	if err != nil || len(steps) == 0 || steps[0].New != record.RoleKSK {
		t.Errorf("roll ksk: %v %v", steps, err)
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := DefaultPolicy.Validate(); err != nil {
		t.Fatalf("the default policy: %v", err)
	}
	for _, tt := range []struct {
		change func(p *Policy)
		err    string
	}{
		{func(p *Policy) { p.Algorithm = 8 }, "algorithm"},
		{func(p *Policy) { p.DNSKEYTTL = 0 }, "dnskey_ttl"},
		{func(p *Policy) { p.DSTTL = Duration(30 * 24 * time.Hour) }, "ds_ttl"},
		{func(p *Policy) { p.Propagation = -1 }, "propagation"},
		{func(p *Policy) { p.ZSKLifetime = Duration(10 * time.Minute) }, "zsk_lifetime"},
		{func(p *Policy) { p.KSKLifetime = Duration(time.Hour) }, "ksk_lifetime"},
		{func(p *Policy) { p.CSK = true }, "no zsk_lifetime"},
	} {
		p := DefaultPolicy
		tt.change(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%+v: %v, want %q", p, err, tt.err)
		}
	}
}

// TestPlanAlgorithmRollover: a policy that changes the algorithm (ECDSA P-256 to
// Ed25519 and back) rolls every key to it unattended, the DS too, and no validator
// ever lacks what it needs.
func TestPlanAlgorithmRollover(t *testing.T) {
	for _, csk := range []bool{false, true} {
		p := fast
		if csk {
			p.CSK, p.ZSKLifetime = true, 0
		}
		p.KSKLifetime = 0 // only the algorithm rollovers
		s := &sim{t: t, p: p, lag: 2 * time.Minute}
		start := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
		s.run(start, 30*time.Minute, 10*time.Second)
		for i, alg := range []uint8{dns.ED25519, dns.ECDSAP256SHA256} {
			s.p.Algorithm = alg
			s.run(start.Add(time.Duration(1+i)*time.Hour), time.Hour, 10*time.Second)
			for _, k := range s.keys {
				if dk, _ := k.Rec.PublicKey(zone); dk.Algorithm != alg {
					t.Errorf("csk %v: key %s of algorithm %d left after the rollover to %d", csk, k.ID, dk.Algorithm, alg)
				}
			}
		}
		if n := count(s.events, "algorithm rollover: the old algorithm's key stops signing"); n < 2 {
			t.Errorf("csk %v: %d old keys retired by algorithm rollovers: %v", csk, n, s.events)
		}
	}
}

// TestDefaultPolicyDurations: the default policy over two years, with a parent whose
// scanner picks up a CDS an hour after it appears: how long each rollover takes, from
// its first step to the old key's record deleted (BENCHMARKS.md reports the figures).
// Each takes at least its waits, and ends.
func TestDefaultPolicyDurations(t *testing.T) {
	s := &sim{t: t, p: DefaultPolicy, lag: time.Hour}
	started := map[string]time.Time{} // the key a rollover replaces → when it started
	var zsk, ksk []time.Duration
	s.log = func(at time.Time, st Step) {
		switch {
		case strings.HasPrefix(st.Why, "zsk rollover (pre-publication): the old key"):
			started[st.ID] = at
		case strings.HasPrefix(st.Why, "ksk rollover (double-DS)"):
			for _, k := range s.keys {
				if k.Rec.Role == record.RoleKSK && k.Rec.Timeline.Retire == nil {
					started[k.ID] = at
				}
			}
		case st.Delete:
			if from, ok := started[st.ID]; ok {
				if strings.HasPrefix(st.ID, "zsk") {
					zsk = append(zsk, at.Sub(from))
				} else {
					ksk = append(ksk, at.Sub(from))
				}
			}
		}
	}
	s.run(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), 2*365*24*time.Hour, 5*time.Minute)
	if len(zsk) < 20 || len(ksk) < 1 {
		t.Fatalf("%d ZSK and %d KSK rollovers in two years", len(zsk), len(ksk))
	}
	p := DefaultPolicy
	if zsk[0] < p.prePublish()+p.retireZSK() {
		t.Errorf("a ZSK rollover took %s, less than its waits", zsk[0])
	}
	if ksk[0] < s.lag+p.DSTTL.D()+p.prePublish() {
		t.Errorf("a KSK rollover took %s, less than its waits", ksk[0])
	}
	// Then an algorithm rollover to Ed25519: from the policy's change to the last key
	// of the old algorithm deleted.
	switched := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC).Add(2 * 365 * 24 * time.Hour)
	old := map[string]bool{}
	for _, k := range s.keys {
		old[k.ID] = true
	}
	var alg time.Duration
	s.log = func(at time.Time, st Step) {
		if st.Delete && old[st.ID] {
			delete(old, st.ID)
			alg = at.Sub(switched)
		}
	}
	s.p.Algorithm = dns.ED25519
	s.run(switched, 7*24*time.Hour, 5*time.Minute)
	if len(old) > 0 || alg < s.lag+p.DSTTL.D() {
		t.Errorf("algorithm rollover: %d old keys left, took %s", len(old), alg)
	}
	t.Logf("default policy: %d ZSK rollovers, each %s; %d KSK rollovers, each %s; an algorithm rollover %s (the parent's scanner an hour behind the CDS)", len(zsk), zsk[0], len(ksk), ksk[0], alg)
}

// TestPlanHalfWrittenRollover: a rollover whose old key's retirement was never
// written (a timeout, a signer that died) is finished by the next plan: one key signs.
func TestPlanHalfWrittenRollover(t *testing.T) {
	s := &sim{t: t, p: fast, lag: time.Minute}
	start := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	s.run(start, 10*time.Minute, 10*time.Second)
	now := start.Add(10 * time.Minute)
	steps, _, err := Plan(fast, s.keys, s.dsSet(), now, &Request{Roll: record.RoleZSK}, zone, func(string) string { return "zsk-new" })
	if err != nil || len(steps) != 2 {
		t.Fatalf("roll: %v %v", steps, err)
	}
	rec := newRecord(t, record.RoleZSK, fast.Algorithm)
	rec.Timeline = steps[0].Timeline
	s.keys = append(s.keys, Key{ID: "zsk-new", Rec: rec}) // the old key's step is lost
	steps, _, err = Plan(fast, s.keys, s.dsSet(), now.Add(10*time.Second), nil, zone, func(string) string { return "x" })
	if err != nil || len(steps) != 1 || steps[0].Timeline.Retire == nil || !steps[0].Timeline.Retire.Equal(*rec.Timeline.Active) {
		t.Fatalf("after a lost retirement: %+v %v", steps, err)
	}
	i := slices.IndexFunc(s.keys, func(k Key) bool { return k.ID == steps[0].ID })
	s.keys[i].Rec.Timeline = steps[0].Timeline
	s.run(now.Add(20*time.Second), 30*time.Minute, 10*time.Second) // and the validator invariants hold on
}
