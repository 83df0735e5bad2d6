package httpapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/keymgr"
)

// KeysView is the zone's DNSSEC keys and what the key manager is set to do.
type KeysView struct {
	Zone    string        `json:"zone"`
	Now     time.Time     `json:"now"`
	Managed bool          `json:"managed"` // the key manager rolls the keys (keys enable)
	Paused  bool          `json:"paused"`
	Policy  *PolicyView   `json:"policy,omitempty"`
	Keys    []ZoneKeyView `json:"keys"`
}

// PolicyView is the key manager's policy of the zone (durations as Go writes them).
type PolicyView struct {
	Algorithm   uint8  `json:"algorithm"`
	CSK         bool   `json:"csk"`
	KSKLifetime string `json:"ksk_lifetime"`
	ZSKLifetime string `json:"zsk_lifetime"`
	DNSKEYTTL   string `json:"dnskey_ttl"`
	ZoneMaxTTL  string `json:"zone_max_ttl"`
	DSTTL       string `json:"ds_ttl"`
	Propagation string `json:"propagation"`
}

// ZoneKeyView is one of the zone's keys: what it does now, and its timeline.
type ZoneKeyView struct {
	ID        string          `json:"id"`
	Role      string          `json:"role,omitempty"`
	Tag       uint16          `json:"tag,omitempty"`
	Algorithm uint8           `json:"algorithm,omitempty"`
	Now       []string        `json:"now"` // published, signs, cds
	Timeline  record.Timeline `json:"timeline"`
	Error     string          `json:"error,omitempty"` // the record does not parse
}

func (c *apiCall) keys() {
	stored, err := c.reg().ZoneKeys(c.ctx)
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	v := KeysView{Zone: c.reg().Zone, Now: time.Now().UTC(), Keys: []ZoneKeyView{}}
	var minPublished time.Duration
	s, _, err := keymgr.LoadSettings(c.ctx, c.reg())
	switch {
	case err == nil:
		p := s.Policy
		v.Managed, v.Paused = true, s.Paused
		v.Policy = &PolicyView{Algorithm: p.Algorithm, CSK: p.CSK, KSKLifetime: p.KSKLifetime.String(), ZSKLifetime: p.ZSKLifetime.String(),
			DNSKEYTTL: p.DNSKEYTTL.String(), ZoneMaxTTL: p.ZoneMaxTTL.String(), DSTTL: p.DSTTL.String(), Propagation: p.Propagation.String()}
		minPublished = p.DNSKEYTTL.D()
	case !errors.Is(err, keymgr.ErrNotManaged):
		c.reply(0, nil, err)
		return
	}
	for _, k := range stored {
		kv := ZoneKeyView{ID: k.ID, Now: []string{}}
		if k.Err != nil {
			kv.Error = k.Err.Error()
			v.Keys = append(v.Keys, kv)
			continue
		}
		kv.Role, kv.Timeline = k.Key.Role, k.Key.Timeline
		if dk, err := k.Key.PublicKey(v.Zone); err == nil {
			kv.Tag, kv.Algorithm = dk.KeyTag(), dk.Algorithm
		}
		for _, st := range []struct {
			name string
			on   bool
		}{{"published", k.Key.Published(v.Now)}, {"signs", k.Key.Signs(v.Now, minPublished)}, {"cds", k.Key.Syncs(v.Now)}} {
			if st.on {
				kv.Now = append(kv.Now, st.name)
			}
		}
		v.Keys = append(v.Keys, kv)
	}
	c.reply(http.StatusOK, v, nil)
}
