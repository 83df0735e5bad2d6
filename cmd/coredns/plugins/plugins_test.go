package plugins

import (
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// Every directive in the list is a registered plugin and every registered plugin has
// a place in the list: a Corefile can use what the binary lists with -plugins.
func TestDirectives(t *testing.T) {
	if !slices.Equal(dnsserver.Directives, Directives) {
		t.Fatalf("installed directives %v, want %v", dnsserver.Directives, Directives)
	}
	var registered []string // as coredns -plugins lists them
	for _, p := range caddy.ListPlugins()["others"] {
		if name, ok := strings.CutPrefix(p, "dns."); ok {
			registered = append(registered, name)
		}
	}
	if !slices.Contains(registered, "deviceid") {
		t.Errorf("deviceid is not registered: %v", registered)
	}
	for _, p := range registered {
		if !slices.Contains(Directives, p) {
			t.Errorf("plugin %q is registered but has no place in Directives", p)
		}
	}
	for _, d := range Directives {
		if !slices.Contains(registered, d) {
			t.Errorf("directive %q is not a registered plugin", d)
		}
	}
}
