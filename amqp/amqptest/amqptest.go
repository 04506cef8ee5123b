// Package amqptest starts in-process AMQP servers on loopback ports for tests.
package amqptest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"amqphub/amqp"
)

// Server is a running test server.
type Server struct {
	*amqp.Server
	Addr string // host:port
	URL  string // amqp://host:port
}

// Start runs an engine with cfg on a random loopback port and stops it when
// the test ends. Logs go to the test log at debug level only when
// AMQPHUB_TEST_LOG is set, so passing runs stay quiet.
func Start(t testing.TB, cfg amqp.Config) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = TestLogger(t)
	}
	srv, err := amqp.NewServer(cfg)
	if err != nil {
		t.Fatalf("amqptest: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("amqptest: listen: %v", err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	addr := ln.Addr().String()
	return &Server{Server: srv, Addr: addr, URL: "amqp://" + addr}
}

// TestLogger returns a logger that writes to t.Log when AMQPHUB_TEST_LOG
// is set and discards otherwise.
func TestLogger(t testing.TB) *slog.Logger {
	if os.Getenv("AMQPHUB_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// Eventually polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
