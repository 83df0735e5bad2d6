package verify

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// lru is a size-bounded cache of TLSA answers by name, least recently used out first.
type lru struct {
	mu    sync.Mutex
	size  int
	order *list.List // front: most recently used; elements hold *entry
	names map[string]*list.Element
}

type entry struct {
	name    string
	tlsa    []*dns.TLSA
	expires time.Time
}

func newLRU(size int) *lru {
	return &lru{size: size, order: list.New(), names: make(map[string]*list.Element)}
}

// get returns the records cached for name, and until when, if they are fresh at now.
func (c *lru) get(name string, now time.Time) ([]*dns.TLSA, time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.names[name]
	if !ok {
		return nil, time.Time{}, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		c.order.Remove(el)
		delete(c.names, name)
		return nil, time.Time{}, false
	}
	c.order.MoveToFront(el)
	return e.tlsa, e.expires, true
}

// put caches the records of name until expires, dropping the least recently used
// name when full.
func (c *lru) put(name string, tlsa []*dns.TLSA, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.names[name]; ok {
		el.Value = &entry{name, tlsa, expires}
		c.order.MoveToFront(el)
		return
	}
	if c.order.Len() >= c.size {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.names, oldest.Value.(*entry).name)
	}
	c.names[name] = c.order.PushFront(&entry{name, tlsa, expires})
}

func (c *lru) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
