// Package ratelimit provides token buckets for throttling device
// operations: one Bucket per connection, and Keyed for one bucket per
// device id with memory bounded by the number of devices that are actually
// over their limit.
//
// A bucket holds up to Burst tokens and gains Rate tokens per second. An
// operation costing n tokens is admitted when the bucket holds at least
// min(n, Burst) tokens; the full n is then taken, and the balance may go
// negative. A batch larger than the burst is therefore admitted when the
// bucket is full and repaid before anything else is admitted, so the long
// run rate never exceeds Rate whatever the batch sizes.
//
// Time is passed in by the caller (time.Now in production, a fake clock
// in tests) so the arithmetic is deterministic.
package ratelimit

import (
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// Limit is a rate with a burst.
type Limit struct {
	// Rate is the sustained rate in tokens per second; it must be > 0.
	Rate float64
	// Burst is how many tokens the bucket holds when full; 0 means
	// max(1, ceil(Rate)), one second's worth.
	Burst int
}

// Validate reports whether l is usable.
func (l Limit) Validate() error {
	if math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0) || l.Rate <= 0 {
		return fmt.Errorf("ratelimit: rate %v must be a positive number", l.Rate)
	}
	if l.Burst < 0 {
		return fmt.Errorf("ratelimit: burst %d must not be negative", l.Burst)
	}
	return nil
}

func (l Limit) burst() float64 {
	if l.Burst > 0 {
		return float64(l.Burst)
	}
	return max(1, math.Ceil(l.Rate))
}

// Bucket is one token bucket. It is safe for concurrent use.
type Bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

// NewBucket returns a full bucket for l, or an error if l is invalid.
func NewBucket(l Limit) (*Bucket, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	b := l.burst()
	return &Bucket{rate: l.Rate, burst: b, tokens: b}, nil
}

// Allow takes one token if the bucket has one.
func (b *Bucket) Allow(now time.Time) bool { return b.AllowN(now, 1) }

// AllowN admits an operation costing n tokens (see the package doc). n <= 0
// is always admitted and takes nothing.
func (b *Bucket) AllowN(now time.Time, n int) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.allowLocked(now, float64(n))
}

func (b *Bucket) refillLocked(now time.Time) {
	if b.last.IsZero() {
		b.last = now
		return
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	// A clock that steps back leaves the balance alone rather than
	// minting or destroying tokens.
}

func (b *Bucket) allowLocked(now time.Time, n float64) bool {
	b.refillLocked(now)
	if b.tokens < min(n, b.burst) {
		return false
	}
	b.tokens -= n
	return true
}

// Tokens returns the balance at now (negative while a large batch is
// being repaid).
func (b *Bucket) Tokens(now time.Time) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked(now)
	return b.tokens
}

// full reports whether the bucket is back at its burst at now, i.e.
// indistinguishable from a new one. Caller holds the shard lock, not b.mu.
func (b *Bucket) full(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked(now)
	return b.tokens >= b.burst
}

// shards spreads Keyed's map over locks so that devices on different
// connections (different reader goroutines) rarely contend.
const shards = 64

// Keyed holds one bucket per key (a device id), created on first use. A
// bucket that has refilled completely is equivalent to a new one, so
// sweeps drop such buckets: memory is bounded by the keys active within
// the last Burst/Rate seconds, not by every key ever seen.
type Keyed struct {
	limit Limit
	seed  maphash.Seed
	sh    [shards]keyedShard
}

type keyedShard struct {
	mu      sync.Mutex
	m       map[string]*Bucket
	ops     int       // operations since the last sweep
	lastSwp time.Time // time of the last sweep
}

// sweepEvery is how many operations a shard serves between sweeps; a
// sweep also happens when the refill time has passed since the last one.
const sweepEvery = 4096

// NewKeyed returns a Keyed limiter, or an error if l is invalid.
func NewKeyed(l Limit) (*Keyed, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	k := &Keyed{limit: l, seed: maphash.MakeSeed()}
	for i := range k.sh {
		k.sh[i].m = make(map[string]*Bucket)
	}
	return k, nil
}

// Limit returns the limit every key gets.
func (k *Keyed) Limit() Limit { return k.limit }

// AllowN admits an operation of key costing n tokens.
func (k *Keyed) AllowN(key string, now time.Time, n int) bool {
	if n <= 0 {
		return true
	}
	s := &k.sh[maphash.String(k.seed, key)%shards]
	s.mu.Lock()
	// Sweep before the lookup: a sweep must not drop the bucket this call
	// is about to charge.
	s.ops++
	if s.ops >= sweepEvery || now.Sub(s.lastSwp) > k.refillTime() {
		s.sweepLocked(now)
	}
	b := s.m[key]
	if b == nil {
		bb := k.limit.burst()
		b = &Bucket{rate: k.limit.Rate, burst: bb, tokens: bb}
		s.m[key] = b
	}
	// Bucket.mu nests inside the shard lock; nothing takes them the
	// other way round.
	ok := b.AllowN(now, n)
	s.mu.Unlock()
	return ok
}

// refillTime is how long an empty bucket takes to fill up.
func (k *Keyed) refillTime() time.Duration {
	return time.Duration(k.limit.burst() / k.limit.Rate * float64(time.Second))
}

func (s *keyedShard) sweepLocked(now time.Time) {
	s.ops = 0
	s.lastSwp = now
	for key, b := range s.m {
		if b.full(now) {
			delete(s.m, key)
		}
	}
}

// Len returns the number of buckets held (tests and metrics).
func (k *Keyed) Len() int {
	n := 0
	for i := range k.sh {
		s := &k.sh[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Sweep drops every bucket that has refilled completely by now.
func (k *Keyed) Sweep(now time.Time) {
	for i := range k.sh {
		s := &k.sh[i]
		s.mu.Lock()
		s.sweepLocked(now)
		s.mu.Unlock()
	}
}
