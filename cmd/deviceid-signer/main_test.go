package main

import (
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
)

// TestMain removes the SoftHSM2 token the tests made (testenv.Main).
func TestMain(m *testing.M) { testenv.Main(m) }

// TestUnknownCommand: a misspelt command, a main one or an admin one, gets the nearest
// as a suggestion; a word near none gets none, and every message ends with the usage.
func TestUnknownCommand(t *testing.T) {
	for word, want := range map[string]string{"serv": "serve", "revokd": "revoke", "tenant-creat": "tenant-create", "inti-ca": "init-ca", "frobnicate": ""} {
		msg := unknownCommand(word)
		hint := `(did you mean "` + want + `"?)`
		if want == "" {
			hint = "did you mean"
			if strings.Contains(msg, hint) {
				t.Errorf("%s: %q", word, msg)
			}
		} else if !strings.Contains(msg, hint) {
			t.Errorf("%s: %q lacks %s", word, msg, hint)
		}
		if !strings.HasSuffix(msg, usage) {
			t.Errorf("%s: no usage after the message", word)
		}
	}
}
