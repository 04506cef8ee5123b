package twin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
	"amqphub/internal/server/servertest"
)

const (
	d1Key = "ZDEtcHJpbWFyeS1rZXktZm9yLXR3aW4tdGVzdHMtMDEy"
	d2Key = "ZDItcHJpbWFyeS1rZXktZm9yLXR3aW4tdGVzdHMtMDEy"
)

func startHub(t testing.TB, mod func(*server.Options)) *server.Server {
	t.Helper()
	return server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "d1", PrimaryKey: d1Key, SecondaryKey: d2Key, Modules: []string{"m1"}},
			{ID: "d2", PrimaryKey: d2Key, SecondaryKey: d1Key},
		}
		if mod != nil {
			mod(o)
		}
	})
}

// dialIdentity connects as a device (module "") or module.
func dialIdentity(t testing.TB, s *server.Server, device, module string) *goamqp.Session {
	t.Helper()
	return servertest.DialIdentity(t, s, device, module)
}

// twinLinks is a device's twin channel, opened the way the SDKs open it.
type twinLinks struct {
	t   testing.TB
	snd *goamqp.Sender
	rcv *goamqp.Receiver
}

func openTwin(t testing.TB, sess *goamqp.Session, addr string, credit int32) *twinLinks {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	props := map[string]any{"com.microsoft:channel-correlation-id": "twin:test", "com.microsoft:api-version": "2021-04-12"}
	snd, err := sess.NewSender(ctx, addr, &goamqp.SenderOptions{
		Properties:                  props,
		SettlementMode:              goamqp.SenderSettleModeSettled.Ptr(),
		RequestedReceiverSettleMode: goamqp.ReceiverSettleModeFirst.Ptr(),
	})
	if err != nil {
		t.Fatalf("twin sender on %s: %v", addr, err)
	}
	rcv, err := sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{
		Properties:                props,
		Credit:                    credit,
		RequestedSenderSettleMode: goamqp.SenderSettleModeSettled.Ptr(),
		SettlementMode:            goamqp.ReceiverSettleModeFirst.Ptr(),
	})
	if err != nil {
		t.Fatalf("twin receiver on %s: %v", addr, err)
	}
	return &twinLinks{t: t, snd: snd, rcv: rcv}
}

// send sends a twin request: operation and resource annotations, a
// correlation-id, and body as one data section (nil: none).
func (c *twinLinks) send(op, resource string, corr any, body []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ann := goamqp.Annotations{"operation": op}
	if resource != "" {
		ann["resource"] = resource
	}
	m := &goamqp.Message{Annotations: ann, Properties: &goamqp.MessageProperties{CorrelationID: corr}}
	if body != nil {
		m.Data = [][]byte{body}
	}
	if err := c.snd.Send(ctx, m, nil); err != nil {
		c.t.Fatalf("send %s %s: %v", op, resource, err)
	}
}

// receive returns the next message on the response link.
func (c *twinLinks) receive() *goamqp.Message {
	c.t.Helper()
	m, err := c.receiveErr(10 * time.Second)
	if err != nil {
		c.t.Fatalf("receive: %v", err)
	}
	return m
}

func (c *twinLinks) receiveErr(timeout time.Duration) (*goamqp.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	m, err := c.rcv.Receive(ctx, nil)
	if err != nil {
		return nil, err
	}
	return m, c.rcv.AcceptMessage(ctx, m)
}

// call sends a request and returns its response, failing if anything else
// arrives first.
func (c *twinLinks) call(op, resource string, corr any, body []byte) *goamqp.Message {
	c.t.Helper()
	c.send(op, resource, corr, body)
	m := c.receive()
	if m.Properties == nil || m.Properties.CorrelationID == nil {
		c.t.Fatalf("%s %s: got a message without correlation-id (%s) before the response", op, resource, describe(m))
	}
	if got, want := fmt.Sprintf("%T %v", m.Properties.CorrelationID, m.Properties.CorrelationID), fmt.Sprintf("%T %v", corr, corr); got != want {
		c.t.Fatalf("%s %s: correlation-id %s, want %s", op, resource, got, want)
	}
	return m
}

func describe(m *goamqp.Message) string {
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	return fmt.Sprintf("correlation-id %#v annotations %v body %q", corr, m.Annotations, bytes.Join(m.Data, nil))
}

// status returns the status annotation, failing unless it is an AMQP int.
func status(t testing.TB, m *goamqp.Message) int32 {
	t.Helper()
	v, ok := m.Annotations["status"].(int32)
	if !ok {
		t.Fatalf("status annotation %#v (%T), want an int32: %s", m.Annotations["status"], m.Annotations["status"], describe(m))
	}
	return v
}

// version returns the version annotation, failing unless it is an AMQP long.
func version(t testing.TB, m *goamqp.Message) int64 {
	t.Helper()
	v, ok := m.Annotations["version"].(int64)
	if !ok {
		t.Fatalf("version annotation %#v (%T), want an int64: %s", m.Annotations["version"], m.Annotations["version"], describe(m))
	}
	return v
}

func bodyJSON(t testing.TB, m *goamqp.Message) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(bytes.Join(m.Data, nil), &v); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, describe(m))
	}
	return v
}

// service is the hub's REST API with a policy's SAS token.
type service = servertest.REST

func newService(t testing.TB, s *server.Server, policy, keyB64 string) *service {
	return servertest.NewREST(t, s, policy, keyB64)
}

func owner(t testing.TB, s *server.Server) *service { return servertest.Owner(t, s) }

func errorCode(body map[string]any) string { return servertest.ErrorCode(body) }

// path walks a JSON document: path(v, "properties", "desired", "$version").
func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// waitNoGoroutines polls until no goroutine runs code of this package,
// failing after a few seconds: channels must not outlive their links.
func waitNoGoroutines(t testing.TB, fragment string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, fragment) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines in %s still running:\n%s", fragment, stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
