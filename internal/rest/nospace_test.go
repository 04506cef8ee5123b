package rest

import (
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/registry"
)

// TestRegistryNoSpace: while the registry's disk is full a create gets 503
// ServiceUnavailable in IoT Hub's error shape with Retry-After, reads keep
// working, and once space returns the same create succeeds.
func TestRegistryNoSpace(t *testing.T) {
	disk := pebbleutiltest.NewDisk()
	e := newEnvWith(t, registry.PebbleOptions{DiskGuard: disk.Options()}, nil)
	tok := ownerToken(t)
	decodeDevice(t, e.do("PUT", "/devices/old", tok, map[string]any{}, nil))

	disk.Full()
	for _, req := range []struct{ method, path string }{
		{"PUT", "/devices/new"},
		{"POST", "/devices"},
		{"DELETE", "/devices/old"},
	} {
		var body any = map[string]any{}
		if req.method == "POST" {
			body = []map[string]any{{"id": "b1", "importMode": "create"}}
		} else if req.method == "DELETE" {
			body = nil
		}
		r := e.do(req.method, req.path, tok, body, nil)
		wantError(t, r, http.StatusServiceUnavailable, CodeServiceUnavailable)
		if got := r.header.Get("Retry-After"); got != RetryAfterSeconds {
			t.Errorf("%s %s: Retry-After %q, want %q", req.method, req.path, got, RetryAfterSeconds)
		}
		if !strings.Contains(string(r.body), "insufficient disk space") {
			t.Errorf("%s %s: body %s does not name the cause", req.method, req.path, r.body)
		}
	}
	decodeDevice(t, e.do("GET", "/devices/old", tok, nil, nil))
	wantError(t, e.do("GET", "/devices/new", tok, nil, nil), http.StatusNotFound, CodeDeviceNotFound)

	disk.Freed()
	if d := decodeDevice(t, e.do("PUT", "/devices/new", tok, map[string]any{}, nil)); d.DeviceID != "new" {
		t.Fatalf("created %+v", d)
	}
}

// TestOnIdentityChange: the hook runs after each successful replace or
// delete of a device or module (through PUT, DELETE or bulk), before the
// response, and not after creates or failures.
func TestOnIdentityChange(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	e := newEnvWith(t, registry.PebbleOptions{}, func(c *Config) {
		c.OnIdentityChange = func(deviceID, moduleID string) {
			mu.Lock()
			calls = append(calls, deviceID+"/"+moduleID)
			mu.Unlock()
		}
	})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := calls
		calls = nil
		return out
	}
	tok := ownerToken(t)
	star := map[string]string{"If-Match": "*"}
	steps := []struct {
		name    string
		method  string
		path    string
		body    any
		hdr     map[string]string
		status  int
		changed []string
	}{
		{"create device", "PUT", "/devices/d1", map[string]any{}, nil, 200, nil},
		{"create module", "PUT", "/devices/d1/modules/m1", map[string]any{}, nil, 200, nil},
		{"disable device", "PUT", "/devices/d1", map[string]any{"status": "disabled"}, star, 200, []string{"d1/"}},
		{"stale replace", "PUT", "/devices/d1", map[string]any{}, map[string]string{"If-Match": `"stale"`}, 412, nil},
		{"replace module", "PUT", "/devices/d1/modules/m1", map[string]any{}, star, 200, []string{"d1/m1"}},
		{"delete module", "DELETE", "/devices/d1/modules/m1", nil, nil, 204, []string{"d1/m1"}},
		{"delete missing module", "DELETE", "/devices/d1/modules/m1", nil, nil, 404, nil},
		{"bulk", "POST", "/devices", []map[string]any{
			{"id": "b1", "importMode": "create"},
			{"id": "d1", "importMode": "update", "status": "enabled"},
			{"id": "b1", "importMode": "delete"},
		}, nil, 400, nil}, // b1 twice: refused as a whole
		{"bulk update and delete", "POST", "/devices", []map[string]any{
			{"id": "b2", "importMode": "create"},
			{"id": "d1", "importMode": "update", "status": "enabled"},
			{"id": "missing", "importMode": "delete"},
		}, nil, 200, []string{"d1/"}},
		{"delete device", "DELETE", "/devices/d1", nil, nil, 204, []string{"d1/"}},
	}
	for _, st := range steps {
		r := e.do(st.method, st.path, tok, st.body, st.hdr)
		if r.status != st.status {
			t.Fatalf("%s: status %d, want %d: %s", st.name, r.status, st.status, r.body)
		}
		if got := take(); !reflect.DeepEqual(got, st.changed) {
			t.Fatalf("%s: OnIdentityChange calls %q, want %q", st.name, got, st.changed)
		}
	}
}
