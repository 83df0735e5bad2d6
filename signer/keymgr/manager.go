package keymgr

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Settings are the key manager's settings of one zone, kept by the registry. A zone
// has its keys managed once it has settings (deviceid-signer keys enable).
type Settings struct {
	Policy Policy `json:"policy"`
	// Paused: the manager takes no step (a rollover under way waits where it is).
	Paused bool `json:"paused"`
	// ParentServers are the parent zone's servers (host:port) asked for the zone's DS
	// set before any DS step, like BIND's parental-agents.
	ParentServers []string `json:"parent_servers"`
}

// ErrNotManaged: the zone has no key manager settings.
var ErrNotManaged = errors.New("the zone's keys are not managed: turn it on with deviceid-signer keys enable")

// LoadSettings reads a zone's settings and their revision.
func LoadSettings(ctx context.Context, reg *registry.Registry) (Settings, int64, error) {
	b, rev, err := reg.KeySettings(ctx)
	if err != nil {
		return Settings{}, 0, err
	}
	if b == nil {
		return Settings{}, 0, ErrNotManaged
	}
	var s Settings
	if err := json.Unmarshal(b, &s); err != nil {
		return Settings{}, rev, fmt.Errorf("%w: the key settings: %v", registry.ErrStoredInvalid, err)
	}
	return s, rev, nil
}

// Manager runs the plan of one zone.
type Manager struct {
	Registry *registry.Registry
	KEK      *kek.KEK // wraps the private keys it makes
	// HSM, when set, is the token new keys are made in instead (a pkcs11: URI with
	// its module and PIN, naming no key): one every replica reaches, named by its hsm
	// line. Keys in an HSM are ECDSA P-256.
	HSM string
	// Push, when set, is where the DS is pushed by UPDATE; the parent is asked for
	// the DS there too when the settings name no parent servers.
	Push     *ParentUpdate
	lastPush pushed
	Actor    registry.Actor
	Now      func() time.Time                                                // nil: time.Now
	Parent   func(ctx context.Context, servers []string, zone string) Parent // nil: AskParent
	Log      *slog.Logger
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Report is what one run of the plan did and waits for.
type Report struct {
	Policy  Policy
	Steps   []Step
	Waiting []string
	Keys    []registry.StoredZoneKey
	Paused  bool
}

// Step runs the plan once (with an operator's request, or nil) and writes its steps;
// fence, when set, is the leadership every write must still hold.
func (m *Manager) Step(ctx context.Context, req *Request, fence *registry.Fence) (Report, error) {
	s, _, err := LoadSettings(ctx, m.Registry)
	if err != nil {
		return Report{}, err
	}
	stored, err := m.Registry.ZoneKeys(ctx)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Policy: s.Policy, Keys: stored, Paused: s.Paused}
	if s.Paused && req == nil {
		return rep, nil
	}
	var keys []Key
	revs := map[string]int64{}
	for _, k := range stored {
		if k.Err != nil {
			// An invalid record is left to the operator; the plan never builds on it.
			rep.Waiting = append(rep.Waiting, fmt.Sprintf("key %s: its record is invalid (%v); delete or fix it", k.ID, k.Err))
			continue
		}
		keys = append(keys, Key{ID: k.ID, Rec: k.Key})
		revs[k.ID] = k.Revision
	}
	if len(keys) == 0 && len(stored) > 0 {
		// Key records there are, none valid: never start the zone's keys over (the
		// parent has no DS for new ones).
		return rep, nil
	}
	var parent Parent
	if len(keys) > 0 {
		ask := m.Parent
		if ask == nil {
			ask = AskParent
		}
		servers := s.ParentServers
		if len(servers) == 0 && m.Push != nil {
			servers = []string{m.Push.Server}
		}
		parent = ask(ctx, servers, m.Registry.Zone)
	}
	now := m.now()
	if m.Push != nil && parent.Known && !s.Paused {
		rep.Waiting = append(rep.Waiting, m.pushDSIfNeeded(ctx, s.Policy, keys, parent, now)...)
	}
	steps, waiting, err := Plan(s.Policy, keys, parent, now, req, m.Registry.Zone, newKeyID(now))
	if err != nil {
		return rep, err
	}
	rep.Waiting = append(rep.Waiting, waiting...)
	for _, st := range steps {
		if err := m.write(ctx, s.Policy, st, keys, revs, fence); err != nil {
			return rep, err
		}
		rep.Steps = append(rep.Steps, st)
		if m.Log != nil {
			m.Log.Info("dnssec key step", "zone", m.Registry.Zone, "key", st.ID, "why", st.Why)
		}
	}
	return rep, nil
}

// write makes one step: a new key (made and wrapped here), a new timeline, or a deletion.
func (m *Manager) write(ctx context.Context, p Policy, st Step, keys []Key, revs map[string]int64, fence *registry.Fence) error {
	switch {
	case st.New != "":
		// A key wrapped under another KEK than the zone's would open on no replica.
		for _, k := range keys {
			if w := k.Rec.Private.KEK; w != "" && m.HSM == "" && m.KEK != nil && w != m.KEK.ID {
				return fmt.Errorf("this signer's KEK %s is not the one the zone's keys are wrapped under (%s, key %s), which the replicas hold: start it with that KEK", m.KEK.ID, w, k.ID)
			}
		}
		rec, err := m.makeKey(st.ID, st.New, p.Algorithm)
		if err != nil {
			return err
		}
		rec.Timeline, rec.MaxTTL = st.Timeline, p.maxTTL()
		err = m.Registry.WriteZoneKey(ctx, m.Actor, fence, st.ID, 0, rec, "key.create", st.Why)
		if err != nil {
			m.deleteFromHSM(st.ID, rec) // made for a record that is not there
		}
		return err
	case st.Delete:
		if err := m.Registry.WriteZoneKey(ctx, m.Actor, fence, st.ID, revs[st.ID], nil, "key.delete", st.Why); err != nil {
			return err
		}
		for _, k := range keys {
			if k.ID == st.ID {
				m.deleteFromHSM(k.ID, k.Rec) // a deleted record cannot be brought back to life
			}
		}
		return nil
	}
	for _, k := range keys {
		if k.ID == st.ID {
			rec := *k.Rec
			rec.Timeline, rec.MaxTTL = st.Timeline, p.maxTTL()
			return m.Registry.WriteZoneKey(ctx, m.Actor, fence, st.ID, revs[st.ID], &rec, "key.step", st.Why)
		}
	}
	return fmt.Errorf("the plan names key %s, which is not there", st.ID)
}

// makeKey makes a key of role and alg, in the HSM or with its private half wrapped
// under the KEK.
func (m *Manager) makeKey(id, role string, alg uint8) (*record.ZoneKey, error) {
	flags := 257
	if role == record.RoleZSK {
		flags = 256
	}
	rec := &record.ZoneKey{Version: record.Version, Role: role}
	var pub []byte
	switch {
	case m.HSM != "":
		if alg != dns.ECDSAP256SHA256 {
			return nil, fmt.Errorf("keys in an HSM are ECDSA P-256 (algorithm %d), not %s: change the policy's algorithm, or make keys wrapped under the KEK", dns.ECDSAP256SHA256, dns.AlgorithmToString[alg])
		}
		ref, err := pkcs11key.ObjectRef(m.HSM, record.WrapBinding(m.Registry.Zone, id))
		if err != nil {
			return nil, err
		}
		uri, err := pkcs11key.InToken(m.HSM, ref)
		if err != nil {
			return nil, err
		}
		k, err := pkcs11key.Generate(uri, elliptic.P256())
		if err != nil {
			return nil, err
		}
		defer k.Close()
		b, err := k.Public().(*ecdsa.PublicKey).Bytes()
		if err != nil {
			return nil, err
		}
		pub, rec.Private = b[1:], record.PrivateKeyRef{PKCS11: ref}
	case m.KEK == nil:
		return nil, errors.New("making a key needs the key-encryption key every replica holds (deviceid-signer -kek), or an HSM every replica reaches (-keys-hsm)")
	default:
		var priv crypto.Signer
		switch alg {
		case dns.ED25519:
			p, k, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return nil, err
			}
			priv, pub = k, p
		default:
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return nil, err
			}
			b, err := k.PublicKey.Bytes()
			if err != nil {
				return nil, err
			}
			priv, pub = k, b[1:] // RFC 6605: X and Y without the 04 prefix
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		rec.Private = record.PrivateKeyRef{Wrapped: m.KEK.Wrap(der, record.WrapBinding(m.Registry.Zone, id)), KEK: m.KEK.ID}
	}
	rec.DNSKEY = fmt.Sprintf("%d 3 %d %s", flags, alg, base64.StdEncoding.EncodeToString(pub))
	return rec, nil
}

// deleteFromHSM deletes the key of record id from the HSM, if it is there; a failure
// is logged (the key then stays in the token, unused).
func (m *Manager) deleteFromHSM(id string, rec *record.ZoneKey) {
	if rec.Private.PKCS11 == "" || m.HSM == "" {
		return
	}
	uri, err := pkcs11key.InToken(m.HSM, rec.Private.PKCS11)
	if err == nil && pkcs11key.Label(uri) != record.WrapBinding(m.Registry.Zone, id) {
		err = errors.New("the record names a key made for another record")
	}
	var k *pkcs11key.Key
	if err == nil {
		k, err = pkcs11key.Open(uri, elliptic.P256())
	}
	if err == nil {
		err = k.Delete()
	}
	if err != nil && m.Log != nil {
		m.Log.Warn("dnssec key manager: the key stays in the HSM", "zone", m.Registry.Zone, "key", id, "err", err)
	}
}

// newKeyID names new keys: role-yyyymmddhhmmss-random.
func newKeyID(now time.Time) func(role string) string {
	return func(role string) string {
		b := make([]byte, 3)
		rand.Read(b)
		return role + "-" + now.UTC().Format("20060102150405") + "-" + hex.EncodeToString(b)
	}
}

// Run campaigns to be the zone's one key manager and, while it is, runs the plan every
// tick until ctx ends. A signer that loses its etcd session (it stopped, or cannot
// reach etcd) loses the election; another signer takes over within the session's TTL.
func (m *Manager) Run(ctx context.Context, name string, tick time.Duration, ttl int) error {
	for ctx.Err() == nil {
		err := m.lead(ctx, name, tick, ttl)
		if ctx.Err() != nil {
			return nil
		}
		if m.Log != nil {
			m.Log.Warn("dnssec key manager: leadership ended, campaigning again", "zone", m.Registry.Zone, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (m *Manager) lead(ctx context.Context, name string, tick time.Duration, ttl int) error {
	sess, err := concurrency.NewSession(m.Registry.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, m.Registry.ElectionPrefix())
	if err := el.Campaign(ctx, name); err != nil {
		return err
	}
	fence := &registry.Fence{Key: el.Key(), Rev: el.Rev()}
	leader.WithLabelValues(m.Registry.Zone).Set(1)
	defer leader.WithLabelValues(m.Registry.Zone).Set(0)
	if m.Log != nil {
		m.Log.Info("dnssec key manager: leading", "zone", m.Registry.Zone, "name", name)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		rep, err := m.Step(ctx, nil, fence)
		m.observe(rep, err)
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			el.Resign(rctx)
			cancel()
			return nil
		case <-sess.Done():
			return errors.New("the etcd session ended")
		case <-t.C:
		}
	}
}

// observe reports a run in the metrics and the log.
func (m *Manager) observe(rep Report, err error) {
	zone := m.Registry.Zone
	switch {
	case errors.Is(err, ErrNotManaged):
		return
	case err != nil:
		stepFailures.WithLabelValues(zone).Inc()
		if m.Log != nil {
			m.Log.Error("dnssec key manager: a step failed; retried at the next tick", "zone", zone, "err", err)
		}
	}
	if err != nil && rep.Keys == nil {
		return // nothing read: the gauges keep what they said
	}
	waiting.WithLabelValues(zone).Set(float64(len(rep.Waiting)))
	for _, w := range rep.Waiting {
		if m.Log != nil {
			m.Log.Info("dnssec key manager: waiting", "zone", zone, "for", w)
		}
	}
	now := m.now()
	var next time.Time
	for _, k := range rep.Keys {
		if k.Key == nil {
			continue
		}
		if t := k.Key.Next(now, 0); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if !next.IsZero() {
		nextEvent.WithLabelValues(zone).Set(float64(next.Unix()))
	}
	states := map[[2]string]int{}
	lifetimeEnds := map[string]time.Time{}
	for _, k := range rep.Keys {
		if k.Key == nil {
			continue
		}
		state := keyState(k.Key, now)
		states[[2]string{k.Key.Role, state}]++
		lifetime := rep.Policy.KSKLifetime.D()
		if k.Key.Role == record.RoleZSK {
			lifetime = rep.Policy.ZSKLifetime.D()
		}
		if state == "signing" && lifetime > 0 {
			if end := k.Key.Timeline.Active.Add(lifetime); end.After(lifetimeEnds[k.Key.Role]) {
				lifetimeEnds[k.Key.Role] = end
			}
		}
	}
	for _, role := range []string{record.RoleKSK, record.RoleZSK, record.RoleCSK} {
		for _, state := range keyStates {
			keyCount.WithLabelValues(zone, role, state).Set(float64(states[[2]string{role, state}]))
		}
		if end, ok := lifetimeEnds[role]; ok {
			lifetimeEnd.WithLabelValues(zone, role).Set(float64(end.Unix()))
		} else {
			lifetimeEnd.DeleteLabelValues(zone, role)
		}
	}
}

// keyStates are the states of a key the metrics count.
var keyStates = []string{"created", "published", "signing", "retired", "removed"}

// keyState names where a key's timeline is at now: created (not in the zone yet),
// published (not signing yet), signing, retired (published, no longer signing) or
// removed.
func keyState(k *record.ZoneKey, now time.Time) string {
	tl := k.Timeline
	switch {
	case tl.Remove != nil && !now.Before(*tl.Remove):
		return "removed"
	case !k.Published(now):
		return "created"
	case tl.Retire != nil && !now.Before(*tl.Retire):
		return "retired"
	case k.Signs(now, 0):
		return "signing"
	}
	return "published"
}

// AskParent asks each parent server, directly and without recursion, for the zone's DS
// RRset. The set is known only when every server answers, and all alike.
func AskParent(ctx context.Context, servers []string, zone string) Parent {
	if len(servers) == 0 {
		return Parent{Why: "no parent servers are set (deviceid-signer keys enable -parent ...)"}
	}
	var first []string
	var ds []*dns.DS
	var ttl time.Duration
	for i, srv := range servers {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(zone), dns.TypeDS)
		q.RecursionDesired = false
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		r, _, err := c.ExchangeContext(ctx, q, srv)
		if err != nil {
			return Parent{Why: fmt.Sprintf("%s: %v", srv, err)}
		}
		if r.Rcode != dns.RcodeSuccess {
			return Parent{Why: fmt.Sprintf("%s: %s", srv, dns.RcodeToString[r.Rcode])}
		}
		if !r.Authoritative {
			return Parent{Why: fmt.Sprintf("%s: not an authoritative answer (a parent server of %s?)", srv, zone)}
		}
		var set []string
		var got []*dns.DS
		for _, rr := range r.Answer {
			if d, ok := rr.(*dns.DS); ok && strings.EqualFold(d.Hdr.Name, dns.Fqdn(zone)) {
				ttl = max(ttl, time.Duration(d.Hdr.Ttl)*time.Second)
				got = append(got, d)
				set = append(set, strings.ToLower(fmt.Sprintf("%d %d %d %s", d.KeyTag, d.Algorithm, d.DigestType, d.Digest)))
			}
		}
		slices.Sort(set)
		if i == 0 {
			first, ds = set, got
		} else if strings.Join(set, ",") != strings.Join(first, ",") {
			return Parent{Why: fmt.Sprintf("the parent servers disagree: %s serves %v, %s serves %v", servers[0], first, srv, set)}
		}
	}
	return Parent{Known: true, DS: ds, TTL: ttl}
}
