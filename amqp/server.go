// Package amqp is an AMQP 1.0 server engine: framing, SASL, connection,
// session and link state for the server role, flow control and transports
// (TCP, TLS, WebSocket). It knows nothing of IoT Hub; the hub plugs in
// through Handler and the per-link callbacks.
//
// # Concurrency
//
// Each connection has one reader goroutine (decodes frames, updates state,
// calls the hub's callbacks) and, only while output is queued, one flusher
// goroutine (owns the socket's write side and writes everything queued in
// one write, or writev, per round; see outbuf.go).
// Hub callbacks run on the reader goroutine: they must not block for long
// and must not call Link.Send on the same connection (use TrySend, or hand
// off to another goroutine). Lock order: Link.sendMu -> Conn.mu -> Conn.wmu.
// No lock is held across socket I/O or a hub callback.
package amqp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"amqphub/amqp/frames"
)

// Config holds a server's limits and hooks. Zero fields take the defaults
// documented on each.
type Config struct {
	// ContainerID is sent in Open. Default "amqphub".
	ContainerID string
	// MaxFrameSize is the largest frame accepted. Default 65536.
	MaxFrameSize uint32
	// ChannelMax bounds sessions per connection (highest channel number).
	// Default 8191: the C# SDK pools many device sessions on one connection.
	ChannelMax uint16
	// HandleMax bounds link handles per session. Default 4095.
	HandleMax uint32
	// MaxLinks bounds links per connection across sessions. Default 16384.
	MaxLinks int
	// MaxMessageSize is the default largest message on links where the hub
	// receives; the attach handler may change it per link. Default 1 MiB.
	MaxMessageSize uint64
	// CreditWindow is the default credit granted on links where the hub
	// receives. Credit is replenished only as the hub settles deliveries,
	// which is the back-pressure towards senders. Default 1000.
	CreditWindow uint32
	// IdleTimeout is advertised in Open; a peer silent for longer is
	// disconnected. Default 240 s (the value Azure IoT Edge uses).
	IdleTimeout time.Duration
	// MaxHeartbeat caps the interval of empty frames sent to keep a peer's
	// idle timer from expiring. Default 15 s.
	MaxHeartbeat time.Duration
	// HandshakeTimeout bounds the protocol header, SASL and Open exchange.
	// Default 10 s.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds connections still in that exchange; further
	// connections are closed at once (limits.go). Default 1024.
	MaxHandshakes int
	// MaxHandshakesPerIP bounds them per remote IP address, so one source
	// cannot take every slot. Default 256.
	MaxHandshakesPerIP int
	// MaxWriteBuffer bounds frames queued for a slow peer; beyond it the
	// connection stops reading until the peer catches up. Default 4 MiB.
	MaxWriteBuffer int
	// SASL authenticates SASL exchanges. Nil offers only ANONYMOUS.
	SASL Authenticator
	// AllowNoSASL accepts the plain AMQP header with no SASL layer (the
	// Node and C# IoT SDKs send it); authentication then happens at a
	// higher level (CBS). Default false.
	AllowNoSASL bool
	// Handler receives connection and link events. Required.
	Handler Handler
	// Logger receives engine logs. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.ContainerID == "" {
		d.ContainerID = "amqphub"
	}
	if d.MaxFrameSize == 0 {
		d.MaxFrameSize = 65536
	}
	if d.MaxFrameSize < frames.MinMaxFrameSize {
		d.MaxFrameSize = frames.MinMaxFrameSize
	}
	if d.ChannelMax == 0 {
		d.ChannelMax = 8191
	}
	if d.HandleMax == 0 {
		d.HandleMax = 4095
	}
	if d.MaxLinks == 0 {
		d.MaxLinks = 16384
	}
	if d.MaxMessageSize == 0 {
		d.MaxMessageSize = 1 << 20
	}
	if d.CreditWindow == 0 {
		d.CreditWindow = 1000
	}
	if d.IdleTimeout == 0 {
		d.IdleTimeout = 240 * time.Second
	}
	if d.MaxHeartbeat == 0 {
		d.MaxHeartbeat = 15 * time.Second
	}
	if d.HandshakeTimeout == 0 {
		d.HandshakeTimeout = 10 * time.Second
	}
	if d.MaxHandshakes == 0 {
		d.MaxHandshakes = 1024
	}
	if d.MaxHandshakesPerIP == 0 {
		d.MaxHandshakesPerIP = 256
	}
	if d.MaxWriteBuffer == 0 {
		d.MaxWriteBuffer = 4 << 20
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	return d
}

// Handler is implemented by the application (the hub).
type Handler interface {
	// OnOpen is called once the peer's Open arrived (and SASL, if any,
	// succeeded). Returning an error closes the connection with it.
	OnOpen(c *Conn) *Error
	// OnAttach is called for every link the peer attaches. Return nil to
	// accept (after setting callbacks with Link.OnMessage, Link.OnDetach),
	// or an error to refuse the link: the engine answers with a null
	// terminus and detaches with that error (use RedirectError to redirect).
	OnAttach(l *Link) *Error
	// OnClose is called once when the connection is gone.
	OnClose(c *Conn, err error)
}

// Server accepts AMQP connections.
type Server struct {
	cfg Config

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
	hs        handshakes
}

// NewServer returns a server with cfg's limits and hooks.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("amqp: Config.Handler is required")
	}
	return &Server{
		cfg:       cfg.withDefaults(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*Conn]struct{}),
	}, nil
}

// Serve accepts connections on ln until Shutdown or Close. A TLS listener
// (crypto/tls.NewListener) gives AMQPS.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Accept errors such as EMFILE are transient: back off
				// instead of spinning or exiting.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("amqp: accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("amqp: accept: %w", err)
		}
		backoff = 0
		s.ServeConn(nc)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// ServeConn serves one already-accepted connection in the background. The
// WebSocket transport and tests use it directly.
func (s *Server) ServeConn(nc net.Conn) { s.serveConn(nc) }

func (s *Server) serveConn(nc net.Conn) *Conn {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	if !s.hs.acquire(&s.cfg, nc.RemoteAddr()) {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go c.run(func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	})
	return c
}

// Shutdown stops accepting, closes every connection with
// amqp:connection:forced, and waits for them to finish or ctx to expire.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close(NewError(ErrCondConnectionForced, "server shutting down"))
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// Close closes listeners and connections at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.Shutdown(ctx)
	return nil
}

// Conns returns the number of live connections.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TLSConnectionState returns the TLS state of nc if it is a TLS connection.
func tlsState(nc net.Conn) *tls.ConnectionState {
	switch tc := nc.(type) {
	case *tls.Conn:
		st := tc.ConnectionState()
		return &st
	case *wsConn:
		return tc.state
	}
	return nil
}
