package keymgr

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// Key is one of the zone's key records as the manager read it.
type Key struct {
	ID  string
	Rec *record.ZoneKey
}

// Parent is what the parent zone's servers serve as the zone's DS RRset.
type Parent struct {
	// Known: every server answered, and they all serve the same set. Until then no DS
	// step is taken.
	Known bool
	DS    []*dns.DS
	TTL   time.Duration // the TTL the parent serves the DS RRset with
	Why   string        // why not known
}

// dsTTL is how long a DS RRset may be held: the policy's, or the parent's if longer.
func (pl *planner) dsTTL() time.Duration { return max(pl.p.DSTTL.D(), pl.parent.TTL) }

// has reports whether the parent's DS set holds a DS of dk.
func (p Parent) has(dk *dns.DNSKEY) bool {
	want := dk.ToDS(dns.SHA256)
	return slices.ContainsFunc(p.DS, func(ds *dns.DS) bool {
		return ds.KeyTag == want.KeyTag && ds.Algorithm == want.Algorithm && ds.DigestType == dns.SHA256 && strings.EqualFold(ds.Digest, want.Digest)
	})
}

// Step is one change of the plan: a key to make (New), a key's new timeline, or a
// key record to delete once its key has left the zone.
type Step struct {
	ID       string
	New      string // the role of a key to make
	Timeline record.Timeline
	Delete   bool
	Why      string // for the audit trail and the log
}

// Request is what an operator asked: roll a role's key now (an emergency rollover
// when the key is compromised: it starts whatever its lifetime).
type Request struct {
	Roll string // record.RoleKSK, RoleZSK or RoleCSK
}

// Plan is what the manager does next at now: the steps to write, and what it waits
// for meanwhile (empty when nothing).
func Plan(p Policy, keys []Key, parent Parent, now time.Time, req *Request, zone string, newID func(role string) string) ([]Step, []string, error) {
	pl := planner{p: p, keys: keys, parent: parent, now: now, zone: zone, newID: newID}
	if len(keys) == 0 && req != nil {
		return nil, nil, errors.New("the zone has no keys to roll yet")
	}
	if len(keys) == 0 {
		pl.bootstrap()
		return pl.steps, pl.waiting, nil
	}
	sep := record.RoleKSK
	if p.CSK {
		sep = record.RoleCSK
	}
	if req != nil {
		if req.Roll != sep && (p.CSK || req.Roll != record.RoleZSK) {
			return nil, nil, fmt.Errorf("this zone's policy has no %s to roll (it has %s)", req.Roll, map[bool]string{true: "a csk", false: "a ksk and a zsk"}[p.CSK])
		}
		if why := pl.rolling(req.Roll); why != "" {
			return nil, nil, fmt.Errorf("a %s rollover is under way (%s): wait for it to end", req.Roll, why)
		}
		// An operator's roll does that alone: the rest waits for the manager's tick.
		if req.Roll == record.RoleZSK {
			pl.zsk(true)
		} else {
			pl.ksk(sep, true)
		}
		return pl.steps, pl.waiting, nil
	}
	pl.roles(sep)
	if pl.algorithm(sep) {
		pl.cleanup()
		return pl.steps, pl.waiting, nil
	}
	if !p.CSK {
		pl.supersede(record.RoleZSK)
		pl.zsk(false)
	}
	pl.supersede(sep)
	pl.ksk(sep, false)
	pl.cleanup()
	return pl.steps, pl.waiting, nil
}

type planner struct {
	p       Policy
	keys    []Key
	parent  Parent
	now     time.Time
	zone    string
	newID   func(role string) string
	steps   []Step
	waiting []string
}

func (pl *planner) at(d time.Duration) *time.Time {
	t := pl.now.Add(d).UTC().Truncate(time.Second)
	return &t
}

// bootstrap makes a new zone's keys. They are published and sign at once: a zone that
// had no DNSKEY RRset leaves no validator holding one without them, so their
// publication is dated a pre-publication interval back. The KSK's DS is asked of the
// parent at once.
func (pl *planner) bootstrap() {
	back := pl.at(-pl.p.prePublish())
	if pl.p.CSK {
		pl.add(record.RoleCSK, record.Timeline{Publish: back, Active: back, SyncPublish: pl.at(0)}, "a new zone's CSK")
		return
	}
	pl.add(record.RoleKSK, record.Timeline{Publish: back, Active: back, SyncPublish: pl.at(0)}, "a new zone's KSK")
	pl.add(record.RoleZSK, record.Timeline{Publish: back, Active: back}, "a new zone's ZSK")
}

func (pl *planner) add(role string, tl record.Timeline, why string) {
	tl.Created = pl.now.UTC().Truncate(time.Second)
	pl.steps = append(pl.steps, Step{ID: pl.newID(role), New: role, Timeline: tl, Why: why})
}

func (pl *planner) set(k Key, tl record.Timeline, why string) {
	pl.steps = append(pl.steps, Step{ID: k.ID, Timeline: tl, Why: why})
}

// current is the key of role that signs and is not scheduled to stop, the newest.
func (pl *planner) current(role string) (Key, bool) {
	var cur Key
	for _, k := range pl.keys {
		tl := k.Rec.Timeline
		if k.Rec.Role == role && tl.Active != nil && tl.Publish != nil && tl.Retire == nil && (cur.Rec == nil || tl.Active.After(*cur.Rec.Timeline.Active)) {
			cur = k
		}
	}
	return cur, cur.Rec != nil
}

// rolling says why a rollover of role is under way ("" when none is).
func (pl *planner) rolling(role string) string {
	for _, k := range pl.keys {
		tl := k.Rec.Timeline
		switch {
		case k.Rec.Role != role:
		case tl.Retire != nil && pl.now.Before(*tl.Retire):
			return fmt.Sprintf("key %s stops signing at %s", k.ID, tl.Retire.Format(time.RFC3339))
		case tl.Publish == nil && tl.SyncPublish != nil:
			return fmt.Sprintf("key %s waits for its DS at the parent", k.ID)
		case tl.Active != nil && pl.now.Before(*tl.Active):
			return fmt.Sprintf("key %s signs from %s", k.ID, tl.Active.Format(time.RFC3339))
		}
	}
	return ""
}

// zsk rolls the ZSK by pre-publication (RFC 7583 §3.2.1): the new key published a
// pre-publication interval before it signs, the old one published until no validator
// holds a signature it made.
func (pl *planner) zsk(asked bool) {
	cur, ok := pl.current(record.RoleZSK)
	if !ok {
		if pl.rolling(record.RoleZSK) == "" {
			// No ZSK signs (the KSK signs the names meanwhile): make one.
			pl.add(record.RoleZSK, record.Timeline{Publish: pl.at(0), Active: pl.at(pl.p.prePublish())}, "no ZSK signs: a new one")
		}
		return
	}
	due := pl.p.ZSKLifetime > 0 && !pl.now.Before(cur.Rec.Timeline.Active.Add(pl.p.ZSKLifetime.D()-pl.p.prePublish()))
	if !due && !asked || pl.rolling(record.RoleZSK) != "" {
		return
	}
	why := "zsk rollover (pre-publication)"
	if asked {
		why = "zsk rollover asked by the operator (pre-publication)"
	}
	pl.add(record.RoleZSK, record.Timeline{Publish: pl.at(0), Active: pl.at(pl.p.prePublish())}, why)
	tl := cur.Rec.Timeline
	tl.Retire, tl.Remove = pl.at(pl.p.prePublish()), pl.at(pl.p.prePublish()+pl.p.retireZSK())
	pl.set(cur, tl, why+": the old key stops signing when the new one starts")
}

// ksk rolls the KSK (or CSK) by double-DS (RFC 7583 §3.3.2), driven by CDS and
// CDNSKEY: the new key's DS is asked of the parent first; once every parent server
// serves it and the DS TTL has passed, the new key is published and signs, the old
// one stops, and its DS is withdrawn.
func (pl *planner) ksk(role string, asked bool) {
	cur, ok := pl.current(role)
	var pending *Key
	for i, k := range pl.keys {
		if k.Rec.Role == role && k.Rec.Timeline.Publish == nil && k.Rec.Timeline.SyncPublish != nil {
			pending = &pl.keys[i]
		}
	}
	switch {
	case pending != nil:
		pl.waitForDS(*pending, cur, ok)
	case ok && (asked || pl.p.KSKLifetime > 0 && !pl.now.Before(cur.Rec.Timeline.Active.Add(pl.p.KSKLifetime.D()))):
		why := role + " rollover (double-DS): the new key's DS asked of the parent"
		if asked {
			why = role + " rollover asked by the operator (double-DS): the new key's DS asked of the parent"
		}
		pl.add(role, record.Timeline{SyncPublish: pl.at(0)}, why)
	}
	// The old key's DS leaves the parent once its CDS is gone.
	for _, k := range pl.keys {
		tl := k.Rec.Timeline
		if k.Rec.SEP() && tl.SyncDelete != nil && !pl.now.Before(*tl.SyncDelete) && tl.DSGone == nil && pl.parent.Known {
			if dk, err := k.Rec.PublicKey(pl.zone); err == nil && !pl.parent.has(dk) {
				tl.DSGone = pl.at(0)
				pl.set(k, tl, "the parent no longer serves the old key's DS")
			}
		}
	}
}

// waitForDS moves a new KSK on once every parent server serves its DS and the DS TTL
// has passed; until then the old key signs and nothing changes.
func (pl *planner) waitForDS(next Key, cur Key, haveCur bool) {
	dk, err := next.Rec.PublicKey(pl.zone)
	if err != nil {
		return
	}
	tl := next.Rec.Timeline
	switch {
	case !pl.parent.Known:
		pl.waiting = append(pl.waiting, fmt.Sprintf("key %s: the parent's DS set is not known (%s)", next.ID, pl.parent.Why))
	case !pl.parent.has(dk):
		pl.waiting = append(pl.waiting, fmt.Sprintf("key %s: the parent does not serve its DS (tag %d) yet; CDS and CDNSKEY ask for it since %s", next.ID, dk.KeyTag(), tl.SyncPublish.Format(time.RFC3339)))
	case tl.DSSeen == nil:
		tl.DSSeen = pl.at(0)
		pl.set(next, tl, "every parent server serves the new key's DS")
		pl.waiting = append(pl.waiting, fmt.Sprintf("key %s: the DS TTL (%s) to pass", next.ID, pl.dsTTL()))
	case pl.now.Before(tl.DSSeen.Add(pl.dsTTL())):
		pl.waiting = append(pl.waiting, fmt.Sprintf("key %s: the DS TTL to pass, until %s", next.ID, tl.DSSeen.Add(pl.dsTTL()).Format(time.RFC3339)))
	default:
		tl.Publish, tl.Active = pl.at(0), pl.at(pl.p.prePublish())
		pl.set(next, tl, "the new key's DS has been at the parent for the DS TTL: the new key is published, and signs after the pre-publication interval")
		if haveCur {
			old := cur.Rec.Timeline
			old.Retire, old.SyncDelete = pl.at(pl.p.prePublish()), pl.at(pl.p.prePublish())
			// Its DNSKEY stays until no validator holds a signature it made: over the DNSKEY
			// RRset, and for a CSK over the names too.
			linger := pl.p.prePublish()
			if cur.Rec.Role == record.RoleCSK {
				linger = max(linger, pl.p.retireZSK())
			}
			old.Remove = pl.at(pl.p.prePublish() + linger)
			pl.set(cur, old, "the old key stops signing when the new one starts, and its DS is withdrawn")
		}
	}
}

// cleanup deletes the records of keys that left the zone a pre-publication interval
// ago (and whose DS, for a KSK, the parent no longer serves or was never asked for).
func (pl *planner) cleanup() {
	for _, k := range pl.keys {
		tl := k.Rec.Timeline
		if tl.Remove == nil || pl.now.Before(tl.Remove.Add(pl.p.prePublish())) {
			continue
		}
		if k.Rec.SEP() && tl.SyncPublish != nil && tl.DSGone == nil {
			continue
		}
		pl.steps = append(pl.steps, Step{ID: k.ID, Delete: true, Timeline: tl, Why: "the key left the zone"})
	}
}

// algorithm rolls the zone to the policy's algorithm (RFC 6781 §4.1.4, with the
// DNSKEYs first, since a replica never signs with a key whose DNSKEY it has not
// published for a while; validators need one algorithm's chain only, RFC 6840
// §5.11): new keys of the new algorithm are published and, a pre-publication interval
// later, sign beside the old ones; once no validator holds a signature made before,
// the parent is asked for the new DS in place of the old; once every parent server
// serves it and the DS TTL has passed, the old keys stop signing and leave. It
// reports whether an algorithm rollover is under way (the other rollovers wait).
func (pl *planner) algorithm(sep string) bool {
	alg := func(k Key) uint8 {
		dk, err := k.Rec.PublicKey(pl.zone)
		if err != nil {
			return 0
		}
		return dk.Algorithm
	}
	var oldKeys, newKeys []Key
	for _, k := range pl.keys {
		if k.Rec.Timeline.Retire != nil || k.Rec.Timeline.Active == nil {
			continue
		}
		if alg(k) == pl.p.Algorithm {
			newKeys = append(newKeys, k)
		} else {
			oldKeys = append(oldKeys, k)
		}
	}
	if len(oldKeys) == 0 {
		return false
	}
	roles := []string{sep}
	if !pl.p.CSK {
		roles = append(roles, record.RoleZSK)
	}
	if len(newKeys) == 0 {
		why := fmt.Sprintf("algorithm rollover to %s: the new keys published", dns.AlgorithmToString[pl.p.Algorithm])
		for _, role := range roles {
			pl.add(role, record.Timeline{Publish: pl.at(0), Active: pl.at(pl.p.prePublish())}, why)
		}
		return true
	}
	var newSEP, oldSEP *Key
	for i := range newKeys {
		if newKeys[i].Rec.SEP() {
			newSEP = &newKeys[i]
		}
	}
	for i := range oldKeys {
		if oldKeys[i].Rec.SEP() {
			oldSEP = &oldKeys[i]
		}
	}
	if newSEP == nil {
		pl.waiting = append(pl.waiting, "algorithm rollover: no key of the new algorithm signs the DNSKEY RRset")
		return true
	}
	tl := newSEP.Rec.Timeline
	switch {
	case tl.SyncPublish == nil:
		// Both algorithms sign everything once the new keys are active; the DS moves once
		// no validator holds an answer signed before that.
		at := tl.Active.Add(pl.p.retireZSK())
		if pl.now.Before(at) {
			pl.waiting = append(pl.waiting, fmt.Sprintf("algorithm rollover: both algorithms to sign for the zone's TTL, until %s", at.Format(time.RFC3339)))
			return true
		}
		tl.SyncPublish = pl.at(0)
		pl.set(*newSEP, tl, "algorithm rollover: the parent asked for the new algorithm's DS in place of the old")
		if oldSEP != nil {
			old := oldSEP.Rec.Timeline
			old.SyncDelete = pl.at(0)
			pl.set(*oldSEP, old, "algorithm rollover: the old algorithm's CDS withdrawn")
		}
	default:
		dk, _ := newSEP.Rec.PublicKey(pl.zone)
		var oldDK *dns.DNSKEY
		if oldSEP != nil {
			oldDK, _ = oldSEP.Rec.PublicKey(pl.zone)
		}
		switch {
		case !pl.parent.Known:
			pl.waiting = append(pl.waiting, "algorithm rollover: the parent's DS set is not known ("+pl.parent.Why+")")
		case !pl.parent.has(dk) || oldDK != nil && pl.parent.has(oldDK):
			pl.waiting = append(pl.waiting, fmt.Sprintf("algorithm rollover: the parent to serve the new DS (tag %d) alone", dk.KeyTag()))
		case tl.DSSeen == nil:
			tl.DSSeen = pl.at(0)
			pl.set(*newSEP, tl, "algorithm rollover: every parent server serves the new algorithm's DS alone")
		case pl.now.Before(tl.DSSeen.Add(pl.dsTTL())):
			pl.waiting = append(pl.waiting, "algorithm rollover: the DS TTL to pass, until "+tl.DSSeen.Add(pl.dsTTL()).Format(time.RFC3339))
		default:
			for _, k := range oldKeys {
				old := k.Rec.Timeline
				old.Retire, old.Remove = pl.at(0), pl.at(pl.p.retireZSK()+pl.p.prePublish())
				if k.Rec.SEP() && old.DSGone == nil {
					old.DSGone = tl.DSSeen
				}
				pl.set(k, old, "algorithm rollover: the old algorithm's key stops signing and leaves")
			}
		}
	}
	return true
}

// supersede retires the older keys of role that still sign beside the newest one: a
// rollover whose second write (the old key's retirement) was lost (a timeout, a
// signer that died, a conflict) ends here instead of leaving two keys signing.
func (pl *planner) supersede(role string) {
	cur, ok := pl.current(role)
	if !ok {
		return
	}
	for _, k := range pl.keys {
		tl := k.Rec.Timeline
		if k.ID == cur.ID || k.Rec.Role != role || tl.Active == nil || tl.Publish == nil || tl.Retire != nil {
			continue
		}
		retire := *cur.Rec.Timeline.Active
		if retire.Before(pl.now) {
			retire = pl.now
		}
		linger := pl.p.prePublish()
		if role != record.RoleKSK {
			linger = max(linger, pl.p.retireZSK())
		}
		retire = retire.UTC().Truncate(time.Second)
		remove := retire.Add(linger)
		tl.Retire, tl.Remove = &retire, &remove
		if k.Rec.SEP() && tl.SyncPublish != nil && tl.SyncDelete == nil {
			tl.SyncDelete = &retire
		}
		pl.set(k, tl, "a newer "+role+" signs: the older one stops (a rollover's retirement not written before)")
	}
}

// roles says when the keys' roles do not fit the policy (a CSK policy over a KSK and
// a ZSK, or the other way): the manager then rolls nothing of the other kind.
func (pl *planner) roles(sep string) {
	for _, k := range pl.keys {
		if k.Rec.Timeline.Retire != nil {
			continue
		}
		if k.Rec.SEP() && k.Rec.Role != sep || pl.p.CSK && k.Rec.Role == record.RoleZSK {
			pl.waiting = append(pl.waiting, fmt.Sprintf("key %s is a %s, which the policy (csk %v) does not roll: roll it by hand (keys roll) or change the policy", k.ID, k.Rec.Role, pl.p.CSK))
		}
	}
}
