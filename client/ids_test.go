package client_test

import (
	"context"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

// TestUnusualDeviceIDs: ids with the punctuation IoT Hub allows are
// escaped correctly in link addresses, token audiences, C2D "to" and REST
// paths.
func TestUnusualDeviceIDs(t *testing.T) {
	checkNoLeaks(t)
	ids := []string{"a:b.c+d", "x%41y", "we#ird?(1)", "e=mc2@lab$'!,*"}
	s := startHub(t, func(o *server.Options) {
		for _, id := range ids {
			o.Devices = append(o.Devices, server.DeviceConfig{ID: id, PrimaryKey: devKey})
		}
		o.C2D.FeedbackInterval = 20 * time.Millisecond
	})
	ctx := testCtx(t, 30*time.Second)
	svc := newService(t, s, nil)
	for _, id := range ids {
		t.Run(id, func(t *testing.T) {
			d := newDevice(t, s, id, nil)
			if err := d.SendEvent(ctx, &client.Message{Body: []byte(id)}); err != nil {
				t.Fatalf("send: %v", err)
			}
			e := findEvent(t, svc, func(e *client.Event) bool { return string(e.Body) == id })
			if e.DeviceID != id {
				t.Errorf("event from %q", e.DeviceID)
			}
			if err := svc.SendC2D(ctx, id, &client.Message{Body: []byte("c2d")}, nil); err != nil {
				t.Fatalf("SendC2D: %v", err)
			}
			m, err := d.ReceiveC2D(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Complete(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := d.UpdateReported(ctx, map[string]any{"ok": true}); err != nil {
				t.Fatalf("UpdateReported: %v", err)
			}
			tw, err := svc.GetTwin(ctx, id, "")
			if err != nil || tw.DeviceID != id || tw.Properties.Reported["ok"] != true {
				t.Fatalf("GetTwin: %v %+v", err, tw)
			}
			if err := d.HandleMethod(ctx, "m", func(context.Context, client.MethodRequest) (client.MethodResponse, error) {
				return client.MethodResponse{Status: 200}, nil
			}); err != nil {
				t.Fatal(err)
			}
			if res, err := svc.InvokeMethod(ctx, id, "", client.MethodCall{Name: "m"}); err != nil || res.Status != 200 {
				t.Fatalf("InvokeMethod: %v %+v", err, res)
			}
		})
	}
}
