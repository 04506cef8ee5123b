package jsregistry

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkGetDevice measures the cache hit the hub makes on every
// connection and token renewal.
func BenchmarkGetDevice(b *testing.B) {
	ctx := context.Background()
	_, js := newJS(b)
	s := open(b, js, freshBucket())
	const devices = 1000
	for i := range devices {
		if _, err := s.CreateDevice(ctx, sasDevice(fmt.Sprintf("dev-%04d", i))); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.GetDevice(ctx, ids[i%devices]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkCreateDevice measures one replicated write (R1, embedded
// server, memory storage) plus the cache update.
func BenchmarkCreateDevice(b *testing.B) {
	ctx := context.Background()
	_, js := newJS(b)
	s := open(b, js, freshBucket())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.CreateDevice(ctx, sasDevice(fmt.Sprintf("dev-%d", i))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
