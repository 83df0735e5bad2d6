package mqttbroker

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the broker's Stats as Prometheus metrics (deviceid_mqtt_*), read at
// each scrape; deviceid-mqtt -metrics serves them.
func (b *Broker) Collectors() []prometheus.Collector {
	counter := func(name, help string, v func(Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "deviceid", Subsystem: "mqtt", Name: name, Help: help},
			func() float64 { return float64(v(b.Stats())) })
	}
	gauge := func(name, help string, v func(Stats) int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "deviceid", Subsystem: "mqtt", Name: name, Help: help},
			func() float64 { return float64(v(b.Stats())) })
	}
	return []prometheus.Collector{
		gauge("sessions", "Gauge of the devices connected.", func(s Stats) int64 { return s.Sessions }),
		gauge("retained_messages", "Gauge of the retained messages held, $SYS included.", func(s Stats) int64 { return s.Retained }),
		counter("handshakes_refused_total", "Counter of TLS handshakes refused by DANE: a key revoked, unknown or not vouched for, or DNS unreachable.", func(s Stats) int64 { return s.HandshakesRefused }),
		counter("sessions_revoked_total", "Counter of sessions cut off because DNS no longer vouches for the device's key.", func(s Stats) int64 { return s.Revoked }),
		counter("sessions_unverified_total", "Counter of sessions cut off because DNS could not be reached past their answer's expiry and the grace.", func(s Stats) int64 { return s.Unverified }),
		counter("clean_starts_total", "Counter of connections started clean: the name's session or retained messages were another key's, or a cut-off session's.", func(s Stats) int64 { return s.CleanStarts }),
		counter("wills_refused_total", "Counter of connections refused for their Will.", func(s Stats) int64 { return s.WillsRefused }),
		counter("publishes_refused_total", "Counter of publishes refused by the topic rules.", func(s Stats) int64 { return s.PublishesRefused }),
		counter("retained_refused_total", "Counter of retained publishes over the device's quota.", func(s Stats) int64 { return s.RetainedRefused }),
		counter("subscriptions_refused_total", "Counter of topic filters over the device's quota.", func(s Stats) int64 { return s.SubscriptionsRefused }),
		counter("packets_too_large_total", "Counter of connections closed for a packet over -max-packet-size.", func(s Stats) int64 { return s.PacketsTooLarge }),
	}
}
