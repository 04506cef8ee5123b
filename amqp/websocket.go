package amqp

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"

	"github.com/coder/websocket"
)

// WebSocketSubprotocol is the subprotocol of AMQP over WebSockets.
const WebSocketSubprotocol = "AMQPWSB10"

// WebSocketHandler returns an http.Handler that upgrades requests to
// WebSockets with subprotocol AMQPWSB10 and serves AMQP over them, so one
// HTTPS server can carry both AMQP and a REST API. Unknown query
// parameters are ignored (the Java SDK adds one).
func (s *Server) WebSocketHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols: []string{WebSocketSubprotocol},
			// Devices are not browsers; there is no origin to check.
			InsecureSkipVerify: true,
		})
		if err != nil {
			return // Accept has written the HTTP error
		}
		if ws.Subprotocol() != WebSocketSubprotocol {
			ws.Close(websocket.StatusPolicyViolation, "subprotocol "+WebSocketSubprotocol+" required")
			return
		}
		// AMQP frames may span WebSocket messages and one message may hold
		// many frames; the engine's frame limit is what bounds memory.
		ws.SetReadLimit(int64(s.cfg.MaxFrameSize) + 1<<20)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		nc := &wsConn{
			Conn:   websocket.NetConn(ctx, ws, websocket.MessageBinary),
			remote: addrOf(r.RemoteAddr),
			local:  localAddrOf(r),
			state:  r.TLS,
		}
		c := s.serveConn(nc)
		if c == nil {
			return
		}
		// The handler must not return while the connection lives: the
		// HTTP server owns the hijacked socket until then.
		select {
		case <-c.Done():
		case <-r.Context().Done():
			nc.Close()
			<-c.Done()
		}
	})
}

// wsConn carries the HTTP request's addresses and TLS state, which the
// WebSocket net.Conn adapter does not know.
type wsConn struct {
	net.Conn
	remote, local net.Addr
	state         *tls.ConnectionState
}

func (c *wsConn) RemoteAddr() net.Addr { return c.remote }
func (c *wsConn) LocalAddr() net.Addr  { return c.local }

type strAddr string

func (a strAddr) Network() string { return "websocket" }
func (a strAddr) String() string  { return string(a) }

func addrOf(s string) net.Addr {
	if a, err := net.ResolveTCPAddr("tcp", s); err == nil {
		return a
	}
	return strAddr(s)
}

func localAddrOf(r *http.Request) net.Addr {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a
	}
	return strAddr(r.Host)
}
