package deviceid

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

// TestREADMEOptions keeps README.md's Syntax and setup in step: every option (and
// rrl setting) the Syntax names is one parse knows, and every option parseOption
// takes is in the Syntax.
func TestREADMEOptions(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)## Syntax\n\n~~~ txt\ndeviceid \[ZONES\.\.\.\] \{\n(.*?)\n\}\n~~~`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no Syntax block in README.md")
	}
	var documented []string
	for _, line := range strings.Split(string(m[1]), "\n") {
		f := strings.Fields(line)
		documented = append(documented, f[0])
		// Without its arguments an option is refused, but not as unknown.
		if _, err := parse(caddy.NewTestController("dns", "deviceid iot.example {\n"+strings.Join(f[:1], " ")+"\n}")); err != nil && strings.Contains(err.Error(), "unknown property") {
			t.Errorf("README's %q: %v", line, err)
		}
		if f[0] != "rrl" {
			continue
		}
		for _, s := range regexp.MustCompile(`\[([a-z0-9_]+) `).FindAllStringSubmatch(line, -1) {
			_, err := parse(caddy.NewTestController("dns", "deviceid iot.example {\nrrl 100 "+s[1]+" x\n}"))
			if err == nil || strings.Contains(err.Error(), "unknown setting") {
				t.Errorf("README's rrl setting %s: %v", s[1], err)
			}
		}
	}
	for _, opt := range parsedOptions(t) {
		if !slices.Contains(documented, opt) {
			t.Errorf("setup parses %q, which README.md's Syntax does not name", opt)
		}
	}
}

// parsedOptions returns the options of parseOption's switch, read from setup.go.
func parsedOptions(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "setup.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "parseOption" {
			for _, st := range fn.Body.List {
				sw, ok := st.(*ast.SwitchStmt)
				if !ok {
					continue
				}
				for _, cc := range sw.Body.List {
					for _, e := range cc.(*ast.CaseClause).List {
						if lit, ok := e.(*ast.BasicLit); ok {
							s, _ := strconv.Unquote(lit.Value)
							opts = append(opts, s)
						}
					}
				}
			}
		}
	}
	if len(opts) < 10 {
		t.Fatalf("parseOption has %d options, want at least 10 (has setup.go changed shape?)", len(opts))
	}
	return opts
}
