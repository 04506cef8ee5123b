package methods_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/server"
)

// methodLinks is a device's methods channel, opened like the SDKs do.
type methodLinks struct {
	t   testing.TB
	rcv *goamqp.Receiver // requests from the hub
	snd *goamqp.Sender   // responses to the hub
}

func openMethods(t testing.TB, sess *goamqp.Session, addr string) *methodLinks {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	props := map[string]any{"com.microsoft:channel-correlation-id": "methods:test", "com.microsoft:api-version": "2021-04-12"}
	snd, err := sess.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: props, RequestedReceiverSettleMode: goamqp.ReceiverSettleModeFirst.Ptr()})
	if err != nil {
		t.Fatalf("methods sender on %s: %v", addr, err)
	}
	rcv, err := sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Properties: props, Credit: 50})
	if err != nil {
		t.Fatalf("methods receiver on %s: %v", addr, err)
	}
	return &methodLinks{t: t, rcv: rcv, snd: snd}
}

// next returns the next method request.
func (c *methodLinks) next() *goamqp.Message {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.rcv.Receive(ctx, nil)
	if err != nil {
		c.t.Fatalf("receive method request: %v", err)
	}
	if err := c.rcv.AcceptMessage(ctx, m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// respond sends a response; a nil status leaves IoThub-status out.
func (c *methodLinks) respond(corr, status any, body []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := &goamqp.Message{Properties: &goamqp.MessageProperties{CorrelationID: corr}, ApplicationProperties: map[string]any{}}
	if status != nil {
		m.ApplicationProperties["IoThub-status"] = status
	}
	if body != nil {
		m.Data = [][]byte{body}
	}
	// Sent unsettled, as Node does: the hub must accept it.
	if err := c.snd.Send(ctx, m, nil); err != nil {
		c.t.Fatalf("send method response: %v", err)
	}
}

type result struct {
	code int
	body map[string]any
	took time.Duration
}

// invoke starts a REST method call and returns where its result arrives.
func invoke(svc *service, path string, req map[string]any) <-chan result {
	ch := make(chan result, 1)
	start := time.Now()
	go func() {
		code, body, _ := svc.Do("POST", path, req)
		ch <- result{code, body, time.Since(start)}
	}()
	return ch
}

func wait(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("the method call did not return")
		return result{}
	}
}

func corrUUID(t *testing.T, m *goamqp.Message) goamqp.UUID {
	t.Helper()
	if m.Properties == nil {
		t.Fatal("method request without properties")
	}
	u, ok := m.Properties.CorrelationID.(goamqp.UUID)
	if !ok {
		t.Fatalf("correlation-id %#v (%T), want an AMQP uuid", m.Properties.CorrelationID, m.Properties.CorrelationID)
	}
	if u[6]>>4 != 4 || u[8]>>6 != 2 {
		t.Errorf("correlation-id %s is not an RFC 4122 version-4 uuid", u)
	}
	return u
}

func jsonEq(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	g, _ := json.Marshal(got)
	ws, _ := json.Marshal(w)
	if !bytes.Equal(g, ws) {
		t.Errorf("%s = %s, want %s", what, g, ws)
	}
}

// TestMethodInvokeOverAMQP: the request on the wire and the round trip,
// with the response shapes the SDKs send.
func TestMethodInvokeOverAMQP(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	dev := openMethods(t, dialIdentity(t, s, "d1", ""), "/devices/d1/methods/devicebound")
	tests := []struct {
		name       string
		req        map[string]any
		wantBody   string // the request body the device sees
		corr       func(goamqp.UUID) any
		status     any
		respBody   []byte
		wantStatus float64
		wantResult string
	}{
		{"uuid correlation (C#, Node)", map[string]any{"methodName": "reboot", "payload": map[string]any{"delay": 1}, "responseTimeoutInSeconds": 10},
			`{"delay":1}`, func(u goamqp.UUID) any { return u }, int32(201), []byte(`{"ok":true}`), 201, `{"ok":true}`},
		{"string correlation, no payload", map[string]any{"methodName": "ping"},
			`null`, func(u goamqp.UUID) any { return u.String() }, int32(200), []byte(`"pong"`), 200, `"pong"`},
		{"braced upper-case string correlation, empty response", map[string]any{"methodName": "a-b_c.d", "payload": 3},
			`3`, func(u goamqp.UUID) any { return "{" + strings.ToUpper(u.String()) + "}" }, int32(500), nil, 500, `null`},
		{"long status, array payload", map[string]any{"methodName": "m", "payload": []any{1, "x"}, "connectTimeoutInSeconds": 0},
			`[1,"x"]`, func(u goamqp.UUID) any { return u }, int64(404), []byte(` [2] `), 404, `[2]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := invoke(svc, "/twins/d1/methods", tc.req)
			m := dev.next()
			u := corrUUID(t, m)
			if got := m.ApplicationProperties["IoThub-methodname"]; got != tc.req["methodName"] {
				t.Errorf("IoThub-methodname %#v, want %v", got, tc.req["methodName"])
			}
			if got := string(bytes.Join(m.Data, nil)); got != tc.wantBody {
				t.Errorf("request body %q, want %q", got, tc.wantBody)
			}
			dev.respond(tc.corr(u), tc.status, tc.respBody)
			r := wait(t, res)
			if r.code != 200 || r.body["status"] != tc.wantStatus {
				t.Fatalf("invoke: %d %v", r.code, r.body)
			}
			jsonEq(t, "payload", r.body["payload"], tc.wantResult)
		})
	}
}

// TestModuleMethod: modules have their own methods links and route.
func TestModuleMethod(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	mod := openMethods(t, dialIdentity(t, s, "d1", "m1"), "/devices/d1/modules/m1/methods/devicebound")
	// The device itself is not online: the module's link does not count.
	if r := wait(t, invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "x"})); r.code != 404 || errorCode(r.body) != "DeviceNotOnline" {
		t.Errorf("device method while only the module is online: %d %v", r.code, r.body)
	}
	res := invoke(svc, "/twins/d1/modules/m1/methods", map[string]any{"methodName": "mod", "payload": "hi"})
	m := mod.next()
	mod.respond(corrUUID(t, m), int32(200), []byte(`{"from":"m1"}`))
	if r := wait(t, res); r.code != 200 || r.body["status"] != float64(200) {
		t.Fatalf("module invoke: %d %v", r.code, r.body)
	} else {
		jsonEq(t, "payload", r.body["payload"], `{"from":"m1"}`)
	}
}

// TestMethodErrors: refusals answer at once with IoT Hub's statuses and
// codes.
func TestMethodErrors(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	openMethods(t, dialIdentity(t, s, "d1", ""), "/devices/d1/methods/devicebound")
	tests := []struct {
		name   string
		svc    *service
		path   string
		body   any
		status int
		code   string
	}{
		{"offline device", svc, "/twins/d2/methods", map[string]any{"methodName": "m"}, 404, "DeviceNotOnline"},
		{"unknown device", svc, "/twins/nobody/methods", map[string]any{"methodName": "m"}, 404, "DeviceNotFound"},
		{"unknown module", svc, "/twins/d1/modules/nobody/methods", map[string]any{"methodName": "m"}, 404, "ModuleNotFound"},
		{"no method name", svc, "/twins/d1/methods", map[string]any{"payload": 1}, 400, "ArgumentInvalid"},
		{"method name with a slash", svc, "/twins/d1/methods", map[string]any{"methodName": "a/b"}, 400, "ArgumentInvalid"},
		{"method name with a space", svc, "/twins/d1/methods", map[string]any{"methodName": "a b"}, 400, "ArgumentInvalid"},
		{"response timeout below 5 s", svc, "/twins/d1/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 1}, 400, "ArgumentInvalid"},
		{"response timeout over 300 s", svc, "/twins/d1/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 301}, 400, "ArgumentInvalid"},
		{"connect timeout over 300 s", svc, "/twins/d1/methods", map[string]any{"methodName": "m", "connectTimeoutInSeconds": 301}, 400, "ArgumentInvalid"},
		{"negative connect timeout", svc, "/twins/d1/methods", map[string]any{"methodName": "m", "connectTimeoutInSeconds": -1}, 400, "ArgumentInvalid"},
		{"fractional timeout", svc, "/twins/d1/methods", `{"methodName":"m","responseTimeoutInSeconds":5.5}`, 400, "ArgumentInvalid"},
		{"not JSON", svc, "/twins/d1/methods", `{"methodName":`, 400, "ArgumentInvalid"},
		{"payload over 128 KB", svc, "/twins/d1/methods", map[string]any{"methodName": "m", "payload": strings.Repeat("x", 128<<10)}, 413, "MessageTooLarge"},
		{"registryRead policy", newService(t, s, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey), "/twins/d1/methods", map[string]any{"methodName": "m"}, 401, "IotHubUnauthorizedAccess"},
		{"device policy", newService(t, s, auth.PolicyDevice, auth.DevDevicePrimaryKey), "/twins/d1/methods", map[string]any{"methodName": "m"}, 401, "IotHubUnauthorizedAccess"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, body, _ := tc.svc.Do("POST", tc.path, tc.body)
			if code != tc.status || errorCode(body) != tc.code {
				t.Errorf("%d %v, want %d %s", code, body, tc.status, tc.code)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("the refusal took %v", d)
			}
		})
	}
}

// TestMethodTimeouts: a device that does not answer gives 504 after the
// response timeout; a device that does not attach gives 404 after the
// connect timeout; one that attaches meanwhile is called.
func TestMethodTimeouts(t *testing.T) {
	s := startHub(t, func(o *server.Options) { o.Methods.MinResponseTimeout = time.Second })
	svc := owner(t, s)
	dev := openMethods(t, dialIdentity(t, s, "d1", ""), "/devices/d1/methods/devicebound")

	res := invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "slow", "responseTimeoutInSeconds": 1})
	dev.next() // received, never answered
	r := wait(t, res)
	if r.code != 504 || errorCode(r.body) != "GatewayTimeout" {
		t.Errorf("unanswered call: %d %v, want 504 GatewayTimeout", r.code, r.body)
	}
	if r.took < time.Second || r.took > 10*time.Second {
		t.Errorf("unanswered call returned after %v, want about 1 s", r.took)
	}

	r = wait(t, invoke(svc, "/twins/d2/methods", map[string]any{"methodName": "m", "connectTimeoutInSeconds": 1}))
	if r.code != 404 || errorCode(r.body) != "DeviceNotOnline" || r.took < time.Second || r.took > 10*time.Second {
		t.Errorf("device that never attaches: %d %v after %v, want 404 DeviceNotOnline after about 1 s", r.code, r.body, r.took)
	}

	res = invoke(svc, "/twins/d2/methods", map[string]any{"methodName": "late", "connectTimeoutInSeconds": 20})
	waitGoroutine(t, "amqphub/internal/methods.(*Endpoint).target")
	d2 := openMethods(t, dialIdentity(t, s, "d2", ""), "/devices/d2/methods/devicebound")
	m := d2.next()
	d2.respond(corrUUID(t, m), int32(200), []byte(`1`))
	if r := wait(t, res); r.code != 200 || r.body["status"] != float64(200) {
		t.Errorf("device attaching within the connect timeout: %d %v", r.code, r.body)
	}
}

// TestMethodDeviceDisconnects: a call whose device goes away fails at
// once, not at its timeout.
func TestMethodDeviceDisconnects(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	sess := dialIdentity(t, s, "d1", "")
	dev := openMethods(t, sess, "/devices/d1/methods/devicebound")
	res := invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 120})
	dev.next()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r := wait(t, res)
	if r.code != 404 || errorCode(r.body) != "DeviceConnectionClosedRemotely" {
		t.Errorf("%d %v, want 404 DeviceConnectionClosedRemotely", r.code, r.body)
	}
	if r.took > 20*time.Second {
		t.Errorf("the call failed after %v", r.took)
	}
	waitNoGoroutines(t, "amqphub/internal/methods.")
}

// TestMethodResponseMatching: only the called identity can answer, and a
// response to no pending call is ignored.
func TestMethodResponseMatching(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	d1 := openMethods(t, dialIdentity(t, s, "d1", ""), "/devices/d1/methods/devicebound")
	d2 := openMethods(t, dialIdentity(t, s, "d2", ""), "/devices/d2/methods/devicebound")
	res := invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "m"})
	u := corrUUID(t, d1.next())
	d2.respond(u, int32(666), []byte(`"from d2"`))
	d1.respond(goamqp.UUID{9, 9, 9}, int32(667), []byte(`"unknown call"`))
	d1.respond(u, int32(200), []byte(`"from d1"`))
	r := wait(t, res)
	if r.code != 200 || r.body["status"] != float64(200) || r.body["payload"] != "from d1" {
		t.Errorf("%d %v, want d1's answer", r.code, r.body)
	}
	// A second answer to a finished call changes nothing and the links
	// keep working.
	d1.respond(u, int32(201), nil)
	res = invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "again"})
	d1.respond(corrUUID(t, d1.next()), int32(202), nil)
	if r := wait(t, res); r.body["status"] != float64(202) {
		t.Errorf("next call: %d %v", r.code, r.body)
	}
}

// TestMethodBadResponse: responses the hub cannot relay give 502.
func TestMethodBadResponse(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	dev := openMethods(t, dialIdentity(t, s, "d1", ""), "/devices/d1/methods/devicebound")
	for _, tc := range []struct {
		name   string
		status any
		body   []byte
	}{
		{"no IoThub-status", nil, []byte(`{}`)},
		{"string IoThub-status", "200", []byte(`{}`)},
		{"body not JSON", int32(200), []byte(`not json`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "m"})
			dev.respond(corrUUID(t, dev.next()), tc.status, tc.body)
			if r := wait(t, res); r.code != 502 || errorCode(r.body) != "BadDeviceResponse" {
				t.Errorf("%d %v, want 502 BadDeviceResponse", r.code, r.body)
			}
		})
	}
}

// TestMethodConcurrentCalls: many calls in flight on one device are each
// answered with their own response.
func TestMethodConcurrentCalls(t *testing.T) {
	s := startHub(t, nil)
	svc := owner(t, s)
	sess := dialIdentity(t, s, "d1", "")
	dev := openMethods(t, sess, "/devices/d1/methods/devicebound")
	const n = 20
	results := make([]<-chan result, n)
	for i := range n {
		results[i] = invoke(svc, "/twins/d1/methods", map[string]any{"methodName": "echo", "payload": i})
	}
	var wg sync.WaitGroup
	reqs := make([]*goamqp.Message, n)
	for i := range n {
		reqs[i] = dev.next()
	}
	// Answer in reverse order, from several goroutines.
	for i := n - 1; i >= 0; i-- {
		wg.Add(1)
		go func(m *goamqp.Message) {
			defer wg.Done()
			dev.respond(m.Properties.CorrelationID, int32(200), bytes.Join(m.Data, nil))
		}(reqs[i])
	}
	wg.Wait()
	for i, ch := range results {
		r := wait(t, ch)
		if r.code != 200 || r.body["payload"] != float64(i) {
			t.Errorf("call %d: %d %v", i, r.code, r.body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess.Close(ctx)
	waitNoGoroutines(t, "amqphub/internal/methods.")
}

// waitGoroutine polls until a goroutine runs the named function.
func waitGoroutine(t *testing.T, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !stacksContain(fn) {
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine entered %s", fn)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
