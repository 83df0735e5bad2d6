package testenv

import (
	"flag"
	"strings"
	"testing"
)

// CheckUsage fails t unless text, a command's -h, has a usage line, an example, and
// every flag of fs with its default (when it has one).
func CheckUsage(t testing.TB, fs *flag.FlagSet, text string) {
	t.Helper()
	for _, want := range []string{"usage: ", "example:"} {
		if !strings.Contains(text, want) {
			t.Errorf("-h lacks %q:\n%s", want, text)
		}
	}
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(text, "  -"+f.Name+" ") && !strings.Contains(text, "  -"+f.Name+"\n") {
			t.Errorf("-h lacks -%s:\n%s", f.Name, text)
		}
		if d := f.DefValue; d != "" && d != "0" && d != "false" && !strings.Contains(text, d) {
			t.Errorf("-h lacks -%s's default %q", f.Name, d)
		}
	})
	if n == 0 {
		t.Error("no flags to check")
	}
}
