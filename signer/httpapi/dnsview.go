package httpapi

import (
	"errors"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// DNSAnswer is what DNS answers for a device's name right now.
type DNSAnswer struct {
	Owner   string   `json:"owner"`
	Server  string   `json:"server"`
	Rcode   string   `json:"rcode"`
	Records []string `json:"records"` // TLSA records in presentation form
	Signed  bool     `json:"signed"`  // the answer carried RRSIGs
}

var errNoDNS = errors.New("the signer was started without -dns: it cannot ask DNS")

// dns asks the configured DNS server for the device's TLSA RRset.
func (c *apiCall) dns() {
	d, _, err := c.reg().Get(c.ctx, c.name())
	if err == nil && !c.actor.Sees(d.Tenant) {
		err = registry.ErrNotFound
	}
	if err != nil {
		c.reply(0, nil, err)
		return
	}
	owner, _ := record.DeviceOwner(c.name(), c.reg().Zone)
	ans := DNSAnswer{Owner: owner, Server: c.api.DNS, Records: []string{}}
	if c.api.DNS == "" {
		c.reply(0, nil, errNoDNS)
		return
	}
	resp, err := c.ask(c.api.DNS, owner, dns.TypeTLSA)
	if err != nil {
		c.reply(0, nil, err) // 503: DNS did not answer
		return
	}
	ans.Rcode = dns.RcodeToString[resp.Rcode]
	for _, rr := range resp.Answer {
		switch rr.(type) {
		case *dns.TLSA:
			ans.Records = append(ans.Records, rr.String())
		case *dns.RRSIG:
			ans.Signed = true
		}
	}
	c.reply(200, ans, nil)
}
