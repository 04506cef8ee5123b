package server_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/hub"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

const (
	d1Key = "ZDEtcHJpbWFyeS1rZXktZm9yLXRlc3RzLTAxMjM0NTY3" // base64 of a test key
	d2Key = "ZDItcHJpbWFyeS1rZXktZm9yLXRlc3RzLTAxMjM0NTY3"
	d3Key = "ZDMtcHJpbWFyeS1rZXktZm9yLXRlc3RzLTAxMjM0NTY3"
)

// acceptAll stands in for the real endpoints: it accepts every link, and
// every message on links where the hub receives.
var acceptAll = hub.EndpointFunc(func(req *hub.AttachRequest) *amqp.Error {
	if !req.Link.IsSender() {
		req.Link.OnMessage(func(d *amqp.Delivery) { d.Accept() })
	}
	return nil
})

func startAuthHub(t *testing.T, mod func(*server.Options)) *server.Server {
	return server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "d1", PrimaryKey: d1Key, SecondaryKey: d2Key, Modules: []string{"m1"}},
			{ID: "d2", PrimaryKey: d2Key, SecondaryKey: d1Key},
			{ID: "d3", PrimaryKey: d3Key, SecondaryKey: d3Key, Disabled: true},
		}
		o.Endpoints = map[hub.Kind]hub.Endpoint{}
		for _, k := range []hub.Kind{hub.KindDeviceEvents, hub.KindDeviceBound, hub.KindTwin, hub.KindMethods, hub.KindServiceC2D, hub.KindFeedback} {
			o.Endpoints[k] = acceptAll
		}
		if mod != nil {
			mod(o)
		}
	})
}

func key(t *testing.T, b64 string) []byte {
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func deviceToken(t *testing.T, host, dev, b64 string, ttl time.Duration) string {
	return sas.Sign(host+"/devices/"+dev, key(t, b64), "", time.Now().Add(ttl))
}

func policyToken(t *testing.T, host, policy, b64 string, ttl time.Duration) string {
	return sas.Sign(host, key(t, b64), policy, time.Now().Add(ttl))
}

func dialPlain(t *testing.T, s *server.Server, user, pass string) (*goamqp.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous(), HostName: "localhost"}
	if user != "" {
		opts.SASLType = goamqp.SASLTypePlain(user, pass)
	}
	c, err := goamqp.Dial(ctx, "amqp://"+s.AMQPAddr, opts)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// attach opens a link to addr in the hub's direction: a sender for
// addresses the hub receives on, a receiver otherwise.
func attach(ctx context.Context, s *goamqp.Session, addr string, hubReceives bool) error {
	if hubReceives {
		snd, err := s.NewSender(ctx, addr, nil)
		if err == nil {
			snd.Close(ctx)
		}
		return err
	}
	rcv, err := s.NewReceiver(ctx, addr, nil)
	if err == nil {
		rcv.Close(ctx)
	}
	return err
}

func condOf(err error) goamqp.ErrCond {
	var ae *goamqp.Error
	if errors.As(err, &ae) {
		return ae.Condition
	}
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil {
		return le.RemoteErr.Condition
	}
	return ""
}

func TestSASLPlainLinkAuthorization(t *testing.T) {
	s := startAuthHub(t, nil)
	host := s.Options.HostName
	type link struct {
		addr        string
		hubReceives bool
		ok          bool
	}
	tests := []struct {
		name  string
		user  string
		token string
		links []link
	}{
		{"device d1", "d1@sas.amqphub", deviceToken(t, host, "d1", d1Key, time.Hour), []link{
			{"/devices/d1/messages/events", true, true},
			{"/devices/d1/messages/devicebound", false, true},
			{"amqps://localhost:5671/devices/d1/twin", true, true},
			{"/devices/d2/messages/events", true, false},
			{"/devices/d1/modules/m1/messages/events", true, false},
			{"/messages/devicebound", true, false},
			{"/messages/serviceBound/feedback", false, false},
		}},
		{"device d1 with its secondary key", "d1@sas.amqphub", deviceToken(t, host, "d1", d2Key, time.Hour), []link{
			{"/devices/d1/messages/events", true, true},
		}},
		{"iothubowner", "iothubowner@sas.root.amqphub", policyToken(t, host, "iothubowner", auth.DevIoTHubOwnerPrimaryKey, time.Hour), []link{
			{"/messages/devicebound", true, true},
			{"/messages/serviceBound/feedback", false, true},
			{"/devices/d2/messages/events", true, true}, // DeviceConnect
		}},
		{"service policy", "service@sas.root.amqphub", policyToken(t, host, "service", auth.DevServicePrimaryKey, time.Hour), []link{
			{"/messages/devicebound", true, true},
			{"/devices/d1/messages/events", true, false},
		}},
		{"registryRead policy", "registryRead@sas.root.amqphub", policyToken(t, host, "registryRead", auth.DevRegistryReadPrimaryKey, time.Hour), []link{
			{"/messages/devicebound", true, false},
			{"/messages/serviceBound/feedback", false, false},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialPlain(t, s, tc.user, tc.token)
			if err != nil {
				t.Fatalf("SASL PLAIN: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sess, err := c.NewSession(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range tc.links {
				err := attach(ctx, sess, l.addr, l.hubReceives)
				if l.ok && err != nil {
					t.Errorf("%s: refused: %v", l.addr, err)
				}
				if !l.ok && condOf(err) != goamqp.ErrCondUnauthorizedAccess {
					t.Errorf("%s: got %v, want %s", l.addr, err, goamqp.ErrCondUnauthorizedAccess)
				}
			}
			if err := attach(ctx, sess, "/no/such/address", true); condOf(err) != goamqp.ErrCondNotFound {
				t.Errorf("unknown address: %v, want %s", err, goamqp.ErrCondNotFound)
			}
		})
	}
}

func TestSASLPlainRefusals(t *testing.T) {
	s := startAuthHub(t, nil)
	host := s.Options.HostName
	wrongKey := base64.StdEncoding.EncodeToString([]byte("not the right key at all......."))
	tests := []struct {
		name, user, token string
	}{
		{"wrong key", "d1@sas.amqphub", deviceToken(t, host, "d1", wrongKey, time.Hour)},
		{"expired", "d1@sas.amqphub", deviceToken(t, host, "d1", d1Key, -time.Minute)},
		{"token for another device", "d1@sas.amqphub", deviceToken(t, host, "d2", d2Key, time.Hour)},
		{"disabled device", "d3@sas.amqphub", deviceToken(t, host, "d3", d3Key, time.Hour)},
		{"unknown device", "d9@sas.amqphub", deviceToken(t, host, "d9", d1Key, time.Hour)},
		{"other hub name", "d1@sas.otherhub", deviceToken(t, host, "d1", d1Key, time.Hour)},
		{"other host in token", "d1@sas.amqphub", deviceToken(t, "elsewhere.example", "d1", d1Key, time.Hour)},
		{"wrong policy key", "iothubowner@sas.root.amqphub", policyToken(t, host, "iothubowner", auth.DevServicePrimaryKey, time.Hour)},
		{"garbage token", "d1@sas.amqphub", "SharedAccessSignature nonsense"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			if _, err := dialPlain(t, s, tc.user, tc.token); err == nil {
				t.Fatal("connection authenticated")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("refusal took %v", d)
			}
		})
	}
	// Others keep working.
	if _, err := dialPlain(t, s, "d1@sas.amqphub", deviceToken(t, host, "d1", d1Key, time.Hour)); err != nil {
		t.Fatalf("good client after refusals: %v", err)
	}
}

// cbsClient performs put-token the way the SDKs do, over go-amqp.
type cbsClient struct {
	snd *goamqp.Sender
	rcv *goamqp.Receiver
}

func newCBS(t *testing.T, ctx context.Context, sess *goamqp.Session) *cbsClient {
	t.Helper()
	snd, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatalf("cbs sender: %v", err)
	}
	rcv, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply-1", SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr()})
	if err != nil {
		t.Fatalf("cbs receiver: %v", err)
	}
	return &cbsClient{snd, rcv}
}

func (c *cbsClient) putToken(ctx context.Context, id any, audience, token string) (*goamqp.Message, error) {
	m := &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: id, ReplyTo: ptr("cbs-reply-1"), To: ptr("$cbs")},
		ApplicationProperties: map[string]any{
			"operation": "put-token",
			"type":      "servicebus.windows.net:sastoken",
			"name":      audience,
		},
		Value: token,
	}
	if err := c.snd.Send(ctx, m, nil); err != nil {
		return nil, err
	}
	resp, err := c.rcv.Receive(ctx, nil)
	if err != nil {
		return nil, err
	}
	c.rcv.AcceptMessage(ctx, resp)
	return resp, nil
}

func ptr[T any](v T) *T { return &v }

func TestCBSPutToken(t *testing.T) {
	s := startAuthHub(t, nil)
	host := s.Options.HostName
	c, err := dialPlain(t, s, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Before any token: refused.
	if err := attach(ctx, sess, "/devices/d1/messages/events", true); condOf(err) != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("attach before put-token: %v", err)
	}
	cbs := newCBS(t, ctx, sess)
	uuid := goamqp.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	tests := []struct {
		name     string
		id       any
		audience string
		token    string
		status   int32
	}{
		{"string id, device token, encoded audience (Node)", "req-1", url.QueryEscape(host + "/devices/d1"), deviceToken(t, host, "d1", d1Key, time.Hour), 200},
		{"ulong id (C SDK)", uint64(7), host + "/devices/d2", deviceToken(t, host, "d2", d2Key, time.Hour), 200},
		{"uuid id (Java SDK), amqps audience (C#)", uuid, "amqps://" + host + ":5671/", policyToken(t, host, "service", auth.DevServicePrimaryKey, time.Hour), 200},
		{"bad signature", "req-4", host + "/devices/d1", deviceToken(t, host, "d1", d3Key, time.Hour), 401},
		{"valid token for another device", "req-6", host + "/devices/d1", deviceToken(t, host, "d2", d2Key, time.Hour), 401},
		{"malformed", "req-5", host, "SharedAccessSignature sr=x", 400},
	}
	for _, tc := range tests {
		resp, err := cbs.putToken(ctx, tc.id, tc.audience, tc.token)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := resp.ApplicationProperties["status-code"]; got != tc.status {
			t.Errorf("%s: status-code %#v (%T), want int32 %d", tc.name, got, got, tc.status)
		}
		if resp.Properties == nil || fmt.Sprintf("%T:%v", resp.Properties.CorrelationID, resp.Properties.CorrelationID) != fmt.Sprintf("%T:%v", tc.id, tc.id) {
			t.Errorf("%s: correlation-id %#v, want %#v of the same type", tc.name, resp.Properties.CorrelationID, tc.id)
		}
	}
	// Both device tokens and the service token now authorize their links.
	for _, addr := range []string{"/devices/d1/messages/events", "/devices/d2/messages/events", "/messages/devicebound"} {
		if err := attach(ctx, sess, addr, true); err != nil {
			t.Errorf("%s after put-token: %v", addr, err)
		}
	}
}

// TestTokenExpiryAndRenewal: a link authorized by a short token is
// detached with amqp:unauthorized-access when it expires, unless renewed.
func TestTokenExpiryAndRenewal(t *testing.T) {
	s := startAuthHub(t, func(o *server.Options) { o.TokenGrace = 10 * time.Millisecond })
	host := s.Options.HostName
	c, err := dialPlain(t, s, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cbs := newCBS(t, ctx, sess)
	// se has one-second resolution: 2 s tokens expire in 1-2 s.
	if resp, err := cbs.putToken(ctx, "a", host+"/devices/d1", deviceToken(t, host, "d1", d1Key, 2*time.Second)); err != nil || resp.ApplicationProperties["status-code"] != int32(200) {
		t.Fatalf("put-token d1: %v %v", err, resp)
	}
	if resp, err := cbs.putToken(ctx, "b", host+"/devices/d2", deviceToken(t, host, "d2", d2Key, 2*time.Second)); err != nil || resp.ApplicationProperties["status-code"] != int32(200) {
		t.Fatalf("put-token d2: %v %v", err, resp)
	}
	r1, err := sess.NewReceiver(ctx, "/devices/d1/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := sess.NewReceiver(ctx, "/devices/d2/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Renew d2 only, for an hour.
	if resp, err := cbs.putToken(ctx, "c", host+"/devices/d2", deviceToken(t, host, "d2", d2Key, time.Hour)); err != nil || resp.ApplicationProperties["status-code"] != int32(200) {
		t.Fatalf("renew d2: %v %v", err, resp)
	}
	start := time.Now()
	_, err = r1.Receive(ctx, nil)
	if condOf(err) != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("d1 link after its token expired: %v, want %s", err, goamqp.ErrCondUnauthorizedAccess)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("expiry took %v", d)
	}
	// d2's renewed link is still attached: a drain round trip succeeds only
	// on a live link.
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	defer rcancel()
	if _, err := r2.Receive(rctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("renewed d2 link: %v, want it still attached (deadline)", err)
	}
	_ = amqptest.Eventually
}

func TestStartTestWellKnown(t *testing.T) {
	s := server.StartTestWellKnown(t, nil)
	if !strings.HasSuffix(s.AMQPSAddr, ":5671") || !strings.HasSuffix(s.HTTPSAddr, ":443") {
		t.Fatalf("listeners on %s and %s", s.AMQPSAddr, s.HTTPSAddr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqps://"+s.AMQPSAddr, &goamqp.ConnOptions{TLSConfig: s.ClientTLS, SASLType: goamqp.SASLTypeAnonymous()})
	if err != nil {
		t.Fatalf("TLS dial to %s with the hub's CA: %v", s.AMQPSAddr, err)
	}
	c.Close()
}
