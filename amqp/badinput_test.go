package amqp_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/demo"
)

// rawClient speaks AMQP frame by frame so tests can send what no real
// client would.
type rawClient struct {
	t   *testing.T
	nc  net.Conn
	br  *bufio.Reader
	dec frames.Decoder
}

func rawDial(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) send(ch uint16, p frames.Performative, payload []byte) {
	c.t.Helper()
	b, err := frames.AppendFrame(nil, frames.FrameAMQP, ch, p, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(b)
}

func (c *rawClient) readHeader() [8]byte {
	c.t.Helper()
	var h [8]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("read protocol header: %v", err)
	}
	return h
}

// next returns the next non-empty frame's performative, or an error at EOF.
func (c *rawClient) next() (frames.Performative, error) {
	for {
		var h [8]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, err
		}
		size := binary.BigEndian.Uint32(h[:])
		body := make([]byte, size-8)
		if _, err := io.ReadFull(c.br, body); err != nil {
			return nil, err
		}
		body = body[int(h[4])*4-8:]
		if len(body) == 0 {
			continue
		}
		return c.dec.Decode(body)
	}
}

// expect reads frames until one of type T arrives.
func expect[T frames.Performative](c *rawClient) T {
	c.t.Helper()
	for {
		p, err := c.next()
		if err != nil {
			var zero T
			c.t.Fatalf("waiting for %T: %v", zero, err)
		}
		if v, ok := p.(T); ok {
			return v
		}
	}
}

// open performs the plain-header handshake and begins session 0.
func (c *rawClient) open() {
	c.t.Helper()
	c.write(frames.ProtoAMQP[:])
	if h := c.readHeader(); h != frames.ProtoAMQP {
		c.t.Fatalf("server header %q", h[:])
	}
	c.send(0, &frames.Open{ContainerID: "raw", MaxFrameSize: 65536, ChannelMax: 100}, nil)
	expect[*frames.Open](c)
	c.send(0, &frames.Begin{NextOutgoingID: 0, IncomingWindow: 1000, OutgoingWindow: 1000}, nil)
	expect[*frames.Begin](c)
}

func (c *rawClient) expectClose(cond amqp.Condition) {
	c.t.Helper()
	cl := expect[*frames.Close](c)
	if cl.Error == nil || cl.Error.Condition != cond {
		c.t.Fatalf("close error %v, want %s", cl.Error, cond)
	}
	// The server hangs up after its close.
	if _, err := c.next(); err == nil {
		c.t.Fatal("frames after close")
	}
}

func (c *rawClient) expectEOF() {
	c.t.Helper()
	for {
		if _, err := c.next(); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					c.t.Fatalf("server did not hang up: %v", err)
				}
			}
			return
		}
	}
}

func startRaw(t *testing.T, mod func(*amqp.Config)) *amqptest.Server {
	return startDemo(t, mod)
}

func TestBadProtocolHeader(t *testing.T) {
	srv := startRaw(t, nil)
	for _, hdr := range []string{"HTTP/1.1", "AMQP\x02\x01\x00\x00", "AMQP\x00\x00\x09\x01"} {
		c := rawDial(t, srv.Addr)
		c.write([]byte(hdr))
		h := c.readHeader()
		if string(h[:4]) != "AMQP" {
			t.Fatalf("after %q the server answered %q, want an AMQP header", hdr, h[:])
		}
		c.expectEOF()
	}
}

func TestFramingErrors(t *testing.T) {
	srv := startRaw(t, nil)
	tests := []struct {
		name  string
		frame []byte
		cond  amqp.Condition
	}{
		{"frame larger than max-frame-size", []byte{0x7f, 0, 0, 0, 2, 0, 0, 0}, amqp.ErrCondFramingError},
		{"size below header", []byte{0, 0, 0, 4, 2, 0, 0, 0}, amqp.ErrCondFramingError},
		{"bad data offset", []byte{0, 0, 0, 8, 1, 0, 0, 0}, amqp.ErrCondFramingError},
		{"unknown frame type", []byte{0, 0, 0, 8, 2, 9, 0, 0}, amqp.ErrCondFramingError},
		{"garbage performative", []byte{0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xff}, amqp.ErrCondDecodeError},
		{"unknown descriptor", []byte{0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x99, 0x45}, amqp.ErrCondDecodeError},
		{"frame on a channel with no session", mustFrame(t, 7, &frames.Flow{IncomingWindow: 1, OutgoingWindow: 1}), amqp.ErrCondFramingError},
		{"second open", mustFrame(t, 0, &frames.Open{ContainerID: "again"}), amqp.ErrCondIllegalState},
		{"huge list count", []byte{0, 0, 0, 0x13, 2, 0, 0, 0, 0x00, 0x53, 0x13, 0xd0, 0, 0, 0, 6, 0xff, 0xff, 0xff}, amqp.ErrCondDecodeError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, srv.Addr)
			c.open()
			c.write(tc.frame)
			c.expectClose(tc.cond)
		})
	}
	// The server still serves well-behaved clients.
	roundTrip(t, dial(t, srv, nil))
}

func mustFrame(t *testing.T, ch uint16, p frames.Performative) []byte {
	b, err := frames.AppendFrame(nil, frames.FrameAMQP, ch, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandshakeDeadline(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	for _, stage := range []string{"nothing", "header only", "sasl header, no init"} {
		t.Run(stage, func(t *testing.T) {
			c := rawDial(t, srv.Addr)
			switch stage {
			case "header only":
				c.write(frames.ProtoAMQP[:])
			case "sasl header, no init":
				c.write(frames.ProtoSASL[:])
			}
			start := time.Now()
			c.expectEOF()
			// 200 ms deadline; the bound is loose because CI machines
			// running the race detector on two cores can be very slow.
			if d := time.Since(start); d > 9*time.Second {
				t.Fatalf("hung up after %v", d)
			}
		})
	}
}

func TestIdleTimeoutClosesSilentPeer(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.IdleTimeout = 300 * time.Millisecond })
	c := rawDial(t, srv.Addr)
	c.open()
	c.expectClose(amqp.ErrCondResourceLimitExceeded)
}

// holding never settles messages sent to "hold", so credit is not refilled.
type holding struct{ *demo.Handler }

func (h holding) OnAttach(l *amqp.Link) *amqp.Error {
	if l.Address() == "hold" {
		l.OnMessage(func(*amqp.Delivery) {})
		return nil
	}
	return h.Handler.OnAttach(l)
}

func TestTransferWithoutCredit(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.CreditWindow = 2; c.Handler = holding{demo.NewHandler()} })
	c := rawDial(t, srv.Addr)
	c.open()
	c.send(0, &frames.Attach{Name: "l", Handle: 0, Role: frames.RoleSender, Source: &frames.Source{}, Target: &frames.Target{Address: "hold"}}, nil)
	expect[*frames.Attach](c)
	fl := expect[*frames.Flow](c)
	if fl.LinkCredit != 2 {
		t.Fatalf("credit %d, want 2", fl.LinkCredit)
	}
	msg, _ := (&frames.Message{Data: [][]byte{[]byte("x")}}).AppendAMQP(nil)
	// The hub holds every message, so the third transfer exceeds the credit.
	for i := uint32(0); i < 3; i++ {
		c.send(0, &frames.Transfer{Handle: 0, DeliveryID: i, HasDeliveryID: true, DeliveryTag: []byte{byte(i)}, Settled: true, HasSettled: true}, msg)
	}
	for {
		p, err := c.next()
		if err != nil {
			t.Fatalf("waiting for detach: %v", err)
		}
		if d, ok := p.(*frames.Detach); ok {
			if d.Error == nil || d.Error.Condition != amqp.ErrCondTransferLimitExceeded {
				t.Fatalf("detach error %v, want %s", d.Error, amqp.ErrCondTransferLimitExceeded)
			}
			return
		}
	}
}

func TestLinkAndSessionLimits(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.MaxLinks = 3; c.ChannelMax = 4 })
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	for i := 0; i < 3; i++ {
		if _, err := s.NewSender(ctx, "sink", nil); err != nil {
			t.Fatalf("link %d: %v", i, err)
		}
	}
	_, err := s.NewSender(ctx, "sink", nil)
	if got := remoteErr(t, err); got.Condition != goamqp.ErrCondResourceLimitExceeded {
		t.Fatalf("4th link: %v, want %s", got, goamqp.ErrCondResourceLimitExceeded)
	}

	rc := rawDial(t, srv.Addr)
	rc.open()
	rc.send(9, &frames.Begin{IncomingWindow: 1, OutgoingWindow: 1}, nil)
	rc.expectClose(amqp.ErrCondFramingError)
}

// panicky panics in OnAttach for one address.
type panicky struct{ *demo.Handler }

func (p panicky) OnAttach(l *amqp.Link) *amqp.Error {
	if l.Address() == "boom" {
		panic("handler bug")
	}
	return p.Handler.OnAttach(l)
}

func TestPanicIsContained(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.Handler = panicky{demo.NewHandler()} })
	victim := dial(t, srv, nil)
	other := dial(t, srv, nil)
	s := session(t, victim)
	ctx := ctxT(t)
	_, err := s.NewSender(ctx, "boom", nil)
	if err == nil {
		t.Fatal("attach to the panicking address succeeded")
	}
	select {
	case <-victim.Done():
	case <-ctx.Done():
		t.Fatal("connection with the panic was not closed")
	}
	var ce *goamqp.ConnError
	if !errors.As(victim.Err(), &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCondInternalError {
		t.Fatalf("victim closed with %v, want %s", victim.Err(), goamqp.ErrCondInternalError)
	}
	roundTrip(t, other)
}

// TestSlowReaderBackpressure: a peer that sends frames but never reads
// must not grow the server's output without bound; the server stops
// reading from it while its output is over the limit.
func TestSlowReaderBackpressure(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.MaxWriteBuffer = 64 << 10 })
	c := rawDial(t, srv.Addr)
	c.open()
	// Each echo flow makes the server write a flow frame back. Write until
	// the socket blocks, which shows the server stopped reading.
	flow := mustFrame(t, 0, &frames.Flow{IncomingWindow: 100, OutgoingWindow: 100, NextIncomingID: 0, HasNextIncomingID: true, Echo: true})
	batch := make([]byte, 0, len(flow)*1000)
	for i := 0; i < 1000; i++ {
		batch = append(batch, flow...)
	}
	c.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
	var blocked bool
	for i := 0; i < 20000; i++ {
		if _, err := c.nc.Write(batch); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				blocked = true
				break
			}
			t.Fatalf("write: %v", err)
		}
	}
	if !blocked {
		t.Fatal("the server kept reading from a peer that never reads its replies")
	}
	// Others are still served.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	oc, err := goamqp.Dial(ctx, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	roundTrip(t, oc)
	_ = encoding.Symbol("")
}
