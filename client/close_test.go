package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"amqphub/client"
)

// TestCloseReleasesEverything closes clients with every feature busy while
// the hub keeps running: blocked calls return ErrClosed at once and no
// goroutine of the client (or go-amqp) is left.
func TestCloseReleasesEverything(t *testing.T) {
	s := startC2DHub(t)
	ctx := testCtx(t, 30*time.Second)
	verify := leakCheck(t)

	d := newDevice(t, s, "dev1", nil)
	d2 := newDevice(t, s, "dev2", nil)
	svc := newService(t, s, nil)
	if err := d.HandleMethod(ctx, "m", func(ctx context.Context, _ client.MethodRequest) (client.MethodResponse, error) {
		<-ctx.Done() // a handler still running at Close
		return client.MethodResponse{Status: 200}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.OnDesiredUpdate(ctx, func(client.DesiredUpdate) {}); err != nil {
		t.Fatal(err)
	}
	if err := d.OnC2DMessage(func(m *client.C2DMessage) { m.Complete(ctx) }); err != nil {
		t.Fatal(err)
	}
	if err := d.SendEvent(ctx, &client.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	r, err := svc.NewEventReader(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	// A method call whose handler is still running when the device closes.
	called := make(chan error, 1)
	go func() {
		_, err := svc.InvokeMethod(ctx, "dev1", "", client.MethodCall{Name: "m", ResponseTimeout: 10 * time.Second})
		called <- err
	}()
	waitFor(t, 10*time.Second, "the method call to reach the device", func() bool {
		return len(goroutinesIn("answerMethod")) > 0
	})
	// Calls blocked when their client closes.
	blocked := make(chan error, 3)
	go func() { _, err := d2.ReceiveC2D(ctx); blocked <- err }()
	go func() { _, err := svc.ReceiveFeedback(ctx); blocked <- err }()
	go func() { _, err := r.Receive(ctx); blocked <- err }()
	waitFor(t, 10*time.Second, "the receivers to block", func() bool {
		return len(goroutinesIn("ReceiveC2D")) > 0 && len(goroutinesIn("ReceiveFeedback")) > 0
	})

	for _, c := range []interface{ Close() error }{d, d2, svc, d, svc} { // twice: Close is idempotent
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		select {
		case err := <-blocked:
			if !errors.Is(err, client.ErrClosed) {
				t.Errorf("blocked call ended with %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a blocked call did not end when its client closed")
		}
	}
	if err := <-called; err == nil {
		t.Error("the method call succeeded although the device closed during it")
	}
	verify()
}

// goroutinesIn returns the stacks of goroutines running fn.
func goroutinesIn(fn string) []string {
	var out []string
	for _, st := range goroutineStacks() {
		if strings.Contains(st, "client."+fn) || strings.Contains(st, ")."+fn) {
			out = append(out, st)
		}
	}
	return out
}
