package ratelimit

import (
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestLimitValidate(t *testing.T) {
	tests := []struct {
		l  Limit
		ok bool
	}{
		{Limit{Rate: 1}, true},
		{Limit{Rate: 0.5, Burst: 3}, true},
		{Limit{Rate: 0}, false},
		{Limit{Rate: -1}, false},
		{Limit{Rate: math.NaN()}, false},
		{Limit{Rate: math.Inf(1)}, false},
		{Limit{Rate: 1, Burst: -1}, false},
	}
	for _, tc := range tests {
		_, err := NewBucket(tc.l)
		if (err == nil) != tc.ok {
			t.Errorf("NewBucket(%+v): err %v, want ok=%v", tc.l, err, tc.ok)
		}
		_, err = NewKeyed(tc.l)
		if (err == nil) != tc.ok {
			t.Errorf("NewKeyed(%+v): err %v, want ok=%v", tc.l, err, tc.ok)
		}
	}
}

// step is one call: at time ms, cost n, expected admission.
type step struct {
	ms   int
	n    int
	want bool
}

func TestBucketSequences(t *testing.T) {
	tests := []struct {
		name  string
		limit Limit
		steps []step
	}{
		{"burst then refusal", Limit{Rate: 10, Burst: 3}, []step{
			{0, 1, true}, {0, 1, true}, {0, 1, true}, {0, 1, false},
		}},
		{"refills at the rate", Limit{Rate: 10, Burst: 2}, []step{
			{0, 2, true}, {0, 1, false}, {99, 1, false}, {100, 1, true}, {150, 1, false}, {300, 2, true},
		}},
		{"refill is capped at the burst", Limit{Rate: 100, Burst: 2}, []step{
			{0, 2, true}, {10_000, 1, true}, {10_000, 1, true}, {10_000, 1, false},
		}},
		{"default burst is one second's worth", Limit{Rate: 2.5}, []step{
			{0, 1, true}, {0, 1, true}, {0, 1, true}, {0, 1, false},
		}},
		{"default burst is at least one", Limit{Rate: 0.5}, []step{
			{0, 1, true}, {1000, 1, false}, {2000, 1, true},
		}},
		{"a batch larger than the burst needs a full bucket and is repaid", Limit{Rate: 10, Burst: 5}, []step{
			{0, 1, true}, {0, 20, false}, // not full
			{100, 20, true},  // full again: admitted, balance -15
			{1000, 1, false}, // -15 + 9 = -6
			{2000, 1, true},  // -6 + 10 = 4: admitted
		}},
		{"zero cost always passes", Limit{Rate: 1, Burst: 1}, []step{
			{0, 1, true}, {0, 0, true}, {0, -3, true}, {0, 1, false},
		}},
		{"a clock stepping back mints nothing", Limit{Rate: 10, Burst: 1}, []step{
			{1000, 1, true}, {0, 1, false}, {500, 1, false}, {1050, 1, false}, {1100, 1, true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBucket(tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				if got := b.AllowN(at(s.ms), s.n); got != s.want {
					t.Fatalf("step %d (t=%dms n=%d): admitted %v, want %v (tokens %.2f)", i, s.ms, s.n, got, s.want, b.Tokens(at(s.ms)))
				}
			}
		})
	}
}

// TestBucketLongRunRate: whatever the mix of batch sizes, admitted tokens
// over a long run stay within rate*duration + burst.
func TestBucketLongRunRate(t *testing.T) {
	for _, batch := range []int{1, 3, 7, 50} {
		t.Run(fmt.Sprint("batch ", batch), func(t *testing.T) {
			l := Limit{Rate: 100, Burst: 20}
			b, _ := NewBucket(l)
			admitted := 0
			const seconds = 30
			for ms := 0; ms <= seconds*1000; ms++ {
				for b.AllowN(at(ms), batch) {
					admitted += batch
				}
			}
			maxAllowed := int(l.Rate*seconds) + l.Burst + batch
			minAllowed := int(l.Rate*seconds) - batch
			if admitted > maxAllowed || admitted < minAllowed {
				t.Fatalf("admitted %d tokens in %d s, want %d..%d", admitted, seconds, minAllowed, maxAllowed)
			}
		})
	}
}

func TestKeyedIsolatesKeys(t *testing.T) {
	k, err := NewKeyed(Limit{Rate: 1, Burst: 2})
	if err != nil {
		t.Fatal(err)
	}
	now := at(0)
	for i := 0; i < 2; i++ {
		if !k.AllowN("noisy", now, 1) {
			t.Fatalf("noisy call %d refused within the burst", i)
		}
	}
	if k.AllowN("noisy", now, 1) {
		t.Fatal("noisy device admitted beyond its burst")
	}
	// Another device is untouched by the noisy one.
	for i := 0; i < 2; i++ {
		if !k.AllowN("quiet", now, 1) {
			t.Fatalf("quiet device refused (call %d) because of another device", i)
		}
	}
}

// TestKeyedSweepBoundsMemory: buckets of devices that went quiet are
// dropped once refilled, and dropping them does not reset a device that is
// still over its limit.
func TestKeyedSweepBoundsMemory(t *testing.T) {
	k, _ := NewKeyed(Limit{Rate: 10, Burst: 10})
	for i := 0; i < 10000; i++ {
		k.AllowN(fmt.Sprint("dev-", i), at(0), 1)
	}
	if n := k.Len(); n != 10000 {
		t.Fatalf("%d buckets after 10000 devices, want 10000 (none refilled yet)", n)
	}
	// Drain one device completely; at t=1s the others are full again.
	for k.AllowN("hot", at(900), 1) {
	}
	k.Sweep(at(1000))
	if n := k.Len(); n != 1 {
		t.Fatalf("%d buckets after the sweep, want 1 (the hot device)", n)
	}
	if k.AllowN("hot", at(1000), 2) {
		t.Fatal("the hot device was reset by the sweep")
	}
	// Sweeps also happen by themselves as time passes: a shard sweeps when
	// it is next used. New keys, one per shard, touch every shard.
	for i := 0; i < 100; i++ {
		k.AllowN(fmt.Sprint("later-", i), at(5000+i), 1)
	}
	touched := map[uint64]bool{}
	for i := 0; len(touched) < shards; i++ {
		key := fmt.Sprint("new-", i)
		if sh := maphash.String(k.seed, key) % shards; !touched[sh] {
			touched[sh] = true
			k.AllowN(key, at(60_000), 1)
		}
	}
	if n := k.Len(); n != shards {
		t.Fatalf("%d buckets long after everyone went quiet, want the %d new ones", n, shards)
	}
}

// TestKeyedConcurrent: many goroutines sharing a limiter never admit more
// than the burst at one instant (run with -race).
func TestKeyedConcurrent(t *testing.T) {
	k, _ := NewKeyed(Limit{Rate: 1, Burst: 100})
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if k.AllowN("shared", at(0), 1) {
					admitted.Add(1)
				}
				k.AllowN(fmt.Sprint("own-", g), at(0), 1)
			}
		}()
	}
	wg.Wait()
	if got := admitted.Load(); got != 100 {
		t.Fatalf("admitted %d at one instant, want exactly the burst of 100", got)
	}
}

func BenchmarkKeyedAllow(b *testing.B) {
	k, _ := NewKeyed(Limit{Rate: 1e9, Burst: 1 << 30})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprint("device-", i)
	}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			k.AllowN(keys[i&1023], now, 1)
			i++
		}
	})
}

func BenchmarkBucketAllow(b *testing.B) {
	bk, _ := NewBucket(Limit{Rate: 1e9, Burst: 1 << 30})
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		bk.Allow(now)
	}
}
