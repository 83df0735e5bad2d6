package deviceid

import (
	"testing"

	"github.com/miekg/dns"
)

// TestSignRRsetMatchesMiekg signs RRsets with signRRset and with dns.RRSIG.Sign. Both
// signers are deterministic (RFC 6979, Ed25519), so the same signed data must give the
// same signature, and each must validate: the records are signed in canonical form and
// order, without duplicates.
func TestSignRRsetMatchesMiekg(t *testing.T) {
	rrs := func(s ...string) []dns.RR {
		var out []dns.RR
		for _, x := range s {
			out = append(out, mustRR(t, x))
		}
		return out
	}
	tests := []struct {
		name  string
		rrset []dns.RR
	}{
		{"nsec", rrs(`nx._device.iot.example. 60 IN NSEC \000.nx._device.iot.example. RRSIG NSEC NXNAME`)},
		{"tlsa of unequal lengths, unsorted", rrs(
			"d._device.iot.example. 60 IN TLSA 3 1 1 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
			"d._device.iot.example. 60 IN TLSA 3 0 0 3059301306072a8648ce3d020106082a8648ce3d03010703420004",
			"d._device.iot.example. 60 IN TLSA 255 1 1 0102")},
		{"duplicates", rrs(
			"d._device.iot.example. 60 IN TLSA 3 1 1 0102",
			"d._device.iot.example. 60 IN TLSA 3 1 1 0102")},
		{"upper case owner and rdata names", rrs(
			"IOT.example. 60 IN NS NS1.Iot.Example.",
			"IOT.example. 60 IN NS ns2.iot.example.")},
		{"soa", rrs("iot.example. 60 IN SOA NS1.iot.example. Hostmaster.iot.example. 7 7200 1800 86400 60")},
	}
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		k, dk := testKey(t, alg)
		for _, tc := range tests {
			t.Run(dns.AlgorithmToString[alg]+"/"+tc.name, func(t *testing.T) {
				fields := dns.RRSIG{Algorithm: alg, KeyTag: k.tag, SignerName: "IOT.example.", Inception: 1e9, Expiration: 2e9}
				ours, theirs := fields, fields
				if err := signRRset(k, &ours, tc.rrset); err != nil {
					t.Fatal(err)
				}
				if err := theirs.Sign(k.signer, tc.rrset); err != nil {
					t.Fatal(err)
				}
				theirs.Hdr.Ttl = ours.Hdr.Ttl      // dns.RRSIG.Sign leaves the header TTL to its caller
				theirs.SignerName = "iot.example." // and the signer name as given; it signs it in lower case
				if ours.String() != theirs.String() {
					t.Errorf("signRRset:\n%s\ndns.RRSIG.Sign:\n%s", &ours, &theirs)
				}
				if err := ours.Verify(dk, tc.rrset); err != nil {
					t.Errorf("verify: %v", err)
				}
			})
		}
	}
}

func TestRawECDSA(t *testing.T) {
	for _, tc := range []struct {
		der string
		ok  bool
	}{
		{"\x30\x06\x02\x01\x01\x02\x01\x02", true},                                  // r = 1, s = 2
		{"\x30\x06\x02\x01\x01\x02\x01", false},                                     // truncated
		{"\x30\x26\x02\x21\x01" + string(make([]byte, 32)) + "\x02\x01\x01", false}, // r wider than 32 octets
		{"", false},
	} {
		raw := make([]byte, 64)
		err := rawECDSAInto(raw, []byte(tc.der))
		if (err == nil) != tc.ok {
			t.Errorf("%x: err %v, want ok %v", tc.der, err, tc.ok)
		}
		if tc.ok && (len(raw) != 64 || raw[31] != 1 || raw[63] != 2) {
			t.Errorf("%x: raw %x", tc.der, raw)
		}
	}
}

// testKey writes a CSK for iot.example. and loads it.
func testKey(t *testing.T, alg uint8) (*key, *dns.DNSKEY) {
	t.Helper()
	k, err := loadKey(genKey(t, t.TempDir(), "iot.example.", alg, true))
	if err != nil {
		t.Fatal(err)
	}
	return k, k.dnskey
}

// rdataOf packs rr and returns its RDATA.
func rdataOf(t *testing.T, rr dns.RR) []byte {
	t.Helper()
	buf := make([]byte, dns.Len(rr))
	off, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return buf[off-int(rr.Header().Rdlength) : off]
}

func mustRR(t *testing.T, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}
