package amqp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/demo"
)

// BenchmarkLoopbackSink measures engine throughput: go-amqp senders push
// 256-byte messages to the demo sink over loopback TCP, each keeping many
// deliveries in flight (SendWithReceipt), and every message is settled
// accepted by the server. Reported as msgs/s.
//
//	go test -run '^$' -bench LoopbackSink -benchtime 200000x ./amqp/
func BenchmarkLoopbackSink(b *testing.B) {
	for _, conns := range []int{1, 4} {
		b.Run(map[int]string{1: "conns=1", 4: "conns=4"}[conns], func(b *testing.B) {
			srv := amqptest.Start(b, amqp.Config{Handler: demo.NewHandler(), SASL: demo.Authenticator{}, AllowNoSASL: true})
			ctx := context.Background()
			const inflight = 256
			senders := make([]*goamqp.Sender, conns)
			for i := range senders {
				c, err := goamqp.Dial(ctx, srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous()})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				s, err := c.NewSession(ctx, nil)
				if err != nil {
					b.Fatal(err)
				}
				if senders[i], err = s.NewSender(ctx, "sink", nil); err != nil {
					b.Fatal(err)
				}
			}
			body := make([]byte, 256)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			per := b.N / conns
			for _, snd := range senders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					receipts := make(chan goamqp.SendReceipt, inflight)
					done := make(chan struct{})
					go func() {
						defer close(done)
						for r := range receipts {
							if _, err := r.Wait(ctx); err != nil {
								b.Error(err)
								return
							}
						}
					}()
					for i := 0; i < per; i++ {
						r, err := snd.SendWithReceipt(ctx, goamqp.NewMessage(body), nil)
						if err != nil {
							b.Error(err)
							break
						}
						receipts <- r
					}
					close(receipts)
					<-done
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(per*conns)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}
