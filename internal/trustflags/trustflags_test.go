package trustflags

import (
	"flag"
	"io"
	"strings"
	"testing"
)

const ds = "iot.example. 3600 IN DS 12345 13 2 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"

func TestVerifier(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error; "" for none
		mode string // "ad" or "local"
	}{
		{[]string{"-resolver", "127.0.0.1:53"}, "", "ad"},
		{[]string{"-resolver", "192.0.2.1:53"}, "not on loopback", ""},
		{[]string{"-resolver", "192.0.2.1:53", "-resolver-trusted"}, "", "ad"},
		{[]string{"-ds", ds, "-server", "127.0.0.1:1053"}, "", "local"},
		{[]string{"-ds", ds}, "give -resolver", ""},
		{[]string{}, "give -resolver", ""},
		{[]string{"-ds", "not a record", "-server", "127.0.0.1:1053"}, "-ds", ""},
		{[]string{"-ds", "iot.example. A 192.0.2.1", "-server", "127.0.0.1:1053"}, "neither a DS nor a DNSKEY", ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := Register(fs, "", "")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		v, err := f.Verifier([]string{"iot.example."})
		switch {
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.mode == "ad" && (v.Resolver == "" || len(v.TrustAnchor) != 0):
			t.Errorf("%v: not trusting the resolver: %+v", tc.args, v)
		case tc.mode == "local" && (len(v.TrustAnchor) != 1 || v.Server != "127.0.0.1:1053"):
			t.Errorf("%v: not validating locally: %+v", tc.args, v)
		}
	}
}
