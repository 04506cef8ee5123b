package amqp_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	"github.com/coder/websocket"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/demo"
)

func roundTrip(t *testing.T, c *goamqp.Conn) {
	t.Helper()
	ctx := ctxT(t)
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx, "queue/transport", nil)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 300_000) // multi-frame, and spans WebSocket messages
	for _, body := range []string{"hello", big} {
		if err := snd.Send(ctx, goamqp.NewMessage([]byte(body)), nil); err != nil {
			t.Fatal(err)
		}
	}
	rcv, err := s.NewReceiver(ctx, "queue/transport", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hello", big} {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != want {
			t.Fatalf("got %d bytes, want %d", len(m.GetData()), len(want))
		}
		rcv.AcceptMessage(ctx, m)
	}
}

func TestTLSTransport(t *testing.T) {
	srvTLS, cliTLS := amqptest.SelfSigned(t)
	srv, err := amqp.NewServer(amqp.Config{Handler: demo.NewHandler(), SASL: demo.Authenticator{}, Logger: amqptest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqps://"+ln.Addr().String(), &goamqp.ConnOptions{
		TLSConfig: cliTLS, SASLType: goamqp.SASLTypePlain("guest", "guest"),
	})
	if err != nil {
		t.Fatalf("dial amqps: %v", err)
	}
	defer c.Close()
	roundTrip(t, c)
}

func TestWebSocketTransport(t *testing.T) {
	srv, err := amqp.NewServer(amqp.Config{Handler: demo.NewHandler(), SASL: demo.Authenticator{}, AllowNoSASL: true, Logger: amqptest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mux := http.NewServeMux()
	mux.Handle("/$iothub/websocket", srv.WebSocketHandler())
	hs := httptest.NewServer(mux)
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/$iothub/websocket?iothub-no-client-cert=true"

	t.Run("no subprotocol refused", func(t *testing.T) {
		ws, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			return // refused during the handshake: fine
		}
		defer ws.CloseNow()
		if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("read without subprotocol: %v, want close %v", err, websocket.StatusPolicyViolation)
		}
	})

	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{amqp.WebSocketSubprotocol}})
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != amqp.WebSocketSubprotocol {
		t.Fatalf("subprotocol %q", got)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	c, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous()})
	if err != nil {
		t.Fatalf("amqp over websocket: %v", err)
	}
	defer c.Close()
	roundTrip(t, c)
	var _ net.Conn = nc
}

// externalAuth accepts SASL EXTERNAL when the TLS client presented a
// certificate, and names the connection after its subject.
type externalAuth struct{}

func (externalAuth) Mechanisms() []string { return []string{amqp.MechEXTERNAL} }
func (externalAuth) Authenticate(req *amqp.SASLRequest) (any, error) {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		return nil, errors.New("no client certificate")
	}
	return req.TLS.PeerCertificates[0].Subject.CommonName, nil
}

type identityCheck struct {
	*demo.Handler
	seen chan any
}

func (h identityCheck) OnOpen(c *amqp.Conn) *amqp.Error { h.seen <- c.Identity(); return nil }

func TestSASLExternalWithClientCertificate(t *testing.T) {
	srvTLS, cliTLS := amqptest.SelfSigned(t)
	// The client certificate: the server's own self-signed pair, trusted
	// as a client CA for this test.
	srvTLS.ClientAuth = tls.RequireAndVerifyClientCert
	srvTLS.ClientCAs = cliTLS.RootCAs
	h := identityCheck{demo.NewHandler(), make(chan any, 1)}
	srv, err := amqp.NewServer(amqp.Config{Handler: h, SASL: externalAuth{}, Logger: amqptest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	cliTLS.Certificates = srvTLS.Certificates
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqps://"+ln.Addr().String(), &goamqp.ConnOptions{TLSConfig: cliTLS, SASLType: goamqp.SASLTypeExternal("")})
	if err != nil {
		t.Fatalf("EXTERNAL over TLS with a client certificate: %v", err)
	}
	defer c.Close()
	if id := <-h.seen; id != "localhost" {
		t.Fatalf("connection identity %v, want the certificate subject localhost", id)
	}
}
