package registry

import (
	"fmt"
	"hash/maphash"
	"sync"
	"time"
)

// Quotas bound the etcd writes of tenants and of devices, so that none can fill etcd
// (its history grows with every write until it is compacted, and a full etcd refuses
// every write, revocations included): a tenant's writes by bytes, a device's own
// enrollments by count. Zero rates are no bound (the operator is never bound).
type Quotas struct {
	TenantBytesPerSecond float64
	TenantBurstBytes     float64
	DeviceWritesPerHour  float64
	DeviceWriteBurst     float64
	once                 sync.Once
	tenants, devices     *Buckets
}

// DefaultQuotas are a serving signer's: 256 KiB/s per tenant (a thousand new devices
// a second at a few hundred bytes each) after a burst of 16 MiB, and ten enrollments
// per device, then six an hour (a device renews once a year).
func DefaultQuotas() *Quotas {
	return &Quotas{TenantBytesPerSecond: 256 << 10, TenantBurstBytes: 16 << 20, DeviceWritesPerHour: 6, DeviceWriteBurst: 10}
}

// MaxWrite bounds what one request may bring to be written (a CSR or a public key is
// a few KB); the HTTPS shell refuses longer request bodies.
const MaxWrite = 64 << 10

// quotaSlots bounds the tables of tenants and devices.
const quotaSlots = 16384

// charge takes a write of n bytes by actor on a record of tenant from the quotas.
func (q *Quotas) charge(actor Actor, tenant, device string, n int, now func() time.Time) (refund func(), err error) {
	refund = func() {}
	if q == nil || actor.Operator {
		return refund, nil
	}
	q.once.Do(func() {
		if q.TenantBytesPerSecond > 0 {
			q.tenants = NewBuckets(quotaSlots, q.TenantBytesPerSecond, max(q.TenantBurstBytes, float64(2*MaxWrite)), now)
		}
		if q.DeviceWritesPerHour > 0 {
			q.devices = NewBuckets(quotaSlots, q.DeviceWritesPerHour/3600, max(q.DeviceWriteBurst, 1), now)
		}
	})
	if actor.isDevice() && q.devices != nil {
		if !q.devices.Take(device, 1) {
			return refund, &RateLimitError{"the device enrolls too often", q.devices.Wait(device, 1)}
		}
		refund = func() { q.devices.Give(device, 1) }
	}
	if actor.Tenant != "" {
		tenant = actor.Tenant
	}
	if tenant != "" && q.tenants != nil {
		if !q.tenants.Take(tenant, float64(n)) {
			refund()
			return func() {}, &RateLimitError{fmt.Sprintf("tenant %q writes more than its quota", tenant), q.tenants.Wait(tenant, float64(n))}
		}
		device := refund
		refund = func() { device(); q.tenants.Give(tenant, float64(n)) }
	}
	return refund, nil
}

// Buckets are token buckets by key in a table of fixed size, so that ever new keys
// cannot grow it: a key lives in one set of four slots chosen by a hash with a random
// seed, and a new key takes the slot of its set with the most tokens left. A key that
// has used its tokens is the last to be pushed out, so a flood of new keys neither
// grows the table nor frees a limited key, and clients that collide do not share a
// bucket.
type Buckets struct {
	rate, burst float64 // tokens a second, and at most
	now         func() time.Time
	seed        maphash.Seed
	mu          sync.Mutex
	slots       []bucket
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

const bucketWays = 4

func NewBuckets(slots int, rate, burst float64, now func() time.Time) *Buckets {
	if now == nil {
		now = time.Now
	}
	slots = max(slots, bucketWays) / bucketWays * bucketWays
	return &Buckets{rate: rate, burst: burst, now: now, seed: maphash.MakeSeed(), slots: make([]bucket, slots)}
}

// slot returns key's bucket, refilled to now (callers hold mu).
func (b *Buckets) slot(key string) *bucket {
	now := b.now()
	sets := len(b.slots) / bucketWays
	set := b.slots[int(maphash.String(b.seed, key)%uint64(sets))*bucketWays:][:bucketWays]
	var fullest *bucket
	for i := range set {
		s := &set[i]
		if s.key != "" {
			s.tokens = min(b.burst, s.tokens+now.Sub(s.last).Seconds()*b.rate)
			s.last = now
		}
		if s.key == key {
			return s
		}
		if fullest == nil || s.key == "" || fullest.key != "" && s.tokens > fullest.tokens {
			fullest = s
		}
	}
	*fullest = bucket{key: key, tokens: b.burst, last: now}
	return fullest
}

// Take takes n tokens from key's bucket if it has them.
func (b *Buckets) Take(key string, n float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	if s.tokens < n {
		return false
	}
	s.tokens -= n
	return true
}

// Give gives n tokens back to key's bucket.
func (b *Buckets) Give(key string, n float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	s.tokens = min(b.burst, s.tokens+n)
}

// Wait is how long key's bucket needs to hold n tokens, at least a second.
func (b *Buckets) Wait(key string, n float64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.slot(key)
	return max(time.Second, time.Duration((n-s.tokens)/b.rate*float64(time.Second)))
}
