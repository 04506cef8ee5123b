package telemetry_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
)

// BenchmarkIngest measures durable ingest over AMQP: conns go-amqp device
// connections (one device each) send 256-byte messages with up to
// inflight unacknowledged messages each; a message counts once the hub
// accepted it, which it does only after the log's fsync. The hub runs in
// process on loopback, so client and hub share the CPU.
func BenchmarkIngest(b *testing.B) {
	for _, conns := range []int{1, 4, 16} {
		for _, inflight := range []int{100, 500} {
			b.Run(fmt.Sprintf("conns=%d/inflight=%d", conns, inflight), func(b *testing.B) {
				benchIngest(b, conns, inflight)
			})
		}
	}
}

func benchIngest(b *testing.B, conns, inflight int) {
	s := startHub(b, func(o *server.Options) {
		for i := range conns {
			o.Devices = append(o.Devices, server.DeviceConfig{ID: fmt.Sprintf("bench-%d", i)})
		}
	})
	snds := make([]*goamqp.Sender, conns)
	for i := range snds {
		snds[i] = deviceSender(b, s, fmt.Sprintf("bench-%d", i), "", nil)
	}
	body := bytes.Repeat([]byte("t"), 256)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i, snd := range snds {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			receipts := make(chan goamqp.SendReceipt, inflight)
			go func() {
				defer close(receipts)
				for range n {
					r, err := snd.SendWithReceipt(ctx, &goamqp.Message{Data: [][]byte{body}}, nil)
					if err != nil {
						errs <- err
						return
					}
					receipts <- r
				}
			}()
			for r := range receipts {
				st, err := r.Wait(ctx)
				if err != nil {
					errs <- err
					return
				}
				if _, ok := st.(*goamqp.StateAccepted); !ok {
					errs <- fmt.Errorf("settled with %T %v", st, st)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
