// Package natstest starts NATS servers for tests: an embedded JetStream
// server inside the test process (RunServer), and clusters of real
// nats-server processes on loopback (StartCluster) for fault tests.
//
// Everything a helper starts is stopped by the test's cleanup. Servers
// listen on 127.0.0.1 only.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout bounds how long a helper waits for a server to accept
// clients or for JetStream to become usable.
const readyTimeout = 30 * time.Second

// RunServer starts an embedded nats-server with JetStream enabled, its
// store in a temporary directory, on a random loopback port. mods, if any,
// adjust the options before the server starts. The server is shut down
// when the test ends.
func RunServer(tb testing.TB, mods ...func(*server.Options)) *server.Server {
	tb.Helper()
	s, err := StartServer(tb.TempDir(), mods...)
	if err != nil {
		tb.Fatalf("natstest: %v", err)
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// StartServer is RunServer for code without a testing.TB (benchmark
// fixtures shared by several benchmarks): it stores in storeDir, and the
// caller shuts the server down.
func StartServer(storeDir string, mods ...func(*server.Options)) (*server.Server, error) {
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  storeDir,
		NoLog:     true,
		NoSigs:    true,
	}
	for _, m := range mods {
		m(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(readyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded server not ready within %v", readyTimeout)
	}
	return s, nil
}

// Connect connects to url (one URL or a comma-separated list) and closes
// the connection when the test ends. It retries for ever on disconnects so
// that a client survives a server being killed; extra options come last
// and override those defaults.
func Connect(tb testing.TB, url string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	all := append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.Timeout(5 * time.Second),
	}, opts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		tb.Fatalf("natstest: connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on nc, failing the test if it
// cannot be made.
func JetStream(tb testing.TB, nc *nats.Conn, opts ...jetstream.JetStreamOpt) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		tb.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// WaitJetStream polls until the JetStream API answers on nc (in a cluster:
// until a meta leader is elected) or the ready timeout passes.
func WaitJetStream(tb testing.TB, nc *nats.Conn) {
	tb.Helper()
	js := JetStream(tb, nc)
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, last = js.AccountInfo(ctx)
		cancel()
		if last == nil {
			return
		}
		if errors.Is(last, jetstream.ErrJetStreamNotEnabled) || errors.Is(last, jetstream.ErrJetStreamNotEnabledForAccount) {
			tb.Fatalf("natstest: %v", last)
		}
		time.Sleep(50 * time.Millisecond) // poll: the cluster elects a meta leader
	}
	tb.Fatalf("natstest: JetStream not ready within %v: %v", readyTimeout, fmt.Errorf("last error: %w", last))
}
