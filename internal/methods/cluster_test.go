package methods_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/hub"
	"amqphub/internal/methods"
	"amqphub/internal/natstest"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/internal/server/servertest"
)

// lateRegistry is a registry set after the hub it belongs to started:
// the endpoint is built before its hub, which owns the registry.
type lateRegistry struct{ registry.Store }

// clusterNode is one hub node whose methods endpoint coordinates through
// NATS, with the REST routes of that endpoint.
type clusterNode struct {
	s   *server.Server
	ep  *methods.Endpoint
	svc *service
}

// startNodes starts n nodes on one embedded NATS server. Each node has its
// own registry, seeded with the same identities and keys.
func startNodes(t *testing.T, n int) []*clusterNode {
	t.Helper()
	ns := natstest.RunServer(t)
	var nodes []*clusterNode
	for i := range n {
		nc := natstest.Connect(t, ns.ClientURL())
		js := natstest.JetStream(t, nc)
		cl := &hub.Cluster{NodeID: string(rune('A' + i)), Conn: nc, JS: js, Replicas: 1, Prefix: "AMQPHUB"}
		reg := &lateRegistry{}
		cfg := methods.Config{MinResponseTimeout: time.Second}
		ep := methods.New(reg, cfg, amqptest.TestLogger(t))
		ep.SetCluster(cl)
		t.Cleanup(func() {
			if err := ep.Close(); err != nil {
				t.Errorf("close endpoint: %v", err)
			}
		})
		s := startHub(t, func(o *server.Options) {
			o.Methods = cfg
			o.Endpoints = map[hub.Kind]hub.Endpoint{hub.KindMethods: ep}
		})
		reg.Store = s.Registry
		h, err := rest.New(rest.Config{Registry: s.Registry, Auth: s.Authority, Logger: amqptest.TestLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ep.RegisterREST(h)
		hs := httptest.NewServer(h)
		t.Cleanup(hs.Close)
		key, err := base64.StdEncoding.DecodeString(auth.DevIoTHubOwnerPrimaryKey)
		if err != nil {
			t.Fatal(err)
		}
		svc := servertest.NewRESTAt(t, hs.URL, sas.Sign(s.Options.HostName, key, auth.PolicyIoTHubOwner, time.Now().Add(time.Hour)), hs.Client())
		nodes = append(nodes, &clusterNode{s: s, ep: ep, svc: svc})
	}
	return nodes
}

// TestClusterInvoke: a call reaching a node without the device's link is
// answered through the node holding it, with the same results as a local
// call.
func TestClusterInvoke(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]

	t.Run("device on A, call on B", func(t *testing.T) {
		dev := openMethods(t, dialIdentity(t, a.s, "d1", ""), "/devices/d1/methods/devicebound")
		mod := openMethods(t, dialIdentity(t, a.s, "d1", "m1"), "/devices/d1/modules/m1/methods/devicebound")
		// connectTimeout covers the subscription reaching NATS.
		res := invoke(b.svc, "/twins/d1/methods", map[string]any{"methodName": "reboot", "payload": map[string]any{"delay": 1}, "connectTimeoutInSeconds": 5})
		m := dev.next()
		if got := m.ApplicationProperties["IoThub-methodname"]; got != "reboot" {
			t.Errorf("IoThub-methodname %#v", got)
		}
		if got := string(m.GetData()); got != `{"delay":1}` {
			t.Errorf("request body %q", got)
		}
		dev.respond(corrUUID(t, m), int32(201), []byte(`{"ok":true}`))
		r := wait(t, res)
		if r.code != 200 || r.body["status"] != float64(201) {
			t.Fatalf("invoke through B: %d %v", r.code, r.body)
		}
		jsonEq(t, "payload", r.body["payload"], `{"ok":true}`)

		res = invoke(b.svc, "/twins/d1/modules/m1/methods", map[string]any{"methodName": "mod"})
		m = mod.next()
		mod.respond(corrUUID(t, m), int32(200), nil)
		if r := wait(t, res); r.code != 200 || r.body["status"] != float64(200) || r.body["payload"] != nil {
			t.Fatalf("module invoke through B: %d %v", r.code, r.body)
		}
	})

	t.Run("offline", func(t *testing.T) {
		r := wait(t, invoke(b.svc, "/twins/d2/methods", map[string]any{"methodName": "m", "connectTimeoutInSeconds": 1}))
		if r.code != 404 || errorCode(r.body) != "DeviceNotOnline" || r.took < time.Second || r.took > 10*time.Second {
			t.Errorf("offline device: %d %v after %v, want 404 DeviceNotOnline after about 1 s", r.code, r.body, r.took)
		}
		r = wait(t, invoke(b.svc, "/twins/d2/methods", map[string]any{"methodName": "m"}))
		if r.code != 404 || errorCode(r.body) != "DeviceNotOnline" || r.took > 5*time.Second {
			t.Errorf("offline device, no connect timeout: %d %v after %v", r.code, r.body, r.took)
		}
	})

	t.Run("attaches on A during the connect timeout", func(t *testing.T) {
		res := invoke(b.svc, "/twins/d2/methods", map[string]any{"methodName": "late", "connectTimeoutInSeconds": 20})
		waitGoroutine(t, "amqphub/internal/methods.(*Endpoint).invokeClustered")
		dev := openMethods(t, dialIdentity(t, a.s, "d2", ""), "/devices/d2/methods/devicebound")
		m := dev.next()
		dev.respond(corrUUID(t, m), int32(200), []byte(`1`))
		r := wait(t, res)
		if r.code != 200 || r.body["status"] != float64(200) || r.body["payload"] != float64(1) {
			t.Errorf("device attaching on A within the connect timeout: %d %v", r.code, r.body)
		}
		if r.took > 10*time.Second {
			t.Errorf("answered after %v", r.took)
		}
	})
}

// TestClusterInvokeErrors: failures on the holding node reach the caller's
// node as the same errors.
func TestClusterInvokeErrors(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	sess := dialIdentity(t, a.s, "d1", "")
	dev := openMethods(t, sess, "/devices/d1/methods/devicebound")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("no answer", func(t *testing.T) {
		start := time.Now()
		errc := make(chan error, 1)
		go func() {
			_, err := b.ep.Invoke(ctx, methods.Request{DeviceID: "d1", MethodName: "slow", ResponseTimeout: time.Second, ConnectTimeout: 5 * time.Second})
			errc <- err
		}()
		dev.next() // received, never answered
		err := <-errc
		if !errors.Is(err, methods.ErrTimeout) {
			t.Fatalf("got %v, want ErrTimeout", err)
		}
		if took := time.Since(start); took < time.Second || took > 10*time.Second {
			t.Errorf("returned after %v, want about 1 s", took)
		}
	})

	t.Run("bad response", func(t *testing.T) {
		res := invoke(b.svc, "/twins/d1/methods", map[string]any{"methodName": "m"})
		dev.respond(corrUUID(t, dev.next()), "200", []byte(`{}`))
		if r := wait(t, res); r.code != 502 || errorCode(r.body) != "BadDeviceResponse" {
			t.Errorf("%d %v, want 502 BadDeviceResponse", r.code, r.body)
		}
	})

	t.Run("link closes mid-call", func(t *testing.T) {
		res := invoke(b.svc, "/twins/d1/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 120})
		dev.next()
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
	})

	t.Run("gone after the link closed", func(t *testing.T) {
		// The holder unsubscribed: B finds nobody and says so at once.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := b.ep.Invoke(ctx, methods.Request{DeviceID: "d1", MethodName: "m", ResponseTimeout: time.Second})
			if errors.Is(err, methods.ErrDeviceNotOnline) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the link closed: %v, want ErrDeviceNotOnline", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	waitNoGoroutines(t, "amqphub/internal/methods.(*Endpoint).serveRemote")
}
