package httpapi

// The overview route: the picture the console draws for the operator and for each
// tenant, worked out here so that the page only draws it.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// Bounds of what one overview reads: it counts at most overviewDevices devices and
// overviewEntries audit entries, matching or not (and says so when there were more), and lists the
// first overviewExpiring devices that expire soon.
const (
	overviewDevices  = 100_000
	overviewEntries  = 50_000
	overviewExpiring = 50
	ActivityDays     = 14 // the days of activity an overview draws, today included
)

type (
	// Overview is the state of the registry, or of one tenant's part of it.
	Overview struct {
		Tenant     string         `json:"tenant,omitempty"` // "" for the whole registry
		Now        time.Time      `json:"now"`
		Devices    int            `json:"devices"`    // how many were counted
		Partial    bool           `json:"partial"`    // there were more than were counted
		Conditions map[string]int `json:"conditions"` // devices by condition (record.Conditions), zeros included
		Invalid    int            `json:"invalid"`    // stored records that are not valid
		// Activity is the audit trail's enrollments, revocations and transfers a day
		// (UTC), the last ActivityDays days, oldest first.
		Activity        []DayActivity    `json:"activity"`
		ActivityPartial bool             `json:"activity_partial"` // more entries than were read
		Expiring        []ExpiringDevice `json:"expiring"`         // soonest first, the first 50 of ExpiringCount
		ExpiringCount   int              `json:"expiring_count"`
		DNS             []DNSHealth      `json:"dns,omitempty"` // each replica's (-dns-replicas), or the -dns server's; the operator's only
	}
	// DayActivity counts one day's changes.
	DayActivity struct {
		Day         string `json:"day"` // 2006-01-02
		Enrollments int    `json:"enrollments"`
		Revocations int    `json:"revocations"`
		Transfers   int    `json:"transfers"`
	}
	// ExpiringDevice is a device whose last usable key expires within record.ExpiringWithin.
	ExpiringDevice struct {
		Name    string    `json:"name"`
		Tenant  string    `json:"tenant,omitempty"`
		Expires time.Time `json:"expires"`
	}
	// DNSHealth is the zone as one DNS server serves it, beside etcd.
	DNSHealth struct {
		Server string `json:"server"`
		Error  string `json:"error,omitempty"` // why it could not be asked
		Serial uint32 `json:"serial"`          // the SOA serial: the etcd revision of the last change it serves
		// EtcdRevision is etcd's revision now, and Unserved how many of the zone's
		// records changed after the serial (deletions not counted).
		EtcdRevision int64 `json:"etcd_revision"`
		Unserved     int   `json:"unserved"`
		// SignatureExpires is the earliest expiry of the signatures over the SOA and the DNSKEY set.
		SignatureExpires *time.Time `json:"signature_expires,omitempty"`
	}
)

// activityOf maps the audit trail's operations to the overview's activity.
var activityOf = map[string]func(*DayActivity){
	"device.enroll":   func(d *DayActivity) { d.Enrollments++ },
	"device.reenroll": func(d *DayActivity) { d.Enrollments++ },
	"device.revoke":   func(d *DayActivity) { d.Revocations++ },
	"transfer.accept": func(d *DayActivity) { d.Transfers++ },
	"device.assign":   func(d *DayActivity) { d.Transfers++ },
}

var errEnough = errors.New("counted enough")

func (c *apiCall) overview() {
	tenant := c.query("tenant")
	if !c.actor.Operator {
		tenant = c.actor.Tenant
	} else if tenant != "" {
		if _, _, err := c.reg().Tenant(c.ctx, tenant); err != nil { // a name mistyped is not an empty tenant
			c.reply(0, nil, err)
			return
		}
	}
	now := c.reg().Clock()
	o := Overview{Tenant: tenant, Now: now, Conditions: map[string]int{}, Expiring: []ExpiringDevice{}}
	for _, k := range record.Conditions {
		o.Conditions[k] = 0
	}
	err := c.reg().Export(c.ctx, c.actor, registry.Filter{Tenant: tenant, Limit: registry.MaxPage}, func(e registry.Entry) error {
		if o.Devices == overviewDevices {
			o.Partial = true
			return errEnough
		}
		o.Devices++
		if e.Device == nil {
			o.Invalid++
			return nil
		}
		cond := e.Device.Condition(now)
		o.Conditions[cond]++
		if cond == record.ConditionExpiring {
			o.Expiring = append(o.Expiring, ExpiringDevice{Name: e.Name, Tenant: e.Device.Tenant, Expires: e.Device.Expires(now)})
		}
		return nil
	})
	if err == nil || errors.Is(err, errEnough) {
		err = c.activity(&o, tenant, now)
	}
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	slices.SortFunc(o.Expiring, func(a, b ExpiringDevice) int { return a.Expires.Compare(b.Expires) })
	o.ExpiringCount = len(o.Expiring)
	o.Expiring = o.Expiring[:min(len(o.Expiring), overviewExpiring)]
	if c.actor.Operator { // the servers, their errors and the zone's changes are the registry's
		o.DNS = c.dnsHealthAll()
	}
	c.reply(200, o, nil)
}

// dnsHealthAll asks every DNS server. Counting the zone's changes after a serial reads
// every key of the zone in etcd: the operator's alone to ask for.
func (c *apiCall) dnsHealthAll() []DNSHealth {
	servers := c.api.Replicas
	if len(servers) == 0 {
		servers = []string{c.api.DNS}
	}
	var out []DNSHealth
	for _, server := range servers {
		out = append(out, c.dnsHealth(server))
	}
	return out
}

// activity counts the audit trail's entries of the last ActivityDays days by day.
func (c *apiCall) activity(o *Overview, tenant string, now time.Time) error {
	today := now.UTC().Truncate(24 * time.Hour)
	since := today.AddDate(0, 0, 1-ActivityDays)
	o.Activity = make([]DayActivity, ActivityDays)
	for i := range o.Activity {
		o.Activity[i].Day = since.AddDate(0, 0, i).Format(time.DateOnly)
	}
	f := registry.AuditFilter{Tenant: tenant, Since: since, Limit: registry.MaxPage}
	for read := 0; ; {
		entries, next, err := c.reg().Audit(c.ctx, c.actor, f)
		if err != nil {
			return err
		}
		for _, e := range entries {
			day := int(e.Time.UTC().Sub(since) / (24 * time.Hour))
			if count := activityOf[e.Operation]; count != nil && day >= 0 && day < ActivityDays {
				count(&o.Activity[day])
			}
		}
		read += registry.AuditScan // what a call may read, matching the tenant or not
		if next == "" {
			return nil
		}
		if read >= overviewEntries {
			o.ActivityPartial = true
			return nil
		}
		f.After = next
	}
}

// dnsHealth asks a DNS server for the zone's SOA and DNSKEY set, signed, and etcd
// how many of the zone's records changed after the serial it serves.
func (c *apiCall) dnsHealth(server string) DNSHealth {
	h := DNSHealth{Server: server}
	if server == "" {
		h.Error = errNoDNS.Error()
		return h
	}
	zone := dns.Fqdn(record.Zone(c.reg().Zone))
	for _, qtype := range []uint16{dns.TypeSOA, dns.TypeDNSKEY} {
		resp, err := c.ask(server, zone, qtype)
		if err == nil && resp.Rcode != dns.RcodeSuccess {
			err = fmt.Errorf("%s %s: %s", zone, dns.TypeToString[qtype], dns.RcodeToString[resp.Rcode])
		}
		if err != nil {
			h.Error = err.Error()
			return h
		}
		for _, rr := range resp.Answer {
			switch rr := rr.(type) {
			case *dns.SOA:
				h.Serial = rr.Serial
			case *dns.RRSIG:
				t := time.Unix(int64(rr.Expiration), 0).UTC()
				if h.SignatureExpires == nil || t.Before(*h.SignatureExpires) {
					h.SignatureExpires = &t
				}
			}
		}
	}
	var err error
	if h.Unserved, h.EtcdRevision, err = c.reg().ChangedAfter(c.ctx, int64(h.Serial)); err != nil {
		h.Error = err.Error()
	}
	return h
}

// ask sends one question with DNSSEC OK to a DNS server, over TCP when truncated.
func (c *apiCall) ask(server, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, true)
	client := &dns.Client{Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	resp, _, err := client.ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		client.Net = "tcp"
		resp, _, err = client.ExchangeContext(ctx, m, server)
	}
	return resp, err
}
