package jsc2d_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"amqphub/store/c2d"
	"amqphub/store/c2d/jsc2d"
)

// BenchmarkRoundTrip measures Enqueue -> Lock -> Complete of one message
// with a 1 KiB body, on one embedded server, sequentially and with
// parallel queues.
func BenchmarkRoundTrip(b *testing.B) {
	js := newJS(b)
	ctx := context.Background()
	body := make([]byte, 1024)
	for _, parallel := range []bool{false, true} {
		b.Run(fmt.Sprintf("parallel=%v", parallel), func(b *testing.B) {
			s := open(b, js, jsc2d.Options{Bucket: uniqueBucket(), Config: c2d.Config{ManualSweep: true}})
			defer s.Close()
			round := func(q string) error {
				if _, err := s.Enqueue(ctx, q, c2d.NewMessage{MessageID: "m", Ack: c2d.AckNone, Body: body}); err != nil {
					return err
				}
				m, ok, err := s.Lock(ctx, q)
				if err != nil || !ok {
					return fmt.Errorf("lock: %v %v", ok, err)
				}
				return s.Complete(ctx, q, m.LockToken)
			}
			b.ReportAllocs()
			if !parallel {
				for b.Loop() {
					if err := round("dev"); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			var queues atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				q := fmt.Sprint("dev", queues.Add(1))
				for pb.Next() {
					if err := round(q); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
