package twin_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/server/servertest"
)

// TestTwinREST covers the service side: the twin document's shape, PATCH
// and PUT with If-Match, module twins, and refusals.
func TestTwinREST(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)

	code, tw, hdr := svc.Do("GET", "/twins/d1", nil)
	if code != 200 {
		t.Fatalf("GET /twins/d1: %d %v", code, tw)
	}
	etag, _ := tw["etag"].(string)
	if etag == "" || hdr.Get("ETag") != `"`+etag+`"` {
		t.Errorf("etag %q, ETag header %q", etag, hdr.Get("ETag"))
	}
	for k, want := range map[string]any{"deviceId": "d1", "version": float64(1), "status": "enabled", "authenticationType": "sas", "connectionState": "Disconnected"} {
		if tw[k] != want {
			t.Errorf("%s = %#v, want %#v", k, tw[k], want)
		}
	}
	if _, ok := tw["moduleId"]; ok {
		t.Error("device twin has a moduleId")
	}
	if x, ok := tw["x509Thumbprint"].(map[string]any); !ok || x["primaryThumbprint"] != nil {
		t.Errorf("x509Thumbprint = %#v", tw["x509Thumbprint"])
	}
	for _, sec := range []string{"desired", "reported"} {
		if path(tw, "properties", sec, "$version") != float64(1) {
			t.Errorf("%s $version = %v", sec, path(tw, "properties", sec, "$version"))
		}
		if path(tw, "properties", sec, "$metadata", "$lastUpdated") != "0001-01-01T00:00:00Z" {
			t.Errorf("%s $metadata = %v", sec, path(tw, "properties", sec, "$metadata"))
		}
	}

	// PATCH with the current etag merges tags and desired properties.
	before := time.Now().UTC().Add(-time.Second)
	code, tw, _ = svc.Do("PATCH", "/twins/d1", map[string]any{
		"tags":       map[string]any{"site": map[string]any{"city": "Oslo"}},
		"properties": map[string]any{"desired": map[string]any{"rate": 5, "$version": 99}},
	}, "If-Match", `"`+etag+`"`)
	if code != 200 || tw["version"] != float64(2) || path(tw, "tags", "site", "city") != "Oslo" ||
		path(tw, "properties", "desired", "rate") != float64(5) || path(tw, "properties", "desired", "$version") != float64(2) {
		t.Fatalf("PATCH: %d %v", code, tw)
	}
	lu, _ := path(tw, "properties", "desired", "$metadata", "rate", "$lastUpdated").(string)
	if ts, err := time.Parse(time.RFC3339Nano, lu); err != nil || ts.Before(before) {
		t.Errorf("desired rate $lastUpdated %q", lu)
	}
	if path(tw, "properties", "desired", "$metadata", "rate", "$lastUpdatedVersion") != float64(2) {
		t.Errorf("desired rate $lastUpdatedVersion %v", path(tw, "properties", "desired", "$metadata", "rate"))
	}

	// A stale etag is refused with 412 and changes nothing.
	code, body, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"tags": map[string]any{"x": 1}}, "If-Match", `"`+etag+`"`)
	if code != 412 || errorCode(body) != "PreconditionFailed" {
		t.Errorf("stale etag: %d %v", code, body)
	}

	// PUT replaces tags and desired properties; a twin as read back is
	// accepted as it is (reported, $metadata and service fields ignored).
	_, tw, _ = svc.Do("GET", "/twins/d1", nil)
	tw["tags"] = map[string]any{"only": true}
	path(tw, "properties", "desired").(map[string]any)["mode"] = "eco"
	delete(path(tw, "properties", "desired").(map[string]any), "rate")
	code, tw, _ = svc.Do("PUT", "/twins/d1", tw, "If-Match", "*")
	if code != 200 || path(tw, "tags", "site") != nil || path(tw, "tags", "only") != true ||
		path(tw, "properties", "desired", "rate") != nil || path(tw, "properties", "desired", "mode") != "eco" || path(tw, "properties", "desired", "$version") != float64(3) {
		t.Errorf("PUT: %d %v", code, tw)
	}

	// Module twins are separate documents.
	code, mt, _ := svc.Do("PATCH", "/twins/d1/modules/m1", map[string]any{"properties": map[string]any{"desired": map[string]any{"m": 1}}})
	if code != 200 || mt["moduleId"] != "m1" || mt["deviceId"] != "d1" || path(mt, "properties", "desired", "m") != float64(1) || mt["version"] != float64(2) {
		t.Errorf("module PATCH: %d %v", code, mt)
	}
	_, tw, _ = svc.Do("GET", "/twins/d1", nil)
	if path(tw, "properties", "desired", "m") != nil {
		t.Error("module write reached the device twin")
	}

	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"unknown device", "GET", "/twins/nobody", nil, 404, "DeviceNotFound"},
		{"unknown module", "GET", "/twins/d1/modules/nobody", nil, 404, "ModuleNotFound"},
		{"patch unknown device", "PATCH", "/twins/nobody", map[string]any{"tags": map[string]any{}}, 404, "DeviceNotFound"},
		{"not JSON", "PATCH", "/twins/d1", "{", 400, "ArgumentInvalid"},
		{"empty body", "PATCH", "/twins/d1", "", 400, "ArgumentInvalid"},
		{"tags not an object", "PATCH", "/twins/d1", map[string]any{"tags": 5}, 400, "ArgumentInvalid"},
		{"desired not an object", "PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": []int{1}}}, 400, "ArgumentInvalid"},
		{"bad key", "PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"a b": 1}}}, 400, "ArgumentInvalid"},
		{"other device id in body", "PATCH", "/twins/d1", map[string]any{"deviceId": "d2", "tags": map[string]any{}}, 400, "ArgumentInvalid"},
		{"tags over 8 KB", "PATCH", "/twins/d1", map[string]any{"tags": map[string]any{"a": strings.Repeat("x", 4000), "b": strings.Repeat("x", 4000), "c": strings.Repeat("x", 400)}}, 413, "MessageTooLarge"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := svc.Do(tc.method, tc.path, tc.body)
			if code != tc.status || errorCode(body) != tc.code {
				t.Errorf("%d %v, want %d %s", code, body, tc.status, tc.code)
			}
		})
	}
	_, after, _ := svc.Do("GET", "/twins/d1", nil)
	if after["version"] != float64(3) {
		t.Errorf("refused writes changed the twin: version %v", after["version"])
	}

	// Ids with characters that must be escaped in a path (the SDKs use
	// encodeURIComponent) reach the right twin.
	const odd = "x:y+z#1(ok)?"
	if code, body, _ := svc.Do("PUT", "/devices/"+url.PathEscape(odd), map[string]any{"deviceId": odd}); code != 200 {
		t.Fatalf("create %q: %d %v", odd, code, body)
	}
	code, tw, _ = svc.Do("PATCH", "/twins/"+url.PathEscape(odd), map[string]any{"tags": map[string]any{"odd": true}})
	if code != 200 || tw["deviceId"] != odd || path(tw, "tags", "odd") != true {
		t.Errorf("twin of %q: %d %v", odd, code, tw)
	}
}

// TestTwinRESTAuthorization: ServiceConnect reads and writes, RegistryRead
// only reads, others nothing.
func TestTwinRESTAuthorization(t *testing.T) {
	s := startHub(t, nil)
	patch := map[string]any{"tags": map[string]any{"a": 1}}
	tests := []struct {
		name          string
		svc           *service
		read, write   int
		modRead, modW int
	}{
		{"iothubowner", owner(t, s), 200, 200, 200, 200},
		{"service", newService(t, s, auth.PolicyService, auth.DevServicePrimaryKey), 200, 200, 200, 200},
		{"registryRead", newService(t, s, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey), 200, 401, 200, 401},
		{"registryReadWrite", newService(t, s, auth.PolicyRegistryReadWrite, auth.DevRegistryReadWritePrimaryKey), 200, 401, 200, 401},
		{"device policy", newService(t, s, auth.PolicyDevice, auth.DevDevicePrimaryKey), 401, 401, 401, 401},
		{"no token", servertest.NewRESTAt(t, owner(t, s).Base(), "", owner(t, s).HTTPClient()), 401, 401, 401, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				method, path string
				body         any
				want         int
			}{
				{"GET", "/twins/d1", nil, tc.read},
				{"PATCH", "/twins/d1", patch, tc.write},
				{"PUT", "/twins/d1", patch, tc.write},
				{"GET", "/twins/d1/modules/m1", nil, tc.modRead},
				{"PATCH", "/twins/d1/modules/m1", patch, tc.modW},
			} {
				code, body, _ := tc.svc.Do(c.method, c.path, c.body)
				if code != c.want {
					t.Errorf("%s %s: %d %v, want %d", c.method, c.path, code, body, c.want)
				}
				if code == 401 && errorCode(body) != "IotHubUnauthorizedAccess" {
					t.Errorf("%s %s: 401 with code %q", c.method, c.path, errorCode(body))
				}
			}
		})
	}
}
