package client_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

// benchHub is an in-memory hub whose telemetry log still fsyncs (the
// in-memory option keeps the registry in memory; the log is on a temp dir).
func benchHub(b *testing.B) *server.Server {
	return startHub(b, nil)
}

// BenchmarkSendEvent measures SendEvent round trips (send, hub stores,
// accepted) with 1 and 16 goroutines sharing one device client.
func BenchmarkSendEvent(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%d", par), func(b *testing.B) {
			s := benchHub(b)
			d := newDevice(b, s, "dev1", nil)
			ctx := testCtx(b, 10*time.Minute)
			body := make([]byte, 256)
			if err := d.SendEvent(ctx, &client.Message{Body: body}); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range par {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := d.SendEvent(ctx, &client.Message{Body: body}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

// BenchmarkSendEventBatch measures batches of 100 256-byte messages.
func BenchmarkSendEventBatch(b *testing.B) {
	s := benchHub(b)
	d := newDevice(b, s, "dev1", nil)
	ctx := testCtx(b, 10*time.Minute)
	batch := make([]*client.Message, 100)
	for i := range batch {
		batch[i] = &client.Message{Body: make([]byte, 256)}
	}
	b.SetBytes(100 * 256)
	b.ResetTimer()
	for b.Loop() {
		if err := d.SendEventBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkEventReader measures reading stored events through the
// redirect (one partition, 256-byte bodies).
func BenchmarkEventReader(b *testing.B) {
	s := startHub(b, func(o *server.Options) { o.Partitions = 1 })
	d := newDevice(b, s, "dev1", nil)
	svc := newService(b, s, nil)
	ctx := testCtx(b, 10*time.Minute)
	const n = 10000
	batch := make([]*client.Message, 100)
	for i := range batch {
		batch[i] = &client.Message{Body: make([]byte, 256)}
	}
	for range n / len(batch) {
		if err := d.SendEventBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(256)
	b.ResetTimer()
	var r *client.EventReader
	for i := 0; i < b.N; i++ {
		if i%n == 0 {
			if r != nil {
				r.Close()
			}
			var err error
			r, err = svc.NewEventReader(ctx, &client.EventReaderOptions{Prefetch: 300})
			if err != nil {
				b.Fatal(err)
			}
		}
		if _, err := r.Receive(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	r.Close()
}
