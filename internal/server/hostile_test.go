package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/amqptest"
	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/server"
	"amqphub/internal/testutil"
)

// These tests play hostile clients and registry changes against a whole
// hub (the engine's own limits are tested in package amqp).

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func checkHeap(t *testing.T, before, limit uint64, when string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	now := heapInuse()
	for now > before+limit && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		now = heapInuse()
	}
	if now > before+limit {
		t.Fatalf("%s: heap in use grew from %d to %d bytes (limit +%d)", when, before, now, limit)
	}
	t.Logf("%s: heap in use %.1f MiB (before %.1f MiB)", when, float64(now)/(1<<20), float64(before)/(1<<20))
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return nc
}

// sendTelemetry connects as device dev from src (SASL PLAIN) and has one
// message accepted by the real telemetry endpoint.
func sendTelemetry(t *testing.T, s *server.Server, src, dev, b64 string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	nc := dialFrom(t, src, s.AMQPAddr)
	c, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{
		SASLType: goamqp.SASLTypePlain(dev+"@sas."+s.Options.HubName, deviceToken(t, s.Options.HostName, dev, b64, time.Hour)),
		HostName: s.Options.HostName,
	})
	if err != nil {
		t.Fatalf("device %s from %s: %v", dev, src, err)
	}
	defer c.Close()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx, "/devices/"+dev+"/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, goamqp.NewMessage([]byte("still served")), nil); err != nil {
		t.Fatalf("telemetry from %s: %v", dev, err)
	}
}

// startRealHub starts a hub with the real endpoints and devices d1, d2
// (keys d1Key, d2Key) and disabled d3.
func startRealHub(t *testing.T, mod func(*server.Options)) *server.Server {
	return server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "d1", PrimaryKey: d1Key, SecondaryKey: d2Key},
			{ID: "d2", PrimaryKey: d2Key, SecondaryKey: d1Key},
			{ID: "d3", PrimaryKey: d3Key, SecondaryKey: d3Key, Disabled: true},
		}
		if mod != nil {
			mod(o)
		}
	})
}

func TestTLSVersions(t *testing.T) {
	s := startRealHub(t, nil)
	tests := []struct {
		version uint16
		name    string
		ok      bool
	}{
		{tls.VersionTLS10, "TLS 1.0", false},
		{tls.VersionTLS11, "TLS 1.1", false},
		{tls.VersionTLS12, "TLS 1.2", true},
		{tls.VersionTLS13, "TLS 1.3", true},
	}
	for _, listener := range []struct{ name, addr string }{{"AMQPS", s.AMQPSAddr}, {"HTTPS", s.HTTPSAddr}} {
		for _, tc := range tests {
			t.Run(listener.name+" "+tc.name, func(t *testing.T) {
				cfg := s.ClientTLS.Clone()
				cfg.MinVersion, cfg.MaxVersion = tc.version, tc.version
				d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
				c, err := d.Dial("tcp", listener.addr)
				if tc.ok {
					if err != nil {
						t.Fatalf("%s refused: %v", tc.name, err)
					}
					if v := c.(*tls.Conn).ConnectionState().Version; v != tc.version {
						t.Fatalf("negotiated %x, want %x", v, tc.version)
					}
					c.Close()
					return
				}
				if err == nil {
					c.Close()
					t.Fatalf("%s accepted", tc.name)
				}
				if !strings.Contains(err.Error(), "protocol version") {
					t.Fatalf("%s: %v, want a protocol version alert", tc.name, err)
				}
			})
		}
	}
}

// TestUnauthenticatedFlood: a thousand connections from one address that
// never finish the handshake hold at most the engine's per-IP share of
// handshake slots; a device elsewhere keeps sending telemetry.
func TestUnauthenticatedFlood(t *testing.T) {
	s := startRealHub(t, nil)
	const flood = 1000
	before := heapInuse()
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		nc := dialFrom(t, "127.0.0.1", s.AMQPAddr)
		conns = append(conns, nc)
		nc.Write(frames.ProtoSASL[:])
	}
	// The default per-IP bound is 256.
	amqptest.Eventually(t, 10*time.Second, func() bool { return s.Engine.Handshaking() == 256 },
		fmt.Sprintf("%d connections in the handshake, want the per-IP bound 256", s.Engine.Handshaking()))
	checkHeap(t, before, 32<<20, "during the flood")
	sendTelemetry(t, s, "127.0.0.2", "d1", d1Key)
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	amqptest.Eventually(t, 10*time.Second, func() bool { return s.Engine.Handshaking() == 0 && s.Engine.Conns() == 0 }, "slots freed")
	checkHeap(t, before, 4<<20, "after the flood")
}

// TestWrongProtocols: other protocols on every listener are answered
// briefly and dropped; the hub keeps serving.
func TestWrongProtocols(t *testing.T) {
	s := startRealHub(t, nil)
	clientHello := []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}
	tests := []struct {
		name string
		dial func(t *testing.T) net.Conn
		send []byte
	}{
		{"TLS ClientHello on plain AMQP", func(t *testing.T) net.Conn { return dialFrom(t, "127.0.0.1", s.AMQPAddr) }, clientHello},
		{"HTTP on plain AMQP", func(t *testing.T) net.Conn { return dialFrom(t, "127.0.0.1", s.AMQPAddr) }, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"HTTP inside AMQPS", func(t *testing.T) net.Conn { return tlsDial(t, s, s.AMQPSAddr) }, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		// (A bare header would wait for the HTTP server's 10 s header timeout.)
		{"AMQP header inside HTTPS", func(t *testing.T) net.Conn { return tlsDial(t, s, s.HTTPSAddr) }, append(frames.ProtoAMQP[:], "\r\n\r\n"...)},
		{"plain text on AMQPS", func(t *testing.T) net.Conn { return dialFrom(t, "127.0.0.1", s.AMQPSAddr) }, frames.ProtoAMQP[:]},
		{"random bytes on plain AMQP", func(t *testing.T) net.Conn { return dialFrom(t, "127.0.0.1", s.AMQPAddr) }, bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc := tc.dial(t)
			defer nc.Close()
			nc.Write(tc.send)
			nc.SetReadDeadline(time.Now().Add(15 * time.Second))
			start := time.Now()
			// EOF, a reset or a TLS alert all mean dropped; only a
			// timeout means the hub held on.
			_, err := io.Copy(io.Discard, nc)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("not dropped: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("dropped only after %v", d)
			}
		})
	}
	sendTelemetry(t, s, "127.0.0.1", "d2", d2Key)
}

func tlsDial(t *testing.T, s *server.Server, addr string) net.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, s.ClientTLS)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	return c
}

// TestCBSWithoutReplyCredit: a client that floods $cbs with put-token
// requests while granting its reply link no credit cannot make the hub
// hold an answer (and a goroutine) per request.
func TestCBSWithoutReplyCredit(t *testing.T) {
	s := startRealHub(t, nil)
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
	snd, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Manual credit, never issued: the hub can answer nothing.
	if _, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply", Credit: -1}); err != nil {
		t.Fatal(err)
	}
	goroutines := runtime.NumGoroutine()
	before := heapInuse()
	tok := deviceToken(t, s.Options.HostName, "d1", d3Key, time.Hour) // wrong key: refused, still answered
	for i := 0; i < 3000; i++ {
		m := &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: fmt.Sprint(i), ReplyTo: ptr("cbs-reply")},
			ApplicationProperties: map[string]any{"operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": s.Options.HostName + "/devices/d1"},
			Value:                 tok,
		}
		if err := snd.Send(ctx, m, nil); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := runtime.NumGoroutine(); n > goroutines+200 {
		t.Fatalf("%d goroutines after 3000 unanswerable CBS requests (started with %d)", n, goroutines)
	}
	checkHeap(t, before, 16<<20, "after 3000 unanswerable CBS requests")
	sendTelemetry(t, s, "127.0.0.2", "d1", d1Key)
}

// restDo sends a REST request to the hub with token as Authorization and,
// if not empty, an If-Match header.
func restDo(t *testing.T, s *server.Server, method, path, token, ifMatch string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "https://"+s.HTTPSAddr+path+"?api-version=2021-04-12", rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	req.Header.Set("Content-Type", "application/json")
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: s.ClientTLS}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func ownerTok(t *testing.T, s *server.Server) string {
	return policyToken(t, s.Options.HostName, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey, time.Hour)
}

// connCond waits until c ends and returns the remote condition.
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
	t.Fatalf("connection ended with %v and no remote error", c.Err())
	return ""
}

// TestRegistryChangesReachLiveConnections: through the REST API, disabling
// a device closes its live connection and regenerating a key closes the
// connection authenticated with the old one, within the hub's default
// revalidation interval, and new attempts with the old token fail.
func TestRegistryChangesReachLiveConnections(t *testing.T) {
	tests := []struct {
		name   string
		dev    string
		key    string
		change func(d map[string]any)
	}{
		{"device disabled", "d1", d1Key, func(d map[string]any) { d["status"] = "disabled" }},
		{"primary key regenerated", "d2", d2Key, func(d map[string]any) {
			newKey := base64.StdEncoding.EncodeToString([]byte("a brand new primary key for d2!!"))
			d["authentication"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"] = newKey
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startRealHub(t, nil)
			host := s.Options.HostName
			tok := deviceToken(t, host, tc.dev, tc.key, time.Hour)
			sasl, err := dialPlain(t, s, tc.dev+"@sas."+s.Options.HubName, tok)
			if err != nil {
				t.Fatal(err)
			}
			cbsConn, err := dialPlain(t, s, "", "")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sess, err := cbsConn.NewSession(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp, err := newCBS(t, ctx, sess).putToken(ctx, "1", host+"/devices/"+tc.dev, tok); err != nil || resp.ApplicationProperties["status-code"] != int32(200) {
				t.Fatalf("put-token: %v %v", err, resp)
			}
			if _, err := sess.NewSender(ctx, "/devices/"+tc.dev+"/messages/events", nil); err != nil {
				t.Fatal(err)
			}
			// Change the device through the REST API.
			status, body := restDo(t, s, http.MethodGet, "/devices/"+tc.dev, ownerTok(t, s), "", nil)
			if status != http.StatusOK {
				t.Fatalf("GET device: %d %s", status, body)
			}
			var d map[string]any
			if err := json.Unmarshal(body, &d); err != nil {
				t.Fatal(err)
			}
			tc.change(d)
			if status, body := restDo(t, s, http.MethodPut, "/devices/"+tc.dev, ownerTok(t, s), "*", d); status != http.StatusOK {
				t.Fatalf("PUT device: %d %s", status, body)
			}
			changed := time.Now()
			for name, c := range map[string]*goamqp.Conn{"SASL": sasl, "CBS": cbsConn} {
				if cond := connCond(t, c, 15*time.Second); cond != goamqp.ErrCondUnauthorizedAccess {
					t.Fatalf("%s connection after the change: %q, want %s", name, cond, goamqp.ErrCondUnauthorizedAccess)
				}
			}
			t.Logf("connections closed %v after the change", time.Since(changed))
			if _, err := dialPlain(t, s, tc.dev+"@sas."+s.Options.HubName, tok); err == nil {
				t.Fatal("the old token still opens a connection")
			}
		})
	}
}

// TestTokenRefusalsCBSAndREST fills the gaps the SASL table leaves:
// expired tokens, other hosts and other devices through CBS and REST.
func TestTokenRefusalsCBSAndREST(t *testing.T) {
	s := startRealHub(t, nil)
	host := s.Options.HostName
	tests := []struct {
		name     string
		audience string
		token    string
	}{
		{"expired device token", host + "/devices/d1", deviceToken(t, host, "d1", d1Key, -time.Minute)},
		{"device token for another host", host + "/devices/d1", deviceToken(t, "otherhub.azure-devices.net", "d1", d1Key, time.Hour)},
		{"another device's token", host + "/devices/d1", deviceToken(t, host, "d2", d2Key, time.Hour)},
		{"disabled device", host + "/devices/d3", deviceToken(t, host, "d3", d3Key, time.Hour)},
		{"expired policy token", host, policyToken(t, host, "iothubowner", auth.DevIoTHubOwnerPrimaryKey, -time.Minute)},
		{"policy token for another host", "otherhub.azure-devices.net", policyToken(t, "otherhub.azure-devices.net", "iothubowner", auth.DevIoTHubOwnerPrimaryKey, time.Hour)},
	}
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
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := cbs.putToken(ctx, fmt.Sprint(i), tc.audience, tc.token)
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.ApplicationProperties["status-code"]; got != int32(401) {
				t.Errorf("CBS status %v, want 401", got)
			}
			if status, body := restDo(t, s, http.MethodGet, "/devices/d1", tc.token, "", nil); status != http.StatusUnauthorized {
				t.Errorf("REST status %d (%s), want 401", status, body)
			}
		})
	}
	// Nothing was authorized on the connection.
	if err := attach(ctx, sess, "/devices/d1/messages/events", true); condOf(err) != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("attach after refused tokens: %v", err)
	}
}

// TestNoSecretsInLogsRESTAndC2D extends TestNoSecretsInLogs to the REST
// API (good and bad tokens, responses carrying keys), the service-side
// C2D link, and revocations, at debug level.
func TestNoSecretsInLogsRESTAndC2D(t *testing.T) {
	var logs testutil.LockedBuffer
	s := startRealHub(t, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	host := s.Options.HostName
	owner := ownerTok(t, s)
	badOwner := policyToken(t, host, "iothubowner", auth.DevServicePrimaryKey, time.Hour)
	service := policyToken(t, host, "service", auth.DevServicePrimaryKey, time.Hour)
	var tokens = []string{owner, badOwner, service}
	var keys = []string{auth.DevIoTHubOwnerPrimaryKey, auth.DevServicePrimaryKey, d1Key, d2Key}

	// REST: create a device (the response carries generated keys), read,
	// fail, update, delete.
	status, body := restDo(t, s, http.MethodPut, "/devices/secretive", owner, "", map[string]any{"deviceId": "secretive"})
	if status != http.StatusOK {
		t.Fatalf("create device: %d %s", status, body)
	}
	var created registry.Device
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	keys = append(keys, created.Authentication.SymmetricKey.PrimaryKey, created.Authentication.SymmetricKey.SecondaryKey)
	restDo(t, s, http.MethodGet, "/devices/secretive", owner, "", nil)
	restDo(t, s, http.MethodGet, "/devices/secretive", badOwner, "", nil)
	restDo(t, s, http.MethodGet, "/devices/secretive", "SharedAccessSignature sr=broken&sig=abc", "", nil)
	restDo(t, s, http.MethodGet, "/twins/d1", service, "", nil)
	restDo(t, s, http.MethodPatch, "/twins/d1", service, "", map[string]any{"tags": map[string]any{"k": "v"}})
	restDo(t, s, http.MethodDelete, "/devices/secretive", owner, "*", nil)

	// C2D, as the service: SASL PLAIN and CBS, good and bad.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c, err := dialPlain(t, s, "service@sas.root."+s.Options.HubName, service); err == nil {
		if sess, err := c.NewSession(ctx, nil); err == nil {
			if snd, err := sess.NewSender(ctx, "/messages/devicebound", nil); err == nil {
				m := goamqp.NewMessage([]byte("c2d"))
				m.Properties = &goamqp.MessageProperties{To: ptr("/devices/d1/messages/devicebound"), MessageID: "c2d-1"}
				snd.Send(ctx, m, nil)
			}
		}
	}
	dialPlain(t, s, "service@sas.root."+s.Options.HubName, badOwner)
	c, err := dialPlain(t, s, "", "")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cbs := newCBS(t, ctx, sess)
	cbs.putToken(ctx, "bad", host, badOwner)
	cbs.putToken(ctx, "good", host, service)
	attach(ctx, sess, "/messages/devicebound", true)
	attach(ctx, sess, "/messages/serviceBound/feedback", false)

	// A revocation: a live device connection whose key changes.
	devTok := deviceToken(t, host, "d1", d1Key, time.Hour)
	tokens = append(tokens, devTok)
	dc, err := dialPlain(t, s, "d1@sas."+s.Options.HubName, devTok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Registry.RegenerateDeviceKey(ctx, "d1", registry.KeyPrimary, "*"); err != nil {
		t.Fatal(err)
	}
	s.Hub.RevalidateDevice("d1")
	if cond := connCond(t, dc, 10*time.Second); cond != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("revoked connection: %q", cond)
	}

	out := logs.String()
	for _, want := range []string{"rest: unauthorized", "credential no longer valid"} {
		if !strings.Contains(out, want) {
			t.Fatalf("the log lacks %q; the test would prove nothing:\n%s", want, out)
		}
	}
	for _, tok := range tokens {
		sig := tok[strings.Index(tok, "sig=")+4:]
		if i := strings.IndexByte(sig, '&'); i >= 0 {
			sig = sig[:i]
		}
		dec, _ := url.QueryUnescape(sig)
		if strings.Contains(out, sig) || strings.Contains(out, dec) {
			t.Fatalf("a token signature appears in the log")
		}
	}
	for _, k := range keys {
		if k != "" && strings.Contains(out, k) {
			t.Fatalf("a key appears in the log")
		}
	}
}
