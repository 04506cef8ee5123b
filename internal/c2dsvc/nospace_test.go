package c2dsvc_test

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
	"amqphub/internal/c2dsvc"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/server"
	"amqphub/store/c2d"
)

// startHubOnStore starts a hub whose C2D endpoints are served by a service
// on a store whose disk guard reads free space from disk.
func startHubOnStore(t *testing.T, disk *pebbleutiltest.Disk) (*server.Server, *c2d.PebbleStore) {
	t.Helper()
	var svc atomic.Pointer[c2dsvc.Service]
	forward := func(k hub.Kind) hub.Endpoint {
		return hub.EndpointFunc(func(req *hub.AttachRequest) *amqp.Error {
			return svc.Load().Endpoints()[k].Attach(req)
		})
	}
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "d1"}}
		o.Endpoints = map[hub.Kind]hub.Endpoint{
			hub.KindServiceC2D:  forward(hub.KindServiceC2D),
			hub.KindDeviceBound: forward(hub.KindDeviceBound),
			hub.KindFeedback:    forward(hub.KindFeedback),
		}
	})
	st, err := c2d.OpenPebble("c2d", c2d.PebbleOptions{
		InMemory:  true,
		Config:    c2d.Config{Logger: amqptest.TestLogger(t)},
		DiskGuard: disk.Options(),
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := c2dsvc.New(st, s.Registry, s.Options.HubName, c2dsvc.Config{}, amqptest.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	svc.Store(c)
	t.Cleanup(func() {
		s.Close()
		c.Close()
		st.Close()
	})
	return s, st
}

// TestNoSpace: while the C2D store's disk is full a service send is
// rejected with amqp:internal-error naming the cause, deliveries to the
// device pause, and a device's outcome that cannot be recorded detaches its
// link with the same error; when space returns everything resumes without a
// restart.
func TestNoSpace(t *testing.T) {
	disk := pebbleutiltest.NewDisk()
	s, st := startHubOnStore(t, disk)
	snd := c2dSender(t, serviceConn(t, s))
	dev := deviceConn(t, s, "d1", "")
	to := deviceBound("d1", "")
	ctx := context.Background()

	// A send while the disk is full is rejected; nothing is queued.
	disk.Full()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := snd.Send(sctx, c2dMessage(to, "refused", "", "x"), nil)
	cancel()
	if condOf(err) != goamqp.ErrCondInternalError || !strings.Contains(err.Error(), "insufficient disk space") {
		t.Fatalf("send while full: %v; want amqp:internal-error naming the cause", err)
	}
	if c, err := st.Pending(ctx, "d1"); err != nil || c != (c2d.Counts{}) {
		t.Fatalf("Pending after a refused send = %+v, %v", c, err)
	}

	// Space returns: the same link's next send is accepted.
	disk.Freed()
	send(t, snd, c2dMessage(to, "m1", "", "one"))
	if c, err := st.Pending(ctx, "d1"); err != nil || c != (c2d.Counts{Enqueued: 1}) {
		t.Fatalf("Pending after an accepted send = %+v, %v", c, err)
	}

	// A device attaching while the disk is full gets nothing until space
	// returns (locking writes), then gets the message.
	disk.Full()
	checks := disk.Checks()
	r := receiver(t, dev, to, 10, false)
	waitUntil(t, "the device link's refused lock", func() bool { return disk.Checks() > checks })
	disk.Freed()
	m1 := receive(t, r)
	if string(m1.GetData()) != "one" {
		t.Fatalf("received %q", m1.GetData())
	}

	// An outcome the store cannot record detaches the device's link.
	disk.Full()
	settle(t, r, m1, "accept")
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = r.Receive(rctx, nil)
	var le *goamqp.LinkError
	if !errors.As(err, &le) || condOf(err) != goamqp.ErrCondInternalError || !strings.Contains(err.Error(), "insufficient disk space") {
		t.Fatalf("receive after a refused outcome: %v; want the link detached with amqp:internal-error naming the cause", err)
	}

	// Space returns: a new link gets new messages (m1 stays locked until
	// its lock expires, then comes again, as in IoT Hub).
	disk.Freed()
	send(t, snd, c2dMessage(to, "m2", "", "two"))
	r2 := receiver(t, dev, to, 10, false)
	m2 := receive(t, r2)
	if string(m2.GetData()) != "two" {
		t.Fatalf("received %q after space returned, want two", m2.GetData())
	}
	settle(t, r2, m2, "accept")
	waitUntil(t, "m2 completed", func() bool {
		c, err := st.Pending(ctx, "d1")
		return err == nil && c == (c2d.Counts{Locked: 1})
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
