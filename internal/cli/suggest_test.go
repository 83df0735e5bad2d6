package cli

import "testing"

func TestNearest(t *testing.T) {
	commands := []string{"serve", "init-ca", "keygen", "revoke", "resume", "suspend", "list", "show", "transfer", "transfer-accept"}
	for _, tc := range []struct{ word, want string }{
		{"serv", "serve"},
		{"revokd", "revoke"},
		{"REVOKE", "revoke"},
		{"initca", "init-ca"},
		{"lsit", "list"}, // a transposition is two edits
		{"transfer-acept", "transfer-accept"},
		{"suspnd", "suspend"},
		{"x", ""},          // one letter: anything is one edit away
		{"frobnicate", ""}, // nothing close
		{"", ""},
	} {
		if got := Nearest(tc.word, commands); got != tc.want {
			t.Errorf("Nearest(%q) = %q, want %q", tc.word, got, tc.want)
		}
	}
	if got := Hint("revokd", commands); got != ` (did you mean "revoke"?)` {
		t.Errorf("Hint = %q", got)
	}
	if got := Hint("frobnicate", commands); got != "" {
		t.Errorf("Hint for nothing close = %q", got)
	}
}

func TestDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"flaw", "lawn", 2}, {"ü", "u", 1},
	} {
		if got := distance(tc.a, tc.b); got != tc.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
