package jetstream

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/internal/natstest"
	"amqphub/store/partlog"
	"amqphub/store/partlog/partlogtest"
)

// prefixes gives every Log of a test binary its own streams on a shared
// server.
var prefixes atomic.Int64

func uniquePrefix() (stream, subject string) {
	n := prefixes.Add(1)
	return fmt.Sprintf("T%d_", n), fmt.Sprintf("t%d", n)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}

func openTest(t testing.TB, nc *nats.Conn, o Options) *Log {
	t.Helper()
	if o.StreamPrefix == "" {
		o.StreamPrefix, o.SubjectPrefix = uniquePrefix()
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Open(ctx, nc, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestConformance(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	partlogtest.Run(t, func(t *testing.T, partitions int) partlog.Log {
		return openTest(t, nc, Options{Partitions: partitions})
	})
}

// TestConformanceSmallWindow runs the suite with a tiny in-flight window,
// so that AppendAsync blocks for room all the time, and with one-record
// reads so that every Read loops.
func TestConformanceSmallWindow(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	partlogtest.Run(t, func(t *testing.T, partitions int) partlog.Log {
		return openTest(t, nc, Options{Partitions: partitions, MaxInFlight: 3, MaxInFlightBytes: 1000, MaxReadBatch: 7})
	})
}
