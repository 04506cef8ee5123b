package client_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/server"
)

// TestSendEventRoundTrip sends messages with every field the client sets
// and reads them back through the redirect with the system properties.
func TestSendEventRoundTrip(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, nil)
	ctx := testCtx(t, 30*time.Second)
	tests := []struct {
		name string
		dev  string
		mod  string
		msg  client.Message
	}{
		{"body only", "dev1", "", client.Message{Body: []byte("plain")}},
		{"empty body", "dev1", "", client.Message{}},
		{"all fields", "dev2", "", client.Message{
			Body: []byte(`{"t":21.5}`), MessageID: "m-1", CorrelationID: "c-1",
			ContentType: "application/json", ContentEncoding: "utf-8",
			Properties: map[string]string{"alert": "high", "unit": "C"},
		}},
		{"module", "dev1", "mod1", client.Message{Body: []byte("from module"), Properties: map[string]string{"k": "v"}}},
	}
	svc := newService(t, s, nil)
	modKey := moduleKey(t, s, "dev1", "mod1")
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d *client.DeviceClient
			if tc.mod == "" {
				d = newDevice(t, s, tc.dev, nil)
			} else {
				var err error
				d, err = client.NewDeviceClient(deviceCS(s, tc.dev, modKey)+";ModuleId="+tc.mod, deviceOpts(s))
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
			}
			// A unique property finds this test's event among the others.
			msg := tc.msg
			props := map[string]string{"case": fmt.Sprint(i)}
			for k, v := range tc.msg.Properties {
				props[k] = v
			}
			msg.Properties = props
			before := time.Now().Add(-time.Second)
			if err := d.SendEvent(ctx, &msg); err != nil {
				t.Fatalf("SendEvent: %v", err)
			}
			e := findEvent(t, svc, func(e *client.Event) bool { return e.Properties["case"] == fmt.Sprint(i) })
			if !bytes.Equal(e.Body, msg.Body) && !(len(e.Body) == 0 && len(msg.Body) == 0) {
				t.Errorf("body %q, want %q", e.Body, msg.Body)
			}
			if e.MessageID != msg.MessageID || e.CorrelationID != msg.CorrelationID || e.ContentType != msg.ContentType || e.ContentEncoding != msg.ContentEncoding {
				t.Errorf("properties %+v, want %+v", e.Message, msg)
			}
			for k, v := range msg.Properties {
				if e.Properties[k] != v {
					t.Errorf("application property %s = %q, want %q", k, e.Properties[k], v)
				}
			}
			if e.DeviceID != tc.dev || e.ModuleID != tc.mod {
				t.Errorf("sender %s/%s, want %s/%s", e.DeviceID, e.ModuleID, tc.dev, tc.mod)
			}
			if e.Offset == "" || e.SequenceNumber < 0 || e.EnqueuedTime.Before(before) || e.EnqueuedTime.After(time.Now().Add(time.Second)) {
				t.Errorf("system properties: seq %d offset %q enqueued %v", e.SequenceNumber, e.Offset, e.EnqueuedTime)
			}
			if e.SystemProperties["iothub-message-source"] != "Telemetry" {
				t.Errorf("system properties lack iothub-message-source: %v", e.SystemProperties)
			}
		})
	}
}

// findEvent reads from the start of every partition until match holds.
func findEvent(t testing.TB, svc *client.ServiceClient, match func(*client.Event) bool) *client.Event {
	t.Helper()
	ctx := testCtx(t, 20*time.Second)
	r, err := svc.NewEventReader(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for {
		e, err := r.Receive(ctx)
		if err != nil {
			t.Fatalf("no matching event: %v", err)
		}
		if match(e) {
			return e
		}
	}
}

func moduleKey(t testing.TB, s *server.Server, dev, mod string) string {
	t.Helper()
	m, err := s.Registry.GetModule(testCtx(t, 5*time.Second), dev, mod)
	if err != nil {
		t.Fatal(err)
	}
	return m.Authentication.SymmetricKey.PrimaryKey
}

// TestSendEventBatch sends batches (format 0x80013700) and reads every
// message back, in order, as its own event.
func TestSendEventBatch(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, nil)
	ctx := testCtx(t, 30*time.Second)
	d := newDevice(t, s, "dev1", nil)
	var want []string
	for b := 0; b < 3; b++ {
		var batch []*client.Message
		for i := 0; i < 5; i++ {
			body := fmt.Sprintf("batch %d message %d", b, i)
			want = append(want, body)
			batch = append(batch, &client.Message{Body: []byte(body), Properties: map[string]string{"i": fmt.Sprint(i)}})
		}
		if err := d.SendEventBatch(ctx, batch); err != nil {
			t.Fatalf("batch %d: %v", b, err)
		}
	}
	events := readEvents(t, ctx, newService(t, s, nil), nil, len(want))
	for i, e := range events {
		if string(e.Body) != want[i] {
			t.Fatalf("event %d: %q, want %q", i, e.Body, want[i])
		}
		if e.SequenceNumber != int64(i) || e.DeviceID != "dev1" || e.Properties["i"] != fmt.Sprint(i%5) {
			t.Errorf("event %d: seq %d device %q props %v", i, e.SequenceNumber, e.DeviceID, e.Properties)
		}
	}
	if err := d.SendEventBatch(ctx, nil); err == nil {
		t.Error("an empty batch was accepted")
	}
}

// TestEventReaderStart reads from each kind of start position.
func TestEventReaderStart(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, func(o *server.Options) { o.Partitions = 2 })
	ctx := testCtx(t, 30*time.Second)
	d := newDevice(t, s, "dev1", nil)
	svc := newService(t, s, nil)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			if err := d.SendEvent(ctx, &client.Message{Body: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(0, 5)
	// Enqueued times have millisecond precision: make the boundary clear.
	time.Sleep(5 * time.Millisecond)
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	send(5, 10)

	tests := []struct {
		name  string
		start client.StartPosition
		first int
	}{
		{"earliest", client.StartEarliest(), 0},
		{"sequence number", client.StartAtSequenceNumber(7), 7},
		{"enqueued time", client.StartAtEnqueuedTime(mid), 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			events := readEvents(t, ctx, svc, &client.EventReaderOptions{Start: tc.start}, 10-tc.first)
			for i, e := range events {
				if string(e.Body) != fmt.Sprint(tc.first+i) {
					t.Fatalf("event %d: %q, want %d", i, e.Body, tc.first+i)
				}
			}
		})
	}
	t.Run("latest", func(t *testing.T) {
		r, err := svc.NewEventReader(ctx, &client.EventReaderOptions{Start: client.StartLatest()})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if got := r.Partitions(); len(got) != 2 || got[0] != "0" || got[1] != "1" {
			t.Errorf("partitions %v, want [0 1]", got)
		}
		if r.EventHubName() != s.Options.EventHubName {
			t.Errorf("event hub name %q, want %q", r.EventHubName(), s.Options.EventHubName)
		}
		// Events sent after NewEventReader returns are the only ones the
		// reader returns.
		send(10, 12)
		for want := 10; want < 12; want++ {
			e, err := r.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if string(e.Body) != fmt.Sprint(want) {
				t.Fatalf("got %q, want %d", e.Body, want)
			}
		}
	})
}

// TestEventReaderRefusals: readers fail with clear, matchable errors.
func TestEventReaderRefusals(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, nil)
	ctx := testCtx(t, 30*time.Second)
	t.Run("unknown consumer group", func(t *testing.T) {
		svc := newService(t, s, nil)
		r, err := svc.NewEventReader(ctx, &client.EventReaderOptions{ConsumerGroup: "nope"})
		if err == nil {
			defer r.Close()
			_, err = r.Receive(ctx)
		}
		if !errors.Is(err, client.ErrDeviceNotFound) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("got %v, want a not-found error naming the group", err)
		}
	})
	t.Run("policy without ServiceConnect", func(t *testing.T) {
		svc, err := client.NewServiceClient(serviceCS(s, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey), serviceOpts(s))
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		if _, err := svc.NewEventReader(ctx, nil); !errors.Is(err, client.ErrUnauthorized) {
			t.Fatalf("got %v, want ErrUnauthorized", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		svc, err := client.NewServiceClient(serviceCS(s, auth.PolicyIoTHubOwner, otherKey), serviceOpts(s))
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		err = svc.Connect(ctx)
		var cbs *client.CBSError
		if !errors.Is(err, client.ErrUnauthorized) || !errors.As(err, &cbs) || cbs.Status != 401 {
			t.Fatalf("got %v, want a 401 CBS refusal", err)
		}
	})
}

// TestDeviceRefusals: bad credentials and limits give matchable errors
// at once, without retrying.
func TestDeviceRefusals(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, nil)
	ctx := testCtx(t, 30*time.Second)
	tests := []struct {
		name string
		cs   string
		msg  *client.Message
		want error
	}{
		{"wrong key", deviceCS(s, "dev1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktLi4="), nil, client.ErrUnauthorized},
		{"unknown device", deviceCS(s, "nobody", devKey), nil, client.ErrUnauthorized},
		{"disabled device", deviceCS(s, "off", devKey), nil, client.ErrUnauthorized},
		{"message too large", deviceCS(s, "dev1", devKey), &client.Message{Body: make([]byte, 300<<10)}, client.ErrMessageTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := client.NewDeviceClient(tc.cs, deviceOpts(s))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			msg := tc.msg
			if msg == nil {
				msg = &client.Message{Body: []byte("x")}
			}
			start := time.Now()
			err = d.SendEvent(ctx, msg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %v: a final error must not be retried", time.Since(start))
			}
		})
	}
	t.Run("closed client", func(t *testing.T) {
		d := newDevice(t, s, "dev1", nil)
		if err := d.SendEvent(ctx, &client.Message{Body: []byte("ok")}); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if err := d.SendEvent(ctx, &client.Message{Body: []byte("late")}); !errors.Is(err, client.ErrClosed) {
			t.Fatalf("send after Close: %v, want ErrClosed", err)
		}
	})
}
