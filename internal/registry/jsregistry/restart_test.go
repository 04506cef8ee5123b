package jsregistry

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/internal/registry"
)

// TestServerRestart stops the server and starts it again on the same port
// and store: the Stores reconnect, their watches resume, and writes made
// after the restart reach the other node.
func TestServerRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	start := func() *server.Server {
		t.Helper()
		srv, err := natstest.StartServer(dir, func(o *server.Options) { o.Port = port })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		return srv
	}
	srv := start()
	bucket := freshBucket()
	openFile := func(js jetstream.JetStream) *Store {
		t.Helper()
		s, err := Open(ctx, js, Options{Bucket: bucket, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := openFile(connectJS(t, srv))
	b := openFile(connectJS(t, srv))
	if _, err := a.CreateDevice(ctx, sasDevice("before")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b sees the first device", func() bool { _, err := b.GetDevice(ctx, "before"); return err == nil })

	srv.Shutdown()
	srv.WaitForShutdown()
	if _, err := a.CreateDevice(ctx, sasDevice("during")); !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("CreateDevice with the server down = %v", err)
	}
	start()

	var d registry.Device
	eventually(t, "a writes again", func() bool {
		d, err = a.CreateDevice(ctx, sasDevice("after"))
		return err == nil
	})
	eventually(t, "b's watch resumes", func() bool {
		got, err := b.GetDevice(ctx, "after")
		return err == nil && got.ETag == d.ETag
	})
	if _, err := b.GetDevice(ctx, "before"); err != nil {
		t.Fatalf("device from before the restart: %v", err)
	}
}
