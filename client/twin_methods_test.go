package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

func TestTwin(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, nil)
	ctx := testCtx(t, 30*time.Second)
	d := newDevice(t, s, "dev1", nil)
	svc := newService(t, s, nil)

	tw, err := d.GetTwin(ctx)
	if err != nil {
		t.Fatalf("GetTwin: %v", err)
	}
	rv := tw.ReportedVersion()
	for i, patch := range []map[string]any{
		{"fw": "1.0", "temp": 20},
		{"fw": "1.1", "nested": map[string]any{"a": true}},
		{"temp": nil}, // removes temp
	} {
		v, err := d.UpdateReported(ctx, patch)
		if err != nil {
			t.Fatalf("patch %d: %v", i, err)
		}
		if v != rv+int64(i)+1 {
			t.Fatalf("patch %d: version %d, want %d", i, v, rv+int64(i)+1)
		}
	}
	tw, err = d.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tw.Reported["fw"] != "1.1" || tw.Reported["temp"] != nil || tw.ReportedVersion() != rv+3 {
		t.Fatalf("reported %v", tw.Reported)
	}
	// The service sees the same reported properties.
	st, err := svc.GetTwin(ctx, "dev1", "")
	if err != nil {
		t.Fatal(err)
	}
	if st.DeviceID != "dev1" || st.Properties.Reported["fw"] != "1.1" || st.ETag == "" {
		t.Fatalf("service twin %+v", st)
	}

	// Desired-property updates arrive in order, with their versions.
	var mu sync.Mutex
	var got []client.DesiredUpdate
	if err := d.OnDesiredUpdate(ctx, func(u client.DesiredUpdate) {
		mu.Lock()
		got = append(got, u)
		mu.Unlock()
	}); err != nil {
		t.Fatalf("OnDesiredUpdate: %v", err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := svc.UpdateTwin(ctx, "dev1", "", client.TwinPatch{Desired: map[string]any{"interval": i}}, ""); err != nil {
			t.Fatalf("UpdateTwin: %v", err)
		}
	}
	waitFor(t, 10*time.Second, "3 desired updates", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 3 })
	for i, u := range got {
		if n, _ := u.Patch["interval"].(json.Number).Int64(); n != int64(i+1) {
			t.Errorf("update %d: %v", i, u.Patch)
		}
		if i > 0 && u.Version != got[i-1].Version+1 {
			t.Errorf("update %d: version %d after %d", i, u.Version, got[i-1].Version)
		}
	}
	tw, err = d.GetTwin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tw.DesiredVersion() != got[2].Version {
		t.Errorf("desired $version %d, want %d", tw.DesiredVersion(), got[2].Version)
	}

	// Unsubscribing stops the pushes.
	if err := d.OnDesiredUpdate(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpdateTwin(ctx, "dev1", "", client.TwinPatch{Desired: map[string]any{"interval": 9}}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetTwin(ctx); err != nil { // the push, if any, would precede this answer
		t.Fatal(err)
	}
	mu.Lock()
	if len(got) != 3 {
		t.Errorf("an update arrived after unsubscribing: %v", got[3:])
	}
	mu.Unlock()

	// Service-side errors.
	if _, err := svc.UpdateTwin(ctx, "dev1", "", client.TwinPatch{Tags: map[string]any{"x": 1}}, `"stale-etag"`); !errors.Is(err, client.ErrPreconditionFailed) {
		t.Errorf("stale etag: %v, want ErrPreconditionFailed", err)
	}
	if _, err := svc.GetTwin(ctx, "nobody", ""); !errors.Is(err, client.ErrDeviceNotFound) {
		t.Errorf("unknown device: %v, want ErrDeviceNotFound", err)
	}
	if _, err := svc.UpdateTwin(ctx, "dev1", "", client.TwinPatch{}, ""); err == nil {
		t.Error("an empty patch was sent")
	}
}

func TestMethods(t *testing.T) {
	checkNoLeaks(t)
	s := startHub(t, func(o *server.Options) { o.Methods.MinResponseTimeout = time.Second })
	ctx := testCtx(t, 30*time.Second)
	d := newDevice(t, s, "dev1", nil)
	svc := newService(t, s, nil)

	block := make(chan struct{})
	defer close(block)
	handlers := map[string]client.MethodHandler{
		"echo": func(_ context.Context, req client.MethodRequest) (client.MethodResponse, error) {
			return client.MethodResponse{Status: 200, Payload: json.RawMessage(req.Payload)}, nil
		},
		"reboot": func(context.Context, client.MethodRequest) (client.MethodResponse, error) {
			return client.MethodResponse{Status: 202, Payload: map[string]string{"state": "rebooting"}}, nil
		},
		"fail": func(context.Context, client.MethodRequest) (client.MethodResponse, error) {
			return client.MethodResponse{}, errors.New("sensor offline")
		},
		"slow": func(ctx context.Context, _ client.MethodRequest) (client.MethodResponse, error) {
			select {
			case <-block:
			case <-ctx.Done():
			}
			return client.MethodResponse{Status: 200}, nil
		},
	}
	for name, h := range handlers {
		if err := d.HandleMethod(ctx, name, h); err != nil {
			t.Fatalf("HandleMethod %s: %v", name, err)
		}
	}
	tests := []struct {
		name    string
		call    client.MethodCall
		status  int
		payload string
		err     error
	}{
		{"echo object", client.MethodCall{Name: "echo", Payload: map[string]int{"n": 1}}, 200, `{"n":1}`, nil},
		{"echo null", client.MethodCall{Name: "echo"}, 200, `null`, nil},
		{"status and payload", client.MethodCall{Name: "reboot"}, 202, `{"state":"rebooting"}`, nil},
		{"handler error", client.MethodCall{Name: "fail"}, 500, `{"message":"sensor offline"}`, nil},
		{"no handler", client.MethodCall{Name: "missing"}, 501, `{"message":"the device has no handler for method \"missing\""}`, nil},
		{"timeout", client.MethodCall{Name: "slow", ResponseTimeout: time.Second}, 0, "", client.ErrTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := svc.InvokeMethod(ctx, "dev1", "", tc.call)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.status || string(res.Payload) != tc.payload {
				t.Fatalf("got %d %s, want %d %s", res.Status, res.Payload, tc.status, tc.payload)
			}
		})
	}
	if _, err := svc.InvokeMethod(ctx, "dev2", "", client.MethodCall{Name: "echo"}); !errors.Is(err, client.ErrDeviceNotOnline) || errors.Is(err, client.ErrDeviceNotFound) {
		t.Errorf("offline device: %v, want ErrDeviceNotOnline", err)
	}
	if _, err := svc.InvokeMethod(ctx, "nobody", "", client.MethodCall{Name: "echo"}); !errors.Is(err, client.ErrDeviceNotFound) {
		t.Errorf("unknown device: %v, want ErrDeviceNotFound", err)
	}

	// Removing a handler makes the method unknown again.
	if err := d.HandleMethod(ctx, "echo", nil); err != nil {
		t.Fatal(err)
	}
	res, err := svc.InvokeMethod(ctx, "dev1", "", client.MethodCall{Name: "echo"})
	if err != nil || res.Status != 501 {
		t.Fatalf("removed handler: %v %+v, want status 501", err, res)
	}

	// Concurrent calls run concurrently: a call waits while "slow" blocks.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := svc.InvokeMethod(ctx, "dev1", "", client.MethodCall{Name: "reboot", Payload: i})
			if err == nil && res.Status != 202 {
				err = fmt.Errorf("status %d", res.Status)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
