package hub_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/hub"
	"amqphub/internal/registry"
	"amqphub/internal/sas"
	"amqphub/internal/testutil"
)

const host = "localhost"

// fixture is a hub with a registry on a test engine.
type fixture struct {
	reg  *registry.PebbleStore
	hub  *hub.Hub
	srv  *amqptest.Server
	logs *testutil.LockedBuffer
}

// acceptAll accepts every authorized link.
var acceptAll = hub.EndpointFunc(func(req *hub.AttachRequest) *amqp.Error {
	if !req.Link.IsSender() {
		req.Link.OnMessage(func(d *amqp.Delivery) { d.Accept() })
	}
	return nil
})

func newFixture(t testing.TB, mod func(*hub.Config)) *fixture {
	t.Helper()
	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	ctx := context.Background()
	for _, id := range []string{"d1", "d2"} {
		if _, err := reg.CreateDevice(ctx, registry.Device{DeviceID: id, Status: registry.StatusEnabled}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(auth.Config{HostName: host, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LockedBuffer{}
	cfg := hub.Config{
		Authority:          a,
		RevalidateInterval: 50 * time.Millisecond,
		AuthTimeout:        -1,
		Logger:             slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Endpoints: map[hub.Kind]hub.Endpoint{
			hub.KindDeviceEvents: acceptAll, hub.KindDeviceBound: acceptAll, hub.KindServiceC2D: acceptAll,
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := amqptest.Start(t, amqp.Config{Handler: h, SASL: h, AllowNoSASL: true})
	return &fixture{reg: reg, hub: h, srv: srv, logs: logs}
}

func decode(t testing.TB, b64 string) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// token signs a device (module "" ) or module token with its primary or
// secondary key as the registry holds it now.
func (f *fixture) token(t testing.TB, dev, module string, secondary bool) string {
	t.Helper()
	ctx := context.Background()
	var k registry.SymmetricKey
	res := host + "/devices/" + dev
	if module == "" {
		d, err := f.reg.GetDevice(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		k = d.Authentication.SymmetricKey
	} else {
		m, err := f.reg.GetModule(ctx, dev, module)
		if err != nil {
			t.Fatal(err)
		}
		k = m.Authentication.SymmetricKey
		res += "/modules/" + module
	}
	key := k.PrimaryKey
	if secondary {
		key = k.SecondaryKey
	}
	return sas.Sign(res, decode(t, key), "", time.Now().Add(time.Hour))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (f *fixture) dialSASL(t testing.TB, dev, token string) *goamqp.Conn {
	t.Helper()
	c, err := goamqp.Dial(ctxT(t), f.srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(dev+"@sas.localhost", token), HostName: host})
	if err != nil {
		t.Fatalf("dial as %s: %v", dev, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) dialAnon(t *testing.T) *goamqp.Conn {
	t.Helper()
	c, err := goamqp.Dial(ctxT(t), f.srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous(), HostName: host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// putToken authorizes audience on sess through $cbs.
func putToken(t *testing.T, sess *goamqp.Session, audience, token string) {
	t.Helper()
	ctx := ctxT(t)
	snd, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close(ctx)
	rcv, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"})
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close(ctx)
	m := &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: "1", ReplyTo: ptr("cbs-reply")},
		ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience},
		Value:                 token,
	}
	if err := snd.Send(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rcv.AcceptMessage(ctx, resp)
	if got := resp.ApplicationProperties["status-code"]; got != int32(200) {
		t.Fatalf("put-token for %s: status %v %v", audience, got, resp.ApplicationProperties["status-description"])
	}
}

func ptr[T any](v T) *T { return &v }

func session(t testing.TB, c *goamqp.Conn) *goamqp.Session {
	t.Helper()
	s, err := c.NewSession(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func receiver(t testing.TB, s *goamqp.Session, addr string) *goamqp.Receiver {
	t.Helper()
	r, err := s.NewReceiver(ctxT(t), addr, nil)
	if err != nil {
		t.Fatalf("attach %s: %v", addr, err)
	}
	return r
}

// linkCond waits for the link to be detached and returns the condition.
func linkCond(t *testing.T, r *goamqp.Receiver, within time.Duration) goamqp.ErrCond {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	_, err := r.Receive(ctx, nil)
	if errors.Is(err, context.DeadlineExceeded) {
		return ""
	}
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil {
		return le.RemoteErr.Condition
	}
	var ce *goamqp.ConnError
	if errors.As(err, &ce) && ce.RemoteErr != nil {
		return ce.RemoteErr.Condition
	}
	t.Fatalf("receive: %v (no remote error)", err)
	return ""
}

// connCond waits for the connection to end and returns its condition.
func connCond(t *testing.T, c *goamqp.Conn, within time.Duration) goamqp.ErrCond {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(within):
		return ""
	}
	var ce *goamqp.ConnError
	if errors.As(c.Err(), &ce) && ce.RemoteErr != nil {
		return ce.RemoteErr.Condition
	}
	t.Fatalf("connection ended with %v (no remote error)", c.Err())
	return ""
}

// stillAttached proves a link is alive: a receive times out instead of
// failing.
func stillAttached(t *testing.T, r *goamqp.Receiver, what string) {
	t.Helper()
	if cond := linkCond(t, r, 300*time.Millisecond); cond != "" {
		t.Fatalf("%s: detached with %s, want it still attached", what, cond)
	}
}

const unauthorized = goamqp.ErrCondUnauthorizedAccess

func TestRevalidateRegistryChanges(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		change func(t *testing.T, reg registry.Store)
		// secondary signs the connection's token with the secondary key.
		secondary bool
		revoked   bool
	}{
		{"device disabled", func(t *testing.T, reg registry.Store) {
			d, _ := reg.GetDevice(ctx, "d1")
			d.Status = registry.StatusDisabled
			if _, err := reg.ReplaceDevice(ctx, d, "*"); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"device deleted", func(t *testing.T, reg registry.Store) {
			if err := reg.DeleteDevice(ctx, "d1", "*"); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"device deleted and created again with the same keys", func(t *testing.T, reg registry.Store) {
			d, _ := reg.GetDevice(ctx, "d1")
			if err := reg.DeleteDevice(ctx, "d1", "*"); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.CreateDevice(ctx, registry.Device{DeviceID: "d1", Status: registry.StatusEnabled, Authentication: d.Authentication}); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"primary key regenerated, token signed with it", func(t *testing.T, reg registry.Store) {
			if _, err := reg.RegenerateDeviceKey(ctx, "d1", registry.KeyPrimary, "*"); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"secondary key regenerated, token signed with it", func(t *testing.T, reg registry.Store) {
			if _, err := reg.RegenerateDeviceKey(ctx, "d1", registry.KeySecondary, "*"); err != nil {
				t.Fatal(err)
			}
		}, true, true},
		{"secondary key regenerated, token signed with the primary", func(t *testing.T, reg registry.Store) {
			if _, err := reg.RegenerateDeviceKey(ctx, "d1", registry.KeySecondary, "*"); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"keys swapped: both still verify", func(t *testing.T, reg registry.Store) {
			if _, err := reg.RegenerateDeviceKey(ctx, "d1", registry.KeySwap, "*"); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"status reason edited", func(t *testing.T, reg registry.Store) {
			d, _ := reg.GetDevice(ctx, "d1")
			d.StatusReason = "maintenance note"
			if _, err := reg.ReplaceDevice(ctx, d, "*"); err != nil {
				t.Fatal(err)
			}
		}, false, false},
	}
	for _, tc := range tests {
		for _, via := range []string{"sasl", "cbs"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				t.Parallel()
				f := newFixture(t, nil)
				tok := f.token(t, "d1", "", tc.secondary)
				var c *goamqp.Conn
				var s *goamqp.Session
				if via == "sasl" {
					c = f.dialSASL(t, "d1", tok)
					s = session(t, c)
				} else {
					c = f.dialAnon(t)
					s = session(t, c)
					putToken(t, s, host+"/devices/d1", tok)
				}
				r := receiver(t, s, "/devices/d1/messages/devicebound")
				// A second device elsewhere must not be affected.
				other := f.dialSASL(t, "d2", f.token(t, "d2", "", false))
				ro := receiver(t, session(t, other), "/devices/d2/messages/devicebound")

				tc.change(t, f.reg)
				if !tc.revoked {
					// Several revalidation rounds pass without effect.
					stillAttached(t, r, "link after a harmless change")
					stillAttached(t, r, "link after a harmless change")
					return
				}
				if cond := linkCond(t, r, 5*time.Second); cond != unauthorized {
					t.Fatalf("link of the changed device: %q, want %s", cond, unauthorized)
				}
				if cond := connCond(t, c, 5*time.Second); cond != unauthorized {
					t.Fatalf("connection of the changed device: %q, want %s", cond, unauthorized)
				}
				stillAttached(t, ro, "another device's link")
				if !strings.Contains(f.logs.String(), "credential no longer valid") {
					t.Error("the revocation was not logged")
				}
				if sig := sigOf(tok); strings.Contains(f.logs.String(), sig) {
					t.Error("the token's signature reached the log")
				}
			})
		}
	}
}

func sigOf(tok string) string {
	i := strings.Index(tok, "sig=") + 4
	sig := tok[i:]
	if j := strings.IndexByte(sig, '&'); j >= 0 {
		sig = sig[:j]
	}
	d, _ := url.QueryUnescape(sig)
	return d
}

// TestRevalidateSharedConnection: on a connection carrying several devices
// through CBS, revoking one device detaches only its links; the connection
// and the other device's links stay.
func TestRevalidateSharedConnection(t *testing.T) {
	f := newFixture(t, nil)
	c := f.dialAnon(t)
	s := session(t, c)
	putToken(t, s, host+"/devices/d1", f.token(t, "d1", "", false))
	putToken(t, s, host+"/devices/d2", f.token(t, "d2", "", false))
	putToken(t, s, host+"/devices/d1/modules/m1", f.token(t, "d1", "m1", false))
	r1 := receiver(t, s, "/devices/d1/messages/devicebound")
	r2 := receiver(t, s, "/devices/d2/messages/devicebound")
	rm := receiver(t, s, "/devices/d1/modules/m1/messages/devicebound")

	// A module's key change revokes the module only.
	if _, err := f.reg.RegenerateModuleKey(context.Background(), "d1", "m1", registry.KeyPrimary, "*"); err != nil {
		t.Fatal(err)
	}
	if cond := linkCond(t, rm, 5*time.Second); cond != unauthorized {
		t.Fatalf("module link: %q, want %s", cond, unauthorized)
	}
	stillAttached(t, r1, "device d1 after its module's key changed")

	// Disabling d1 revokes d1 (and would its modules).
	d, _ := f.reg.GetDevice(context.Background(), "d1")
	d.Status = registry.StatusDisabled
	if _, err := f.reg.ReplaceDevice(context.Background(), d, "*"); err != nil {
		t.Fatal(err)
	}
	if cond := linkCond(t, r1, 5*time.Second); cond != unauthorized {
		t.Fatalf("d1 link: %q, want %s", cond, unauthorized)
	}
	stillAttached(t, r2, "d2 on the shared connection")
	if cond := connCond(t, c, 200*time.Millisecond); cond != "" {
		t.Fatalf("the shared connection closed with %s although d2 is still valid", cond)
	}
	// d1 cannot come back on the connection while disabled.
	if _, err := s.NewReceiver(ctxT(t), "/devices/d1/messages/devicebound", nil); err == nil {
		t.Fatal("a revoked device attached again")
	}
}

// TestRevalidateDeviceHook: with periodic revalidation off, the immediate
// hook alone revokes, and only for the device named.
func TestRevalidateDeviceHook(t *testing.T) {
	f := newFixture(t, func(c *hub.Config) { c.RevalidateInterval = -1 })
	c1 := f.dialSASL(t, "d1", f.token(t, "d1", "", false))
	c2 := f.dialSASL(t, "d2", f.token(t, "d2", "", false))
	r1 := receiver(t, session(t, c1), "/devices/d1/messages/devicebound")
	r2 := receiver(t, session(t, c2), "/devices/d2/messages/devicebound")
	ctx := context.Background()
	for _, id := range []string{"d1", "d2"} {
		if _, err := f.reg.RegenerateDeviceKey(ctx, id, registry.KeyPrimary, "*"); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing periodic runs.
	stillAttached(t, r1, "d1 before the hook")
	f.hub.RevalidateDevice("d1")
	if cond := linkCond(t, r1, 5*time.Second); cond != unauthorized {
		t.Fatalf("d1 after the hook: %q, want %s", cond, unauthorized)
	}
	stillAttached(t, r2, "d2, which the hook did not name")
	f.hub.Revalidate()
	if cond := connCond(t, c2, 5*time.Second); cond != unauthorized {
		t.Fatalf("d2 after Revalidate: %q, want %s", cond, unauthorized)
	}
}

// TestAuthTimeout: a connection that never presents a token is closed
// after AuthTimeout; authenticated ones stay.
func TestAuthTimeout(t *testing.T) {
	f := newFixture(t, func(c *hub.Config) { c.AuthTimeout = 300 * time.Millisecond })
	start := time.Now()
	bare := f.dialAnon(t)
	session(t, bare)
	good := f.dialSASL(t, "d1", f.token(t, "d1", "", false))
	cbs := f.dialAnon(t)
	putToken(t, session(t, cbs), host+"/devices/d2", f.token(t, "d2", "", false))
	if cond := connCond(t, bare, 5*time.Second); cond != unauthorized {
		t.Fatalf("unauthenticated connection: %q, want %s", cond, unauthorized)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("closed after %v, before the timeout", d)
	}
	for name, c := range map[string]*goamqp.Conn{"SASL": good, "CBS": cbs} {
		if cond := connCond(t, c, 500*time.Millisecond); cond != "" {
			t.Fatalf("authenticated %s connection closed with %s", name, cond)
		}
	}
}

// TestRevalidateKeepsPolicies: service credentials are not touched.
func TestRevalidateKeepsPolicies(t *testing.T) {
	f := newFixture(t, nil)
	tok := sas.Sign(host, decode(t, auth.DevServicePrimaryKey), "service", time.Now().Add(time.Hour))
	c, err := goamqp.Dial(ctxT(t), f.srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("service@sas.root.localhost", tok), HostName: host})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := session(t, c)
	snd, err := s.NewSender(ctxT(t), "/messages/devicebound", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.hub.Revalidate()
	if err := snd.Send(ctxT(t), goamqp.NewMessage([]byte("x")), nil); err != nil {
		t.Fatalf("service link after revalidation: %v", err)
	}
	if cond := connCond(t, c, 300*time.Millisecond); cond != "" {
		t.Fatalf("service connection closed with %s", cond)
	}
}

// BenchmarkRevalidate measures a revalidation round over live device
// connections (the registry answers from its cache, as it does for
// connected devices): ns/op divided by conns is the cost per credential.
func BenchmarkRevalidate(b *testing.B) {
	const conns = 200
	f := newFixture(b, func(c *hub.Config) { c.RevalidateInterval = -1 })
	ctx := context.Background()
	for i := 2; i < conns; i++ {
		if _, err := f.reg.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprint("b", i), Status: registry.StatusEnabled}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < conns; i++ {
		id := fmt.Sprint("b", i)
		if i < 2 {
			id = []string{"d1", "d2"}[i]
		}
		c := f.dialSASL(b, id, f.token(b, id, "", false))
		receiver(b, session(b, c), "/devices/"+id+"/messages/devicebound")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f.hub.Revalidate()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/conns, "ns/credential")
}
