package verify

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzVerifyAnswer feeds arbitrary DNS messages to the code that turns a reply into
// an answer, in both trust modes (answerAD, answerLocal) and for the zone's DNSKEY
// RRset (anchoredKeys), with no network. The seeds are a zone's real signed replies.
// Invariants: nothing panics; an accepted answer is cached for no longer than
// MaxTTL, and a proven absence no longer than MaxNegativeTTL; AD mode accepts only
// replies with the AD bit; local validation accepts only TLSA records the zone
// signed (a mutated reply cannot forge a signature) and no expired signature.
func FuzzVerifyAnswer(f *testing.F) {
	signedAt := time.Unix(1_800_000_000, 0)
	z := newSignedZone(func() time.Time { return signedAt })
	const name = "lamp._device.iot.example."
	signed := map[string]bool{}
	for i, usage := range []uint8{3, 255} {
		sum := sha256.Sum256([]byte{byte(i)})
		rr := tlsa(usage, 1, 1, sum[:])
		z.set(name, rr)
		signed[rdata(rr)] = true
	}
	query := func(name string, qtype uint16) []byte {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.SetEdns0(1232, true)
		b, err := z.reply(q).Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	keys := map[uint16]*dns.DNSKEY{z.key.KeyTag(): z.key}
	anchors := []dns.RR{z.ds()}
	v := &Verifier{MaxTTL: 10 * time.Minute}
	// The seeds pass, so that the fuzzer starts from replies that validate.
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{name, dns.TypeTLSA}, {"nobody._device.iot.example.", dns.TypeTLSA}, {"iot.example.", dns.TypeDNSKEY}} {
		b := query(q.name, q.qtype)
		r := new(dns.Msg)
		r.Unpack(b)
		var err error
		if q.qtype == dns.TypeDNSKEY {
			_, err = anchoredKeys(r, "iot.example.", anchors, signedAt)
		} else {
			_, err = v.answerLocal(r, q.name, keys, signedAt)
		}
		if err != nil {
			f.Fatalf("seed %s: %v", q.name, err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, packed []byte) {
		r := new(dns.Msg)
		if r.Unpack(packed) != nil {
			return
		}
		now := signedAt.Add(time.Minute)
		name := name
		if len(r.Question) == 1 {
			name = r.Question[0].Name // the seeds' own names, a denial's too
		}
		if a, err := v.answerAD(r, name, now); err == nil {
			if !r.AuthenticatedData {
				t.Fatal("AD mode accepted a reply without the AD bit")
			}
			checkAnswer(t, a, name)
		}
		ad := *r
		ad.AuthenticatedData = true
		if a, err := v.answerAD(&ad, name, now); err == nil {
			checkAnswer(t, a, name)
		}
		if a, err := v.answerLocal(r, name, keys, now); err == nil {
			checkAnswer(t, a, name)
			for _, rr := range a.tlsa {
				if !signed[rdata(rr)] {
					t.Fatalf("local validation accepted a record the zone never signed: %v", rr)
				}
			}
		}
		if _, err := v.answerLocal(r, name, keys, signedAt.Add(48*time.Hour)); err == nil {
			t.Fatal("local validation accepted a signature past its expiration")
		}
		if got, err := anchoredKeys(r, "iot.example.", anchors, now); err == nil {
			for tag, k := range got {
				if k.KeyTag() != tag || !strings.EqualFold(k.Hdr.Name, "iot.example.") {
					t.Fatalf("key %d: %v", tag, k)
				}
			}
		}
	})
}

func rdata(rr *dns.TLSA) string {
	return fmt.Sprint(rr.Usage, rr.Selector, rr.MatchingType, strings.ToLower(rr.Certificate))
}

func checkAnswer(t *testing.T, a answer, name string) {
	t.Helper()
	if a.ttl < 0 || a.ttl > 10*time.Minute {
		t.Fatalf("cached for %v", a.ttl)
	}
	if len(a.tlsa) == 0 && a.ttl > MaxNegativeTTL {
		t.Fatalf("a proven absence cached for %v", a.ttl)
	}
	for _, rr := range a.tlsa {
		if !strings.EqualFold(rr.Hdr.Name, name) {
			t.Fatalf("a record at another name: %v", rr)
		}
	}
}
