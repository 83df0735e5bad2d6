package testenv

import (
	"sync"
	"time"
)

// Clock is a clock a test moves by hand; its Now stands in for time.Now.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock is a clock that shows t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now is the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
