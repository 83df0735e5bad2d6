package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{empty, "", "", false},
		{"-", "", "", false},
		{filepath.Join(t.TempDir(), "missing"), "", "", false},
	} {
		got, err := readCode(tc.file, strings.NewReader(tc.stdin))
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("readCode(%q, %q) = %q, %v; want %q, ok=%v", tc.file, tc.stdin, got, err, tc.want, tc.ok)
		}
	}
}
