package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

func startC2DHub(t *testing.T) *server.Server {
	return startHub(t, func(o *server.Options) {
		o.C2D.FeedbackInterval = 20 * time.Millisecond
		o.C2D.MaxQueueDepth = 3
		o.C2D.NoSync = true
	})
}

// feedbackFor waits for the feedback record of message id.
func feedbackFor(t *testing.T, ctx context.Context, svc *client.ServiceClient, ids ...string) map[string]client.FeedbackRecord {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	got := map[string]client.FeedbackRecord{}
	for len(got) < len(want) {
		b, err := svc.ReceiveFeedback(ctx)
		if err != nil {
			t.Fatalf("feedback (have %d of %d): %v", len(got), len(want), err)
		}
		for _, r := range b.Records {
			if want[r.OriginalMessageID] {
				got[r.OriginalMessageID] = r
			}
		}
		if err := b.Complete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func TestC2DAndFeedback(t *testing.T) {
	checkNoLeaks(t)
	s := startC2DHub(t)
	ctx := testCtx(t, 30*time.Second)
	svc := newService(t, s, nil)
	d := newDevice(t, s, "dev1", nil)

	// Fields survive the trip; a missing message id is assigned.
	exp := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	sent := &client.Message{Body: []byte("hello device"), CorrelationID: "corr", ContentType: "text/plain",
		ExpiryTime: exp, Properties: map[string]string{"cmd": "blink"}}
	before := time.Now().Add(-time.Second)
	if err := svc.SendC2D(ctx, "dev1", sent, &client.C2DOptions{Ack: client.AckFull}); err != nil {
		t.Fatalf("SendC2D: %v", err)
	}
	if sent.MessageID == "" {
		t.Fatal("SendC2D did not assign a message id")
	}
	m, err := d.ReceiveC2D(ctx)
	if err != nil {
		t.Fatalf("ReceiveC2D: %v", err)
	}
	if string(m.Body) != "hello device" || m.MessageID != sent.MessageID || m.CorrelationID != "corr" || m.ContentType != "text/plain" ||
		!m.ExpiryTime.Equal(exp) || m.Properties["cmd"] != "blink" || len(m.Properties) != 1 {
		t.Errorf("received %+v", m.Message)
	}
	if m.Ack != client.AckFull || m.To != "/devices/dev1/messages/devicebound" || m.DeliveryCount != 0 || m.LockToken == "" || m.EnqueuedTime.Before(before) {
		t.Errorf("delivery fields: ack %q to %q count %d lock %q enqueued %v", m.Ack, m.To, m.DeliveryCount, m.LockToken, m.EnqueuedTime)
	}
	if err := m.Complete(ctx); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := m.Complete(ctx); err == nil {
		t.Error("a second Complete succeeded")
	}
	fb := feedbackFor(t, ctx, svc, sent.MessageID)[sent.MessageID]
	if fb.StatusCode != client.FeedbackSuccess || fb.DeviceID != "dev1" || fb.EnqueuedTime.IsZero() || fb.DeviceGenerationID == "" {
		t.Errorf("feedback %+v", fb)
	}

	// Abandon redelivers with a higher count; reject gives Rejected.
	m2 := &client.Message{Body: []byte("twice"), MessageID: "m2"}
	if err := svc.SendC2D(ctx, "dev1", m2, &client.C2DOptions{Ack: client.AckNegative}); err != nil {
		t.Fatal(err)
	}
	got, err := d.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Abandon(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := d.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.MessageID != "m2" || again.DeliveryCount != 1 {
		t.Errorf("after abandon: id %q count %d", again.MessageID, again.DeliveryCount)
	}
	if err := again.Reject(ctx); err != nil {
		t.Fatal(err)
	}
	if fb := feedbackFor(t, ctx, svc, "m2")["m2"]; fb.StatusCode != client.FeedbackRejected {
		t.Errorf("feedback after reject: %+v", fb)
	}

	// Refusals.
	if err := svc.SendC2D(ctx, "nobody", &client.Message{Body: []byte("x")}, nil); !errors.Is(err, client.ErrDeviceNotFound) {
		t.Errorf("unknown device: %v, want ErrDeviceNotFound", err)
	}
	for i := range 3 {
		if err := svc.SendC2D(ctx, "dev2", &client.Message{Body: []byte(fmt.Sprint(i))}, nil); err != nil {
			t.Fatalf("fill queue %d: %v", i, err)
		}
	}
	if err := svc.SendC2D(ctx, "dev2", &client.Message{Body: []byte("one too many")}, nil); !errors.Is(err, client.ErrQueueDepthExceeded) {
		t.Errorf("full queue: %v, want ErrQueueDepthExceeded", err)
	}
	if err := svc.SendC2D(ctx, "dev2", &client.Message{}, &client.C2DOptions{Ack: "sometimes"}); err == nil {
		t.Error("a bad ack mode was sent")
	}
}

func TestC2DHandlerAndModules(t *testing.T) {
	checkNoLeaks(t)
	s := startC2DHub(t)
	ctx := testCtx(t, 30*time.Second)
	svc := newService(t, s, nil)

	// A handler that completes every other message: the others are
	// abandoned for it and come back.
	d := newDevice(t, s, "dev1", nil)
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan struct{})
	if err := d.OnC2DMessage(func(m *client.C2DMessage) {
		mu.Lock()
		defer mu.Unlock()
		seen[string(m.Body)]++
		if seen[string(m.Body)] == 2 {
			if err := m.Complete(ctx); err != nil {
				t.Error(err)
			}
		}
		if seen["a"] == 2 && seen["b"] == 2 {
			select {
			case <-done:
			default:
				close(done)
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"a", "b"} {
		if err := svc.SendC2D(ctx, "dev1", &client.Message{Body: []byte(b)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("handler saw %v", seen)
	}
	if _, err := d.ReceiveC2D(ctx); err == nil {
		t.Error("ReceiveC2D worked while a handler is registered")
	}
	if err := d.OnC2DMessage(nil); err != nil {
		t.Fatal(err)
	}

	// Modules have their own queues.
	mod, err := client.NewDeviceClient(deviceCS(s, "dev1", moduleKey(t, s, "dev1", "mod1"))+";ModuleId=mod1", deviceOpts(s))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	if err := svc.SendC2D(ctx, "dev1", &client.Message{Body: []byte("for the module")}, &client.C2DOptions{ModuleID: "mod1"}); err != nil {
		t.Fatal(err)
	}
	m, err := mod.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != "for the module" || m.To != "/devices/dev1/modules/mod1/messages/devicebound" {
		t.Errorf("module got %q to %q", m.Body, m.To)
	}
	if err := m.Complete(ctx); err != nil {
		t.Fatal(err)
	}

	// A message whose connection is gone cannot be settled any more.
	d2 := newDevice(t, s, "dev2", nil)
	if err := svc.SendC2D(ctx, "dev2", &client.Message{Body: []byte("late")}, nil); err != nil {
		t.Fatal(err)
	}
	late, err := d2.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if err := late.Complete(ctx); !errors.Is(err, client.ErrLockLost) {
		t.Errorf("Complete after Close: %v, want ErrLockLost", err)
	}
}

// TestFeedbackAbandon: an abandoned feedback batch comes back.
func TestFeedbackAbandon(t *testing.T) {
	checkNoLeaks(t)
	s := startC2DHub(t)
	ctx := testCtx(t, 30*time.Second)
	svc := newService(t, s, nil)
	d := newDevice(t, s, "dev1", nil)
	msg := &client.Message{Body: []byte("x")}
	if err := svc.SendC2D(ctx, "dev1", msg, &client.C2DOptions{Ack: client.AckPositive}); err != nil {
		t.Fatal(err)
	}
	m, err := d.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := svc.ReceiveFeedback(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Records) != 1 || b.Records[0].OriginalMessageID != msg.MessageID || b.UserID == "" {
		t.Fatalf("batch %+v", b)
	}
	if err := b.Abandon(ctx); err != nil {
		t.Fatal(err)
	}
	if fb := feedbackFor(t, ctx, svc, msg.MessageID)[msg.MessageID]; fb.StatusCode != client.FeedbackSuccess {
		t.Errorf("redelivered feedback %+v", fb)
	}
}
