package c2d_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"amqphub/store/c2d"
)

// BenchmarkRoundTrip measures enqueue → lock → complete round trips with N
// devices working at once, each on its own queue, on disk with a synced
// group commit (unless noted). Each round trip is two durable commits
// (enqueue, complete) plus the lock's write, which rides along.
func BenchmarkRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		devices int
		ack     c2d.AckMode
		noSync  bool
	}{
		{1, c2d.AckNone, false},
		{16, c2d.AckNone, false},
		{256, c2d.AckNone, false},
		{1024, c2d.AckNone, false},
		{256, c2d.AckFull, false},
		{256, c2d.AckNone, true},
	} {
		name := fmt.Sprintf("devices=%d/ack=%s", tc.devices, tc.ack)
		if tc.noSync {
			name += "/nosync"
		}
		b.Run(name, func(b *testing.B) { benchRoundTrip(b, tc.devices, tc.ack, tc.noSync) })
	}
}

func benchRoundTrip(b *testing.B, devices int, ack c2d.AckMode, noSync bool) {
	s, err := c2d.OpenPebble(b.TempDir(), c2d.PebbleOptions{NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	body := make([]byte, 256)
	var remaining atomic.Int64
	remaining.Store(int64(b.N))
	errs := make(chan error, devices)
	commits0 := s.Commits()
	b.ResetTimer()
	var wg sync.WaitGroup
	for d := 0; d < devices; d++ {
		wg.Add(1)
		go func(q string) {
			defer wg.Done()
			for remaining.Add(-1) >= 0 {
				if _, err := s.Enqueue(ctx, q, c2d.NewMessage{MessageID: "m", Ack: ack, Body: body}); err != nil {
					errs <- err
					return
				}
				m, ok, err := s.Lock(ctx, q)
				if err != nil || !ok {
					errs <- fmt.Errorf("lock: %v %w", ok, err)
					return
				}
				if err := s.Complete(ctx, q, m.LockToken); err != nil {
					errs <- err
					return
				}
			}
		}(fmt.Sprint("dev", d))
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "roundtrips/s")
	b.ReportMetric(float64(s.Commits()-commits0)/float64(b.N), "commits/roundtrip")
}

// BenchmarkEnqueue measures durable enqueues with N concurrent senders,
// each to its own queue (depth limit lifted), as the service link would
// drive the store under load.
func BenchmarkEnqueue(b *testing.B) {
	for _, senders := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("senders=%d", senders), func(b *testing.B) {
			s, err := c2d.OpenPebble(b.TempDir(), c2d.PebbleOptions{Config: c2d.Config{MaxDepth: 1 << 30}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			body := make([]byte, 256)
			var remaining atomic.Int64
			remaining.Store(int64(b.N))
			errs := make(chan error, senders)
			commits0 := s.Commits()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := 0; i < senders; i++ {
				wg.Add(1)
				go func(q string) {
					defer wg.Done()
					for remaining.Add(-1) >= 0 {
						if _, err := s.Enqueue(ctx, q, c2d.NewMessage{Body: body}); err != nil {
							errs <- err
							return
						}
					}
				}(fmt.Sprint("dev", i))
			}
			wg.Wait()
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enqueues/s")
			b.ReportMetric(float64(s.Commits()-commits0)/float64(b.N), "commits/enqueue")
		})
	}
}
