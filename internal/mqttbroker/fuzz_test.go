package mqttbroker

import (
	"strings"
	"testing"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// FuzzBrokerACL checks the broker's one ACL decision on arbitrary client ids, topics
// and directions. Invariants: a topic is allowed only under devices/<id>/ of a valid
// device name (none holds '/', '+', '#', '$' or NUL), a published topic holds no
// wildcard, no topic is $-prefixed, NUL-bearing, invalid UTF-8 or longer than the
// bounds on its levels and bytes (mochi's topic index is quadratic in levels: this
// fuzz target stalled on long ones before the bound); an allowed filter,
// subscribed in mochi's own topic index, matches no topic of another device nor
// $SYS; and a plain topic under the device's prefix is allowed.
func FuzzBrokerACL(f *testing.F) {
	for _, s := range []struct {
		device, topic string
		write         bool
	}{
		{"b", "devices/b/telemetry", true},
		{"b", "devices/b/#", false},
		{"b", "devices/b/+/x", false},
		{"b", "devices/a/#", false},
		{"b", "$share/g/devices/b/#", false},
		{"b", "$SYS/#", false},
		{"+", "devices/+/x", false},
		{"c90a.airquality", "devices/c90a.airquality/t", true},
		{"b", "devices/b/a#", false},
	} {
		f.Add(s.device, s.topic, s.write)
	}
	f.Fuzz(func(t *testing.T, device, topic string, write bool) {
		ok := allowed(device, topic, write)
		prefix := "devices/" + device + "/"
		if rest, under := strings.CutPrefix(topic, prefix); validDevice(device) && under && rest != "" && len(rest) <= maxTopicRest &&
			strings.Count(rest, "/") < maxTopicLevels && !strings.ContainsAny(rest, "+#\x00") && utf8.ValidString(rest) && !ok {
			t.Fatalf("%q may not publish or subscribe to its own %q", device, topic)
		}
		if !ok {
			return
		}
		switch {
		case !validDevice(device) || strings.ContainsAny(device, "/+#$\x00"):
			t.Fatalf("allowed for the client id %q", device)
		case !strings.HasPrefix(topic, prefix):
			t.Fatalf("%q allowed %q, outside %s", device, topic, prefix)
		case len(topic)-len(prefix) > maxTopicRest || strings.Count(topic, "/")-strings.Count(prefix, "/") >= maxTopicLevels:
			t.Fatalf("%q allowed %d bytes, %d levels", device, len(topic), strings.Count(topic, "/")+1)
		case write && strings.ContainsAny(topic, "+#"):
			t.Fatalf("%q may publish to %q, with a wildcard", device, topic)
		case strings.HasPrefix(topic, "$") || strings.ContainsRune(topic, 0) || !utf8.ValidString(topic):
			t.Fatalf("%q allowed %q", device, topic)
		}
		if write || !mqtt.IsValidFilter(topic, false) {
			return
		}
		index := mqtt.NewTopicsIndex()
		index.Subscribe("c", packets.Subscription{Filter: topic})
		for _, other := range []string{"devices/other/t", "devices/" + device + "x/t", "devices/x" + device + "/t",
			"devices/" + device + ".x/t", "devices/" + device + "-x/t", "$SYS/broker/clients", "devices/+/t", "t"} {
			if strings.HasPrefix(other, prefix) {
				continue
			}
			if subs := index.Subscribers(other); len(subs.Subscriptions) > 0 {
				t.Fatalf("%q's filter %q matches %q", device, topic, other)
			}
		}
	})
}
