package test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestMakeHelp: make help lists every described target of the Makefile, each
// description starting in the same column.
func TestMakeHelp(t *testing.T) {
	cmd := exec.Command("make", "-s", "help")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	targets := regexp.MustCompile(`(?m)^([a-z0-9-]+):.*## `).FindAllStringSubmatch(string(makefile), -1)
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(targets) || len(targets) < 10 {
		t.Fatalf("%d lines for %d targets:\n%s", len(lines), len(targets), out)
	}
	column := -1
	for i, line := range lines {
		name := targets[i][1]
		rest, ok := strings.CutPrefix(line, "  make "+name+" ")
		if !ok {
			t.Errorf("line %q, want target %s", line, name)
			continue
		}
		col := len(line) - len(strings.TrimLeft(rest, " "))
		if column == -1 {
			column = col
		} else if col != column {
			t.Errorf("%s's description starts in column %d, the first's in %d:\n%s", name, col, column, out)
		}
	}
}
