package twin_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/server"
	"amqphub/internal/twin"
	"amqphub/store/twins"
)

// TestNoSpaceOverAMQP: while the twin store's disk is full a reported
// patch is refused, as 503 naming the cause on a pre-settled request (the
// SDKs' way) and as amqp:internal-error on an unsettled one; reads go on;
// when space returns the same links patch again.
func TestNoSpaceOverAMQP(t *testing.T) {
	disk := pebbleutiltest.NewDisk()
	var ep atomic.Pointer[twin.Endpoint]
	s := startHub(t, func(o *server.Options) {
		o.Endpoints = map[hub.Kind]hub.Endpoint{
			hub.KindTwin: hub.EndpointFunc(func(req *hub.AttachRequest) *amqp.Error { return ep.Load().Attach(req) }),
		}
	})
	store, err := twins.OpenPebble("twins", twins.PebbleOptions{
		InMemory:  true,
		Logger:    amqptest.TestLogger(t),
		DiskGuard: disk.Options(),
	})
	if err != nil {
		t.Fatal(err)
	}
	e := twin.New(store, s.Registry, twin.Config{}, amqptest.TestLogger(t))
	ep.Store(e)
	t.Cleanup(func() {
		s.Close()
		e.Close()
		store.Close()
	})

	sess := dialIdentity(t, s, "d1", "")
	c := openTwin(t, sess, "/devices/d1/twin", 10)
	if st := status(t, c.call("PATCH", "/properties/reported", "p1", []byte(`{"a":1}`))); st != 204 {
		t.Fatalf("PATCH with space: status %d", st)
	}

	disk.Full()
	m := c.call("PATCH", "/properties/reported", "p2", []byte(`{"a":2}`))
	if st := status(t, m); st != 503 || !strings.Contains(describe(m), "insufficient disk space") {
		t.Fatalf("pre-settled PATCH while full: %s; want 503 naming the cause", describe(m))
	}
	// An unsettled request is rejected with amqp:internal-error.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	unsettled, err := sess.NewSender(ctx, "/devices/d1/twin", &goamqp.SenderOptions{
		Properties:     map[string]any{"com.microsoft:channel-correlation-id": "twin:test"},
		SettlementMode: goamqp.SenderSettleModeUnsettled.Ptr(),
	})
	if err != nil {
		t.Fatal(err)
	}
	err = unsettled.Send(ctx, &goamqp.Message{
		Annotations: goamqp.Annotations{"operation": "PATCH", "resource": "/properties/reported"},
		Properties:  &goamqp.MessageProperties{CorrelationID: "p3"},
		Data:        [][]byte{[]byte(`{"a":3}`)},
	}, nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondInternalError || !strings.Contains(ae.Description, "insufficient disk space") {
		t.Fatalf("unsettled PATCH while full: %v; want amqp:internal-error naming the cause", err)
	}
	// Reads go on.
	m = c.call("GET", "", "g1", []byte(" "))
	if st := status(t, m); st != 200 || path(bodyJSON(t, m), "reported", "a") != float64(1) {
		t.Fatalf("GET while full: %s; want 200 with a = 1", describe(m))
	}

	disk.Freed()
	m = c.call("PATCH", "/properties/reported", "p4", []byte(`{"a":4}`))
	if st := status(t, m); st != 204 || version(t, m) != 3 {
		t.Fatalf("PATCH after space returned: %s; want 204 at version 3", describe(m))
	}
}
