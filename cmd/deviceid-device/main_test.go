package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
)

// TestReadCode: the code comes from a file or standard input, trimmed; an empty one is
// an error, and no file means no code.
func TestReadCode(t *testing.T) {
	file := filepath.Join(t.TempDir(), "code")
	os.WriteFile(file, []byte("ABCD1234\n"), 0o600)
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, tc := range []struct {
		file, stdin, want string
		ok                bool
	}{
		{file, "", "ABCD1234", true},
		{"-", " EFGH5678\n", "EFGH5678", true},
		{"", "ignored", "", true},
		{empty, "", "", true}, // enrolled before: make run writes no code again
		{"-", "", "", false},
		{filepath.Join(t.TempDir(), "missing"), "", "", false},
	} {
		got, err := readCode(tc.file, strings.NewReader(tc.stdin))
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("readCode(%q, %q) = %q, %v; want %q, ok=%v", tc.file, tc.stdin, got, err, tc.want, tc.ok)
		}
	}
}

// TestUsage: -h has the usage line, an example and every flag with its default.
func TestUsage(t *testing.T) {
	var text bytes.Buffer
	fs := flag.NewFlagSet("deviceid-device", flag.ContinueOnError)
	fs.SetOutput(&text)
	if err := run(fs, []string{"-h"}, strings.NewReader(""), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	testenv.CheckUsage(t, fs, text.String())
}
