package jstwins_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"amqphub/internal/natstest"
	"amqphub/store/twins"
	"amqphub/store/twins/jstwins"
)

const benchDevices = 1000

// reportedPatch is a typical device report.
var reportedPatch = map[string]any{
	"firmware":  "1.4.2",
	"battery":   87,
	"telemetry": map[string]any{"interval": 30, "enabled": true},
}

func benchStore(b *testing.B) *jstwins.Store {
	srv := natstest.RunServer(b)
	s := open(b, node(b, srv.ClientURL()), jstwins.Options{Bucket: uniqueBucket()})
	for i := range benchDevices {
		if _, err := s.PatchReported(ctx, twins.ID{DeviceID: fmt.Sprintf("d%d", i)}, "g", reportedPatch); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkGet reads twins from the node's cache (decoding each).
func BenchmarkGet(b *testing.B) {
	s := benchStore(b)
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := twins.ID{DeviceID: fmt.Sprintf("d%d", n.Add(1)%benchDevices)}
			if _, err := s.Get(ctx, id, "g"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkUpdate writes desired properties, one write at a time: the
// latency of a compare-and-set round trip to the (local, file-backed)
// server, plus the announcement to one subscriber.
func BenchmarkUpdate(b *testing.B) {
	s := benchStore(b)
	defer s.SubscribeDesired(func(twins.DesiredChange) {})()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := twins.ID{DeviceID: fmt.Sprintf("d%d", i%benchDevices)}
		if _, err := s.Update(ctx, id, "g", twins.Update{Desired: map[string]any{"interval": i}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateParallel has 16 writers per CPU on different twins.
func BenchmarkUpdateParallel(b *testing.B) {
	s := benchStore(b)
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			id := twins.ID{DeviceID: fmt.Sprintf("d%d", i%benchDevices)}
			if _, err := s.Update(ctx, id, "g", twins.Update{Desired: map[string]any{"interval": i}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
