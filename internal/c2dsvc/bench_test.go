package c2dsvc_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/internal/c2dsvc"
	"amqphub/internal/server"
	"amqphub/store/c2d"
)

// BenchmarkRoundTrip measures C2D round trips: a service sends messages
// with iothub-ack positive round-robin to N connected devices (64 sends in
// flight), each device completes what it receives, and the service reads
// the Success feedback. One op is one round trip; the run ends when the
// feedback for every message has arrived. Reported: round trips per
// second, and the send-to-device latency (p50, p99). "mem" keeps the store
// in memory, "disk" fsyncs every group commit.
//
//	go test -run '^$' -bench RoundTrip -benchtime 20000x ./internal/c2dsvc/
func BenchmarkRoundTrip(b *testing.B) {
	for _, storage := range []string{"mem", "disk"} {
		for _, n := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/devices=%d", storage, n), func(b *testing.B) {
				benchRoundTrip(b, n, storage == "disk")
			})
		}
	}
}

func benchRoundTrip(b *testing.B, devices int, disk bool) {
	const inFlight = 64
	s := server.StartTest(b, func(o *server.Options) {
		if disk {
			o.InMemory = false
			o.DataDir = b.TempDir()
		}
		for i := range devices {
			o.Devices = append(o.Devices, server.DeviceConfig{ID: fmt.Sprint("bench-", i)})
		}
		// Depth is not what is measured: let a device fall behind.
		o.C2D = c2dsvc.Config{MaxQueueDepth: 10000, FeedbackInterval: 100 * time.Millisecond}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	var devWG sync.WaitGroup
	for i := range devices {
		r := receiver(b, deviceConn(b, s, fmt.Sprint("bench-", i), ""), deviceBound(fmt.Sprint("bench-", i), ""), 200, false)
		devWG.Add(1)
		go func() {
			defer devWG.Done()
			for {
				m, err := r.Receive(ctx, nil)
				if err != nil {
					return
				}
				sent := time.Unix(0, int64(binary.BigEndian.Uint64(m.GetData())))
				mu.Lock()
				lat = append(lat, time.Since(sent))
				mu.Unlock()
				if err := r.AcceptMessage(ctx, m); err != nil {
					return
				}
			}
		}()
	}
	svc := serviceConn(b, s)
	snd := c2dSender(b, svc)
	fb := receiver(b, svc, "/messages/serviceBound/feedback", 100, false)
	b.ResetTimer()
	start := time.Now()

	var next atomic.Int64
	var sendErr atomic.Value
	var sendWG sync.WaitGroup
	for range inFlight {
		sendWG.Add(1)
		go func() {
			defer sendWG.Done()
			body := make([]byte, 8)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				binary.BigEndian.PutUint64(body, uint64(time.Now().UnixNano()))
				m := c2dMessage(deviceBound(fmt.Sprint("bench-", i%int64(devices)), ""), fmt.Sprint(i), "positive", "")
				m.Data = [][]byte{body}
				if err := snd.Send(ctx, m, nil); err != nil {
					sendErr.Store(err)
					return
				}
			}
		}()
	}
	for got := 0; got < b.N; {
		m, err := fb.Receive(ctx, nil)
		if err != nil {
			b.Fatalf("feedback: %v (send error: %v)", err, sendErr.Load())
		}
		recs, err := c2d.ParseFeedback(m.GetData())
		if err != nil {
			b.Fatal(err)
		}
		got += len(recs)
		if err := fb.AcceptMessage(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	sendWG.Wait()
	if err := sendErr.Load(); err != nil {
		b.Fatalf("send: %v", err)
	}
	cancel()
	devWG.Wait()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "roundtrips/s")
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-deliver-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-deliver-ms")
	}
}
