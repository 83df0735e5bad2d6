package keymgr

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestParseTSIG(t *testing.T) {
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=" // 21 bytes
	tests := []struct {
		in   string
		want TSIG
		err  string
	}{
		{"hmac-sha256:parent-update:" + secret, TSIG{dns.HmacSHA256, "parent-update.", secret}, ""},
		{"Parent-Update:" + secret + "\n", TSIG{dns.HmacSHA256, "parent-update.", secret}, ""},
		{"hmac-sha512:k.example.:" + secret, TSIG{dns.HmacSHA512, "k.example.", secret}, ""},
		{"hmac-md5:k:" + secret, TSIG{}, "hmac-md5"},
		{"k:c2hvcnQ=", TSIG{}, "16 bytes"},
		{"k:!!!", TSIG{}, "base64"},
		{secret, TSIG{}, "name:base64"},
		{":" + secret, TSIG{}, "name:base64"},
		{"a:b:c:d", TSIG{}, "name:base64"},
	}
	for _, tt := range tests {
		got, err := ParseTSIG(tt.in)
		if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("ParseTSIG(%q): error %v, want %q", tt.in, err, tt.err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseTSIG(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
