package device

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/verify"
)

// TestNextDelay: the waits double from a second to 30 s, and from a minute to an hour
// while the device's key is refused; a refused device that DNS vouches for again falls
// back to the short waits.
func TestNextDelay(t *testing.T) {
	var got []time.Duration
	d := time.Duration(0)
	for _, refused := range []bool{false, false, false, false, false, false, false, true, true, true, true, true, true, true, true, false} {
		d = nextDelay(d, refused)
		got = append(got, d)
	}
	s, m := time.Second, time.Minute
	want := []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s, m, 2 * m, 4 * m, 8 * m, 16 * m, 32 * m, time.Hour, time.Hour, 30 * s}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
}

// TestRunBacksOffWhenRefused drives Run with a fake timer (every wait recorded and over
// at once) and sessions that fail as scripted: the broker unreachable, then a
// connection that breaks, then the key revoked for a while, then vouched for again. The
// waits follow nextDelay, a connection starts them over, and the revocation is logged
// once, however many attempts it refuses.
func TestRunBacksOffWhenRefused(t *testing.T) {
	type step struct{ connects, revoked bool }
	var steps []step
	steps = append(steps, step{}, step{}, step{}, step{connects: true}, step{})
	for range 10 {
		steps = append(steps, step{revoked: true})
	}
	steps = append(steps, step{}, step{})

	var logs bytes.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	now := time.Now()
	var waits []time.Duration
	d := &Device{log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		cert: &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(1000 * time.Hour)}}
	d.c.After = func(w time.Duration) <-chan time.Time {
		waits = append(waits, w)
		c := make(chan time.Time, 1)
		c <- now
		return c
	}
	attempt := 0
	d.connect = func(context.Context) error {
		if attempt == len(steps) {
			cancel()
			return ctx.Err()
		}
		d.connected = steps[attempt].connects
		return fmt.Errorf("attempt %d failed", attempt)
	}
	d.refused = func(context.Context) error {
		defer func() { attempt++ }()
		if steps[attempt].revoked {
			return fmt.Errorf("%w: thermo1._device.iot.example. 255 1 1", verify.ErrRevoked)
		}
		return nil
	}
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
	s, m := time.Second, time.Minute
	want := []time.Duration{s, 2 * s, 4 * s, s, 2 * s, // the broker away; a connection starts over
		m, 2 * m, 4 * m, 8 * m, 16 * m, 32 * m, time.Hour, time.Hour, time.Hour, time.Hour, // revoked
		30 * s, 30 * s} // vouched for again, the broker still away
	if !slices.Equal(waits, want) {
		t.Errorf("waits %v\nwant  %v", waits, want)
	}
	text := logs.String()
	if n := strings.Count(text, "no longer vouches"); n != 1 {
		t.Errorf("the refusal logged %d times, want once:\n%s", n, text)
	}
	if !strings.Contains(text, "revoked") || !strings.Contains(text, "vouches for this device's key again") {
		t.Errorf("log lacks the reason or the recovery:\n%s", text)
	}
	if n := strings.Count(text, "level=WARN"); n != 7 {
		t.Errorf("%d warnings, want 7 (one a failed attempt DNS did not refuse):\n%s", n, text)
	}
	if errors.Is(ctx.Err(), context.Canceled) && attempt != len(steps) {
		t.Errorf("stopped after %d attempts, want %d", attempt, len(steps))
	}
}
