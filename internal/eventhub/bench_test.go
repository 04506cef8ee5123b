package eventhub_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/frames"

	"amqphub/internal/server"
	"amqphub/store/partlog"
)

// fill appends n device messages to partition asynchronously and waits
// until all are durable.
func fill(b *testing.B, lg partlog.Log, partition, n int) int {
	b.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	bytes := 0
	wg.Add(n)
	for i := range n {
		p := devicePayload(b, "dev1", i)
		bytes += len(p)
		err := lg.AppendAsync(partition, p, func(_ partlog.Entry, err error) {
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
			wg.Done()
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return bytes
}

// BenchmarkCatchUpRead measures how fast one go-amqp receiver reads a
// filled partition from the start (a consumer catching up after
// downtime): each iteration attaches with "x-opt-offset > '-1'" and
// receives every event. Reported as events/s and stored MB/s.
func BenchmarkCatchUpRead(b *testing.B) {
	const events = 50000
	s := server.StartTest(b, nil)
	bytes := fill(b, s.Log, 0, events)
	for _, credit := range []int32{300, 5000} {
		b.Run(fmt.Sprintf("credit=%d", credit), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			sess := newSession(b, dialOwner(b, s))
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				r, err := sess.NewReceiver(ctx, partitionAddr(s, "$Default", 0), &goamqp.ReceiverOptions{
					Credit:  credit,
					Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter("amqp.annotation.x-opt-offset > '-1'")},
				})
				if err != nil {
					b.Fatal(err)
				}
				for i := range events {
					m, err := r.Receive(ctx, nil)
					if err != nil {
						b.Fatalf("event %d: %v", i, err)
					}
					if seq, _ := m.Annotations["x-opt-sequence-number"].(int64); seq != int64(i) {
						b.Fatalf("event %d has sequence number %d", i, seq)
					}
				}
				if err := r.Close(ctx); err != nil {
					b.Fatal(err)
				}
			}
			el := time.Since(start).Seconds()
			b.ReportMetric(float64(events*b.N)/el, "events/s")
			b.ReportMetric(float64(bytes*b.N)/el/1e6, "MB/s")
		})
	}
}

// BenchmarkCatchUpReadServer measures the hub's side of a catch-up read:
// a frame-level client that grants 5000 credits, tops them up and counts
// transfers without decoding messages, so the client's own decoding does
// not dominate as it does with go-amqp.
func BenchmarkCatchUpReadServer(b *testing.B) {
	const events = 50000
	s := server.StartTest(b, nil)
	bytes := fill(b, s.Log, 0, events)
	c := rawDialOwner(b, s)
	const window = 5000
	flow := func(handle, count uint32) {
		c.send(&frames.Flow{
			IncomingWindow: 1 << 30, OutgoingWindow: 10000,
			Handle: handle, HasHandle: true, DeliveryCount: count, HasDeliveryCount: true,
			LinkCredit: window, HasLinkCredit: true,
		}, nil)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		h := uint32(i)
		c.send(&frames.Attach{
			Name: fmt.Sprint("bench-", i), Handle: h, Role: frames.RoleReceiver,
			Source: &frames.Source{Address: partitionAddr(s, "$Default", 0)},
			Target: &frames.Target{Address: "bench"},
		}, nil)
		expectFrame[*frames.Attach](c)
		flow(h, 0)
		got, granted := uint32(0), uint32(0)
		for got < events {
			switch p := c.nextOfType(frames.FrameAMQP).(type) {
			case *frames.Transfer:
				if !p.More {
					got++
				}
				if got-granted >= window/2 {
					granted = got
					flow(h, got)
				}
			case *frames.Detach:
				b.Fatalf("detached: %v", p.Error)
			case *frames.Close:
				b.Fatalf("connection closed: %v", p.Error)
			}
		}
		c.send(&frames.Detach{Handle: h, Closed: true}, nil)
		expectFrame[*frames.Detach](c)
	}
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(events*b.N)/el, "events/s")
	b.ReportMetric(float64(bytes*b.N)/el/1e6, "MB/s")
}

// BenchmarkTailLatency measures how soon a reader parked at the end of a
// partition gets an event after the log acknowledged it (the durable
// append returned): one event per iteration, append then receive.
func BenchmarkTailLatency(b *testing.B) {
	s := server.StartTest(b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sess := newSession(b, dialOwner(b, s))
	r, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 0), rcvOpts{filter: "amqp.annotation.x-opt-offset > '@latest'"})
	if err != nil {
		b.Fatal(err)
	}
	payload := devicePayload(b, "dev1", 0)
	var ackToRecv time.Duration
	b.ResetTimer()
	for i := range b.N {
		e, err := s.Log.Append(ctx, 0, payload)
		if err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		m, err := r.Receive(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		ackToRecv += time.Since(acked)
		if seq, _ := m.Annotations["x-opt-sequence-number"].(int64); seq != e.Seq {
			b.Fatalf("event %d: sequence number %d, want %d", i, seq, e.Seq)
		}
	}
	b.ReportMetric(float64(ackToRecv.Microseconds())/float64(b.N), "µs-ack-to-receive/op")
}
