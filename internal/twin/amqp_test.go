package twin_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
)

// TestDeviceTwinOverAMQP walks a device through the SDKs' twin exchange
// on the wire: GET, PATCH reported, PUT (subscribe), a desired push caused
// by the service, DELETE (unsubscribe).
func TestDeviceTwinOverAMQP(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	c := openTwin(t, dialIdentity(t, s, "d1", ""), "/devices/d1/twin", 10)

	// GET, with the correlation-id types the SDKs use: Node a string, C# a
	// string, Java a uuid; the C SDK's ulong is echoed too.
	for _, corr := range []any{"3f1e6f4a-9f0d-4c3b-8a55-0a4f0d5a2b11", goamqp.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, uint64(42)} {
		m := c.call("GET", "", corr, []byte(" "))
		if st := status(t, m); st != 200 {
			t.Fatalf("GET: status %d: %s", st, describe(m))
		}
		doc := bodyJSON(t, m)
		if path(doc, "desired", "$version") != float64(1) || path(doc, "reported", "$version") != float64(1) {
			t.Errorf("GET of a new twin = %v, want desired and reported at $version 1", doc)
		}
		if path(doc, "desired", "$metadata") != nil {
			t.Errorf("device GET carries $metadata: %v", doc)
		}
	}

	// PATCH reported: 204 and the new reported version as a long.
	m := c.call("PATCH", "/properties/reported", "p1", []byte(`{"temp":21.5,"fw":{"v":"1.2"}}`))
	if st := status(t, m); st != 204 {
		t.Fatalf("PATCH: status %d: %s", st, describe(m))
	}
	if v := version(t, m); v != 2 {
		t.Errorf("PATCH: version %d, want 2", v)
	}
	if len(m.Data) != 0 {
		t.Errorf("PATCH response has a body: %s", describe(m))
	}
	m = c.call("PATCH", "/properties/reported", "p2", []byte(`{"fw":{"v":null,"w":2}}`))
	if v := version(t, m); v != 3 {
		t.Errorf("second PATCH: version %d, want 3", v)
	}
	code, tw, _ := svc.Do("GET", "/twins/d1", nil)
	if code != 200 || path(tw, "properties", "reported", "temp") != 21.5 || path(tw, "properties", "reported", "fw", "w") != float64(2) ||
		path(tw, "properties", "reported", "fw", "v") != nil || path(tw, "properties", "reported", "$version") != float64(3) {
		t.Errorf("service reads %d %v", code, tw["properties"])
	}

	// PUT subscribes to desired-property pushes.
	m = c.call("PUT", "/notifications/twin/properties/desired", "s1", []byte(" "))
	if st := status(t, m); st < 200 || st > 299 {
		t.Fatalf("PUT: status %d", st)
	}
	etag, _ := tw["etag"].(string)
	if code, body, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"fan": "on", "cfg": map[string]any{"rate": 5}}}}, "If-Match", `"`+etag+`"`); code != 200 {
		t.Fatalf("service PATCH desired: %d %v", code, body)
	}
	push := c.receive()
	if push.Properties != nil && push.Properties.CorrelationID != nil {
		t.Errorf("push carries a correlation-id: %s", describe(push))
	}
	if v := version(t, push); v != 2 {
		t.Errorf("push version %d, want 2", v)
	}
	if doc := bodyJSON(t, push); doc["fan"] != "on" || path(doc, "cfg", "rate") != float64(5) || doc["$version"] != float64(2) {
		t.Errorf("push body %v", doc)
	}
	// A removal is pushed as null.
	if code, body, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"fan": nil}}}); code != 200 {
		t.Fatalf("service PATCH desired: %d %v", code, body)
	}
	push = c.receive()
	if doc := bodyJSON(t, push); len(doc) != 2 || doc["fan"] != nil || doc["$version"] != float64(3) {
		t.Errorf("removal push body %v, want {fan: null, $version: 3}", doc)
	} else if _, ok := doc["fan"]; !ok {
		t.Errorf("removal push lacks fan: %v", doc)
	}
	// Tags do not concern the device.
	if code, _, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"tags": map[string]any{"floor": 3}}); code != 200 {
		t.Fatalf("service PATCH tags: %d", code)
	}
	m = c.call("GET", "", "g2", []byte(" "))
	if doc := bodyJSON(t, m); path(doc, "desired", "cfg", "rate") != float64(5) || path(doc, "desired", "$version") != float64(3) || path(doc, "reported", "temp") != 21.5 {
		t.Errorf("GET after pushes: %v", doc)
	}

	// DELETE unsubscribes: a later change is not pushed, so the next
	// message is the response to the GET sent after it.
	m = c.call("DELETE", "/notifications/twin/properties/desired", "u1", []byte(" "))
	if st := status(t, m); st < 200 || st > 299 {
		t.Fatalf("DELETE: status %d", st)
	}
	if code, _, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"late": true}}}); code != 200 {
		t.Fatal("service PATCH")
	}
	m = c.call("GET", "", "g3", []byte(" "))
	if doc := bodyJSON(t, m); path(doc, "desired", "late") != true {
		t.Errorf("GET after unsubscribing: %v", doc)
	}
}

// TestModuleTwinOverAMQP: modules have their own twin, reached on the
// module address with the module's identity.
func TestModuleTwinOverAMQP(t *testing.T) {
	s := startHub(t, nil)
	c := openTwin(t, dialIdentity(t, s, "d1", "m1"), "/devices/d1/modules/m1/twin", 10)
	if m := c.call("PATCH", "/properties/reported", "p", []byte(`{"module":true}`)); status(t, m) != 204 {
		t.Fatalf("module PATCH: %s", describe(m))
	}
	c.call("PUT", "/notifications/twin/properties/desired", "s", nil)
	svc := owner(t, s)
	if code, _, _ := svc.Do("PATCH", "/twins/d1/modules/m1", map[string]any{"properties": map[string]any{"desired": map[string]any{"m": 1}}}); code != 200 {
		t.Fatal("service PATCH module twin")
	}
	// The device twin is not the module's: no push for it.
	if code, _, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"d": 1}}}); code != 200 {
		t.Fatal("service PATCH device twin")
	}
	push := c.receive()
	if doc := bodyJSON(t, push); doc["m"] != float64(1) || doc["d"] != nil {
		t.Errorf("module push %v", doc)
	}
	m := c.call("GET", "", "g", nil)
	if doc := bodyJSON(t, m); path(doc, "reported", "module") != true || path(doc, "desired", "d") != nil {
		t.Errorf("module GET %v", doc)
	}
	_, tw, _ := svc.Do("GET", "/twins/d1", nil)
	if path(tw, "properties", "reported", "module") != nil {
		t.Errorf("device twin got the module's reported property: %v", tw)
	}
}

// TestTwinRequestErrors: bad requests are answered with an error status
// and a JSON body, and the channel keeps working.
func TestTwinRequestErrors(t *testing.T) {
	s := startHub(t, nil)
	c := openTwin(t, dialIdentity(t, s, "d1", ""), "/devices/d1/twin", 10)
	big := `{"s":"` + strings.Repeat("x", 4000) + `"`
	for i := range 9 {
		big += fmt.Sprintf(`,"s%d":"%s"`, i, strings.Repeat("x", 4000))
	}
	big += "}"
	tests := []struct {
		name          string
		op, resource  string
		body          []byte
		status        int32
		errorCodeWant float64
	}{
		{"unknown operation", "POST", "/properties/reported", []byte(`{}`), 400, 400004},
		{"no operation", "", "", nil, 400, 400004},
		{"PATCH without resource", "PATCH", "", []byte(`{"a":1}`), 400, 400004},
		{"PATCH of desired", "PATCH", "/properties/desired", []byte(`{"a":1}`), 400, 400004},
		{"not JSON", "PATCH", "/properties/reported", []byte(`{"a":`), 400, 400004},
		{"not an object", "PATCH", "/properties/reported", []byte(`[1]`), 400, 400004},
		{"dot in a key", "PATCH", "/properties/reported", []byte(`{"a.b":1}`), 400, 400004},
		{"over 32 KB", "PATCH", "/properties/reported", []byte(big), 413, 413001},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := c.call(tc.op, tc.resource, fmt.Sprintf("e%d", i), tc.body)
			if st := status(t, m); st != tc.status {
				t.Errorf("status %d, want %d: %s", st, tc.status, describe(m))
			}
			if doc := bodyJSON(t, m); doc["errorCode"] != tc.errorCodeWant || doc["message"] == "" {
				t.Errorf("error body %v", doc)
			}
			if _, ok := m.Annotations["version"]; ok {
				t.Errorf("an error response carries a version: %s", describe(m))
			}
		})
	}
	m := c.call("GET", "", "after", nil)
	if status(t, m) != 200 || path(bodyJSON(t, m), "reported", "$version") != float64(1) {
		t.Errorf("a refused patch changed the twin, or GET failed: %s", describe(m))
	}
}

// TestTwinOfDeletedDevice: a device deleted and created again under the
// same id starts with a new twin, and requests for a deleted device fail
// with 404.
func TestTwinOfDeletedDevice(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	if code, body, _ := svc.Do("PUT", "/devices/gone", map[string]any{"deviceId": "gone"}); code != 200 {
		t.Fatalf("create device: %d %v", code, body)
	}
	c := openTwin(t, dialIdentity(t, s, "gone", ""), "/devices/gone/twin", 10)
	c.call("PATCH", "/properties/reported", "p", []byte(`{"old":1}`))
	if code, _, _ := svc.Do("PATCH", "/twins/gone", map[string]any{"tags": map[string]any{"old": 1}}); code != 200 {
		t.Fatal("tag the twin")
	}
	// Deleted behind the REST API's back (which would close the device's
	// connection at once): the connection lives until the hub's periodic
	// revalidation, and its requests fail meanwhile.
	if err := s.Registry.DeleteDevice(context.Background(), "gone", "*"); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	if m := c.call("GET", "", "g", nil); status(t, m) != 404 || bodyJSON(t, m)["errorCode"] != float64(404001) {
		t.Errorf("GET for a deleted device: %s", describe(m))
	}
	if code, body, _ := svc.Do("GET", "/twins/gone", nil); code != 404 || errorCode(body) != "DeviceNotFound" {
		t.Errorf("REST GET for a deleted device: %d %v", code, body)
	}
	if code, _, _ := svc.Do("PUT", "/devices/gone", map[string]any{"deviceId": "gone"}); code != 200 {
		t.Fatal("create the device again")
	}
	code, tw, _ := svc.Do("GET", "/twins/gone", nil)
	if code != 200 || tw["version"] != float64(1) || len(tw["tags"].(map[string]any)) != 0 ||
		path(tw, "properties", "reported", "old") != nil || path(tw, "properties", "reported", "$version") != float64(1) {
		t.Errorf("twin of the new device: %d %v", code, tw)
	}
}

// TestTwinBackPressure: a device that stops granting credit loses its
// response link once MaxPendingMessages pile up, and nothing is left
// running when its links are gone.
func TestTwinBackPressure(t *testing.T) {
	s := startHub(t, func(o *server.Options) { o.Twin.MaxPendingMessages = 3 })
	svc := owner(t, s)
	sess := dialIdentity(t, s, "d1", "")
	c := openTwin(t, sess, "/devices/d1/twin", 1)
	c.call("PUT", "/notifications/twin/properties/desired", "s", nil)
	// One push fills the receiver's single credit (it is not received);
	// three more wait in the hub; the fifth overflows.
	for i := range 5 {
		if code, _, _ := svc.Do("PATCH", "/twins/d1", map[string]any{"properties": map[string]any{"desired": map[string]any{"n": i}}}); code != 200 {
			t.Fatalf("PATCH %d: %d", i, code)
		}
	}
	var linkErr *goamqp.LinkError
	for range 10 {
		_, err := c.receiveErr(10 * time.Second)
		if err == nil {
			continue
		}
		if !errors.As(err, &linkErr) || linkErr.RemoteErr == nil || linkErr.RemoteErr.Condition != goamqp.ErrCondResourceLimitExceeded {
			t.Fatalf("receive: %v, want the link detached with %s", err, goamqp.ErrCondResourceLimitExceeded)
		}
		break
	}
	if linkErr == nil {
		t.Fatal("the response link was not detached")
	}
	// A new response link works again.
	c2 := openTwin(t, sess, "/devices/d1/twin", 10)
	if m := c2.call("GET", "", "g", nil); path(bodyJSON(t, m), "desired", "n") != float64(4) {
		t.Errorf("GET on a new link: %s", describe(m))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, closer := range []interface{ Close(context.Context) error }{c.snd, c2.snd, c2.rcv} {
		closer.Close(ctx)
	}
	waitNoGoroutines(t, "amqphub/internal/twin.")
}

// TestTwinLinksAuthorization: a device cannot open another device's or a
// module's twin links.
func TestTwinLinksAuthorization(t *testing.T) {
	s := startHub(t, nil)
	sess := dialIdentity(t, s, "d2", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, addr := range []string{"/devices/d1/twin", "/devices/d2/modules/m1/twin"} {
		_, err := sess.NewReceiver(ctx, addr, nil)
		var ae *goamqp.Error
		if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondUnauthorizedAccess {
			t.Errorf("attach %s as d2: %v, want %s", addr, err, goamqp.ErrCondUnauthorizedAccess)
		}
	}
	if _, err := sess.NewReceiver(ctx, "/devices/d2/twin", nil); err != nil {
		t.Errorf("own twin: %v", err)
	}
}
