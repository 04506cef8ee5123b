package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/amqp/frames"
	"amqphub/internal/demo"
)

// These tests play hostile clients against the engine. Each checks that
// the attack is bounded by a limit or a deadline, that other clients are
// still served, and that the heap stays bounded (measured with
// runtime.ReadMemStats after a GC). badinput_test.go has the protocol
// violations; these are the resource attacks.

// heapInuse is the live heap after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// checkHeap fails if the heap grew by more than limit since before.
func checkHeap(t *testing.T, before uint64, limit uint64, when string) {
	t.Helper()
	now := heapInuse()
	if now > before+limit {
		t.Fatalf("%s: heap in use grew from %d to %d bytes (limit +%d)", when, before, now, limit)
	}
	t.Logf("%s: heap in use %.1f MiB (before %.1f MiB)", when, float64(now)/(1<<20), float64(before)/(1<<20))
}

// settleHeap waits until the heap is back within limit of before: state
// the engine keeps briefly after a connection ends (the 5 s timer that
// forces a slow peer's socket shut) is released by then, while a leak
// never is.
func settleHeap(t *testing.T, before uint64, limit uint64, when string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for heapInuse() > before+limit && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	checkHeap(t, before, limit, when)
}

// dialFrom opens a TCP connection to addr from the loopback address src
// (any 127.x.y.z works), so tests can play several source hosts.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return nc
}

var pingQueues atomic.Int64

// ping sends a message through a queue of its own and receives it back.
func ping(t *testing.T, c *goamqp.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := fmt.Sprintf("queue/ping-%d", pingQueues.Add(1))
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, goamqp.NewMessage([]byte("ping")), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	rcv, err := s.NewReceiver(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if string(m.GetData()) != "ping" {
		t.Fatalf("received %q", m.GetData())
	}
	if err := rcv.AcceptMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// goodClient connects with go-amqp from src and proves the server serves
// it with a round trip.
func goodClient(t *testing.T, srv *amqptest.Server, src string) {
	t.Helper()
	nc := dialFrom(t, src, srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "guest")})
	if err != nil {
		t.Fatalf("good client from %s: %v", src, err)
	}
	defer c.Close()
	ping(t, c)
}

// closedWithin reports whether the server closed nc within d (whatever it
// wrote before is discarded).
func closedWithin(nc net.Conn, d time.Duration) bool {
	nc.SetReadDeadline(time.Now().Add(d))
	var b [256]byte
	for {
		_, err := nc.Read(b[:])
		if err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// TestHandshakeFloodPerIP: thousands of connections from one address
// that never finish the handshake take at most MaxHandshakesPerIP slots;
// the rest are closed at once, and a client from another address is
// served. The handshake deadline is long here, so the limit alone is
// what bounds the attack.
func TestHandshakeFloodPerIP(t *testing.T) {
	const flood, perIP = 2000, 50
	srv := startRaw(t, func(c *amqp.Config) {
		c.MaxHandshakesPerIP = perIP
		c.HandshakeTimeout = time.Minute
	})
	before := heapInuse()
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		nc := dialFrom(t, "127.0.0.1", srv.Addr)
		conns = append(conns, nc)
		nc.Write([]byte("AMQ")) // half a protocol header, then nothing
	}
	amqptest.Eventually(t, 10*time.Second, func() bool { return srv.Conns() == perIP && srv.Handshaking() == perIP },
		fmt.Sprintf("server holds %d connections in the handshake, want %d", srv.Handshaking(), perIP))
	if !closedWithin(conns[flood-1], 5*time.Second) {
		t.Fatal("a connection over the per-IP limit was not closed")
	}
	checkHeap(t, before, 16<<20, "during the flood")
	goodClient(t, srv, "127.0.0.2")
	// The held ones are still held (the deadline is a minute away) and
	// the server keeps its bound while they are.
	if n := srv.Handshaking(); n != perIP {
		t.Fatalf("%d connections in the handshake, want %d", n, perIP)
	}
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	amqptest.Eventually(t, 10*time.Second, func() bool { return srv.Conns() == 0 && srv.Handshaking() == 0 }, "slots freed after the attacker left")
	settleHeap(t, before, 4<<20, "after the flood")
}

// TestHandshakeFloodTotal: many sources together take at most
// MaxHandshakes slots, and the handshake deadline frees them even though
// the attackers keep their sockets open, after which others connect.
func TestHandshakeFloodTotal(t *testing.T) {
	const total = 100
	srv := startRaw(t, func(c *amqp.Config) {
		c.MaxHandshakes = total
		c.HandshakeTimeout = 500 * time.Millisecond
	})
	before := heapInuse()
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for host := 1; host <= 30; host++ {
		for i := 0; i < 10; i++ {
			nc := dialFrom(t, fmt.Sprintf("127.0.1.%d", host), srv.Addr)
			conns = append(conns, nc)
			nc.Write(frames.ProtoSASL[:]) // then never a sasl-init
		}
		if n := srv.Handshaking(); n > total {
			t.Fatalf("%d connections in the handshake, limit %d", n, total)
		}
	}
	checkHeap(t, before, 16<<20, "during the flood")
	// The deadline reclaims every slot while the attackers' sockets stay open.
	amqptest.Eventually(t, 10*time.Second, func() bool { return srv.Handshaking() == 0 && srv.Conns() == 0 }, "handshake deadline did not free the slots")
	goodClient(t, srv, "127.0.1.1")
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	settleHeap(t, before, 4<<20, "after the flood")
}

// TestSlowloris: peers that keep sending, too slowly, or stop at a later
// stage than badinput_test.go's TestHandshakeDeadline covers, are cut at
// the handshake deadline, which is absolute: trickling bytes does not
// extend it.
func TestSlowloris(t *testing.T) {
	const deadline = 400 * time.Millisecond
	srv := startRaw(t, func(c *amqp.Config) { c.HandshakeTimeout = deadline })
	saslInit := func(t *testing.T) []byte {
		b, err := frames.AppendFrame(nil, frames.FrameSASL, 0, &frames.SASLInit{Mechanism: "ANONYMOUS"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	open := mustFrame(t, 0, &frames.Open{ContainerID: "slow", MaxFrameSize: 65536})
	tests := []struct {
		name string
		run  func(t *testing.T, c *rawClient)
	}{
		{"trickled protocol header", func(t *testing.T, c *rawClient) {
			for _, b := range frames.ProtoSASL {
				if _, err := c.nc.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(deadline / 4)
			}
		}},
		{"trickled sasl-init", func(t *testing.T, c *rawClient) {
			c.write(frames.ProtoSASL[:])
			for _, b := range saslInit(t) {
				if _, err := c.nc.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(deadline / 8)
			}
		}},
		{"SASL done, no AMQP header", func(t *testing.T, c *rawClient) {
			c.write(frames.ProtoSASL[:])
			c.write(saslInit(t))
		}},
		{"AMQP header, no open", func(t *testing.T, c *rawClient) {
			c.write(frames.ProtoAMQP[:])
		}},
		{"truncated open", func(t *testing.T, c *rawClient) {
			c.write(frames.ProtoAMQP[:])
			c.write(open[:len(open)-3])
		}},
	}
	before := heapInuse()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, srv.Addr)
			start := time.Now()
			go tc.run(t, c)
			if !closedWithin(c.nc, 5*time.Second) {
				t.Fatal("the server did not hang up")
			}
			if d := time.Since(start); d < deadline*3/4 || d > 5*time.Second {
				t.Fatalf("hung up after %v, want about %v", d, deadline)
			}
		})
	}
	amqptest.Eventually(t, 5*time.Second, func() bool { return srv.Conns() == 0 }, "connections left over")
	goodClient(t, srv, "127.0.0.1")
	settleHeap(t, before, 4<<20, "after the slow clients")
}

// TestTruncatedFrameAfterOpen: a frame cut short is either finished by the
// idle timeout (peer silent) or by the peer's FIN; the connection goes in
// both cases.
func TestTruncatedFrameAfterOpen(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.IdleTimeout = 300 * time.Millisecond })
	part := mustFrame(t, 0, &frames.Flow{IncomingWindow: 10, OutgoingWindow: 10})
	part = part[:len(part)-2]
	t.Run("then silence", func(t *testing.T) {
		c := rawDial(t, srv.Addr)
		c.open()
		c.write(part)
		c.expectClose(amqp.ErrCondResourceLimitExceeded)
	})
	t.Run("then FIN", func(t *testing.T) {
		c := rawDial(t, srv.Addr)
		c.open()
		c.write(part)
		c.nc.(*net.TCPConn).CloseWrite()
		c.expectEOF()
	})
	t.Run("header only", func(t *testing.T) {
		c := rawDial(t, srv.Addr)
		c.open()
		c.write(part[:5])
		c.expectClose(amqp.ErrCondResourceLimitExceeded)
	})
	amqptest.Eventually(t, 5*time.Second, func() bool { return srv.Conns() == 0 }, "connections left over")
}

// blackhole forwards between a client and the server until cut; then the
// client "vanishes without FIN": nothing more is forwarded either way,
// what the server writes is swallowed, and the server's socket stays open
// until the server itself closes it.
type blackhole struct {
	ln        net.Listener
	cut       atomic.Bool
	srvClosed chan struct{}
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, srvClosed: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		cl, err := ln.Accept()
		if err != nil {
			return
		}
		sv, err := net.Dial("tcp", target)
		if err != nil {
			cl.Close()
			return
		}
		t.Cleanup(func() { cl.Close(); sv.Close() })
		go func() { // client -> server
			buf := make([]byte, 32<<10)
			for {
				n, err := cl.Read(buf)
				if err != nil {
					return
				}
				if !b.cut.Load() {
					sv.Write(buf[:n])
				}
			}
		}()
		buf := make([]byte, 32<<10) // server -> client
		for {
			n, err := sv.Read(buf)
			if err != nil {
				close(b.srvClosed)
				return
			}
			if !b.cut.Load() {
				cl.Write(buf[:n])
			}
		}
	}()
	return b
}

// TestHalfOpenTCP: a client that disappears without FIN or RST is
// reclaimed by the idle timeout.
func TestHalfOpenTCP(t *testing.T) {
	srv := startRaw(t, func(c *amqp.Config) { c.IdleTimeout = 300 * time.Millisecond })
	bh := newBlackhole(t, srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqp://"+bh.ln.Addr().String(), &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "guest")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ping(t, c) // heartbeats keep it alive while the path works
	if srv.Conns() != 1 {
		t.Fatalf("%d server connections, want 1", srv.Conns())
	}
	cutAt := time.Now()
	bh.cut.Store(true)
	select {
	case <-bh.srvClosed:
	case <-time.After(10 * time.Second):
		t.Fatal("the server kept a vanished peer's connection for 10 s")
	}
	t.Logf("vanished peer reclaimed after %v", time.Since(cutAt))
	amqptest.Eventually(t, 5*time.Second, func() bool { return srv.Conns() == 0 }, "server connection not released")
	goodClient(t, srv, "127.0.0.1")
}

// TestSessionAndLinkChurn: beginning and ending sessions and attaching and
// detaching links tens of thousands of times on one connection leaves no
// state behind.
func TestSessionAndLinkChurn(t *testing.T) {
	srv := startRaw(t, nil)
	c := rawDial(t, srv.Addr)
	c.nc.SetDeadline(time.Now().Add(60 * time.Second))
	c.open()
	const rounds = 10000
	ends := make(chan error, 1)
	go func() {
		n := 0
		for n < rounds {
			p, err := c.next()
			if err != nil {
				ends <- err
				return
			}
			if _, ok := p.(*frames.End); ok {
				n++
			}
			if cl, ok := p.(*frames.Close); ok {
				ends <- fmt.Errorf("server closed: %v", cl.Error)
				return
			}
		}
		ends <- nil
	}()
	var round []byte
	round = append(round, mustFrame(t, 1, &frames.Begin{IncomingWindow: 100, OutgoingWindow: 100, HandleMax: 10})...)
	round = append(round, mustFrame(t, 1, &frames.Attach{Name: "l", Handle: 0, Role: frames.RoleSender, Source: &frames.Source{}, Target: &frames.Target{Address: "sink"}})...)
	round = append(round, mustFrame(t, 1, &frames.Detach{Handle: 0, Closed: true})...)
	round = append(round, mustFrame(t, 1, &frames.End{})...)
	before := heapInuse()
	batch := make([]byte, 0, len(round)*100)
	for i := 0; i < 100; i++ {
		batch = append(batch, round...)
	}
	for i := 0; i < rounds/100; i++ {
		c.write(batch)
	}
	if err := <-ends; err != nil {
		t.Fatalf("churn: %v", err)
	}
	checkHeap(t, before, 4<<20, "after 10000 session and link rounds")
	goodClient(t, srv, "127.0.0.1")
}

// TestSessionAndLinkFlood: a connection filling every session and link
// slot it is allowed costs bounded memory, and the next one is refused.
func TestSessionAndLinkFlood(t *testing.T) {
	const sessions, links = 200, 2000
	srv := startRaw(t, func(c *amqp.Config) { c.ChannelMax = sessions - 1; c.MaxLinks = links })
	c := rawDial(t, srv.Addr)
	c.nc.SetDeadline(time.Now().Add(60 * time.Second))
	c.write(frames.ProtoAMQP[:])
	c.readHeader()
	c.send(0, &frames.Open{ContainerID: "flood", MaxFrameSize: 65536, ChannelMax: 65535}, nil)
	expect[*frames.Open](c)
	before := heapInuse()
	var out []byte
	for ch := uint16(0); ch < sessions; ch++ {
		out = append(out, mustFrame(t, ch, &frames.Begin{IncomingWindow: 100, OutgoingWindow: 100, HandleMax: 100})...)
	}
	for h := uint32(0); h < links; h++ {
		ch := uint16(h%(sessions-1)) + 1
		out = append(out, mustFrame(t, ch, &frames.Attach{Name: fmt.Sprint("l", h), Handle: h / (sessions - 1), Role: frames.RoleSender, Source: &frames.Source{}, Target: &frames.Target{Address: "sink"}})...)
	}
	// One link too many.
	out = append(out, mustFrame(t, 1, &frames.Attach{Name: "extra", Handle: 99, Role: frames.RoleSender, Source: &frames.Source{}, Target: &frames.Target{Address: "sink"}})...)
	done := make(chan error, 1)
	go func() {
		attached := 0
		for {
			p, err := c.next()
			if err != nil {
				done <- err
				return
			}
			switch p := p.(type) {
			case *frames.Attach:
				attached++
			case *frames.Detach:
				if p.Error == nil || p.Error.Condition != amqp.ErrCondResourceLimitExceeded {
					done <- fmt.Errorf("detach %v, want %s for the extra link", p.Error, amqp.ErrCondResourceLimitExceeded)
					return
				}
				if attached != links+1 {
					done <- fmt.Errorf("%d attach replies before the refusal, want %d", attached, links+1)
					return
				}
				done <- nil
				return
			case *frames.Close:
				done <- fmt.Errorf("unexpected close: %v", p.Error)
				return
			case *frames.End:
				done <- fmt.Errorf("unexpected end: %v", p.Error)
				return
			}
		}
	}()
	c.write(out)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkHeap(t, before, 32<<20, fmt.Sprintf("with %d sessions and %d links", sessions, links))
	// A begin past channel-max closes the connection.
	c.send(sessions, &frames.Begin{IncomingWindow: 1, OutgoingWindow: 1}, nil)
	c.expectClose(amqp.ErrCondFramingError)
	goodClient(t, srv, "127.0.0.1")
}

// pusher sends to every peer that attaches a receiver to "push" and
// reports each Send's result.
type pusher struct {
	*demo.Handler
	results chan error
}

func (p pusher) OnAttach(l *amqp.Link) *amqp.Error {
	if l.Address() != "push" || !l.IsSender() {
		return p.Handler.OnAttach(l)
	}
	go func() {
		msg, _ := (&frames.Message{Data: [][]byte{make([]byte, 1024)}}).AppendAMQP(nil)
		if err := l.TrySend(&amqp.Outgoing{Payload: msg}); !errors.Is(err, amqp.ErrNoCredit) {
			p.results <- fmt.Errorf("TrySend without credit: %v, want ErrNoCredit", err)
			return
		}
		p.results <- nil
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		p.results <- l.Send(ctx, &amqp.Outgoing{Payload: msg})
		cancel()
		// Then wait as long as it takes: the link's end must free it.
		p.results <- l.Send(context.Background(), &amqp.Outgoing{Payload: msg})
	}()
	return nil
}

// TestReceiverNeverGrantsCredit: the hub cannot push anything to a
// receiver that grants no credit; its sends block without buffering,
// give up with their context, and end when the link goes.
func TestReceiverNeverGrantsCredit(t *testing.T) {
	results := make(chan error, 3)
	srv := startRaw(t, func(c *amqp.Config) { c.Handler = pusher{demo.NewHandler(), results} })
	before := heapInuse()
	c := rawDial(t, srv.Addr)
	c.open()
	c.send(0, &frames.Attach{Name: "r", Handle: 0, Role: frames.RoleReceiver, Source: &frames.Source{Address: "push"}, Target: &frames.Target{}}, nil)
	expect[*frames.Attach](c)
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	if err := <-results; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send without credit: %v, want the context's deadline", err)
	}
	// Nothing was transferred.
	c.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if p, err := c.next(); err == nil {
		t.Fatalf("the server sent %T to a receiver without credit", p)
	}
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	goodClient(t, srv, "127.0.0.1")
	c.send(0, &frames.Detach{Handle: 0, Closed: true}, nil)
	select {
	case err := <-results:
		if !errors.Is(err, amqp.ErrLinkClosed) {
			t.Fatalf("blocked Send after the detach: %v, want ErrLinkClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Send blocked on a receiver without credit outlived the link")
	}
	checkHeap(t, before, 4<<20, "after the creditless receiver")
}

// TestSenderNeverWaitsForSettlement: a client firing unsettled messages
// without waiting for outcomes, at a hub that is slow to settle, is held
// to the credit window: the hub holds at most that many deliveries.
func TestSenderNeverWaitsForSettlement(t *testing.T) {
	const window = 100
	srv := startRaw(t, func(c *amqp.Config) { c.CreditWindow = window; c.Handler = holding{demo.NewHandler()} })
	before := heapInuse()
	for _, mode := range []goamqp.ReceiverSettleMode{goamqp.ReceiverSettleModeFirst, goamqp.ReceiverSettleModeSecond} {
		c := dial(t, srv, nil)
		s := session(t, c)
		snd, err := s.NewSender(ctxT(t), "hold", &goamqp.SenderOptions{RequestedReceiverSettleMode: mode.Ptr()})
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, 8<<10)
		sent := 0
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := snd.SendWithReceipt(ctx, goamqp.NewMessage(body), nil)
			cancel()
			if err != nil {
				// go-amqp reports a send that timed out waiting for
				// credit as transfer-limit-exceeded.
				var ae *goamqp.Error
				if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondTransferLimitExceeded {
					t.Fatalf("send %d: %v, want it blocked for credit", sent, err)
				}
				break
			}
			sent++
			if sent > 10*window {
				t.Fatalf("mode %v: %d messages taken by a hub that settles none; the window is %d", mode, sent, window)
			}
		}
		if sent != window {
			t.Fatalf("mode %v: %d messages taken, want the window of %d", mode, sent, window)
		}
		checkHeap(t, before, 8<<20, fmt.Sprintf("mode %v with %d unsettled deliveries held", mode, sent))
		c.Close()
	}
	goodClient(t, srv, "127.0.0.1")
}

// TestOversizedAndGarbageFramesInHandshake: before Open the same frame
// limit applies, and nothing is allocated for a frame that is refused.
func TestOversizedAndGarbageFramesInHandshake(t *testing.T) {
	srv := startRaw(t, nil)
	tests := []struct {
		name  string
		bytes [][]byte
	}{
		{"huge sasl frame", [][]byte{frames.ProtoSASL[:], {0x7f, 0xff, 0xff, 0xff, 2, 1, 0, 0}}},
		{"huge open frame", [][]byte{frames.ProtoAMQP[:], {0x40, 0, 0, 0, 2, 0, 0, 0}}},
		{"garbage sasl-init", [][]byte{frames.ProtoSASL[:], {0, 0, 0, 12, 2, 1, 0, 0, 0x00, 0x53, 0x41, 0xff}}},
		{"amqp frame where sasl-init belongs", [][]byte{frames.ProtoSASL[:], mustFrame(t, 0, &frames.Open{ContainerID: "x"})}},
		{"garbage open", [][]byte{frames.ProtoAMQP[:], {0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xd0}}},
		{"open with a huge list count", [][]byte{frames.ProtoAMQP[:], {0, 0, 0, 0x13, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xd0, 0, 0, 0, 6, 0xff, 0xff, 0xff}}},
	}
	before := heapInuse()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 50; i++ {
				c := rawDial(t, srv.Addr)
				for _, b := range tc.bytes {
					c.write(b)
				}
				if !closedWithin(c.nc, 5*time.Second) {
					t.Fatal("the server did not hang up")
				}
				c.nc.Close()
			}
		})
	}
	checkHeap(t, before, 4<<20, "after oversized and garbage handshakes")
	goodClient(t, srv, "127.0.0.1")
}

// TestManyIdleConnectionsReclaimed: opened connections that go silent are
// all reclaimed by the idle timeout, together.
func TestManyIdleConnectionsReclaimed(t *testing.T) {
	const n = 300
	srv := startRaw(t, func(c *amqp.Config) {
		c.IdleTimeout = 300 * time.Millisecond
		c.MaxHandshakesPerIP = n // all of them open at once from one address
	})
	before := heapInuse()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.Dial("tcp", srv.Addr)
			if err != nil {
				errs <- err
				return
			}
			defer nc.Close()
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			nc.Write(frames.ProtoAMQP[:])
			b, _ := frames.AppendFrame(nil, frames.FrameAMQP, 0, &frames.Open{ContainerID: "idle", MaxFrameSize: 65536}, nil)
			nc.Write(b)
			var hdr [8]byte
			if _, err := io.ReadFull(nc, hdr[:]); err != nil || hdr != frames.ProtoAMQP {
				errs <- fmt.Errorf("connection not accepted: header %q, %v", hdr[:], err)
				return
			}
			if _, err := io.Copy(io.Discard, nc); err != nil {
				errs <- fmt.Errorf("silent connection not closed by the server: %w", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	amqptest.Eventually(t, 5*time.Second, func() bool { return srv.Conns() == 0 }, "idle connections not released")
	settleHeap(t, before, 4<<20, "after 300 idle connections")
	goodClient(t, srv, "127.0.0.1")
}

// racer waits in Send on every "wait" link and calls TrySend on it from
// the reader goroutine whenever a message arrives on "trigger".
type racer struct {
	*demo.Handler
	mu      sync.Mutex
	waiting *amqp.Link
	sent    chan error
	tried   chan error
}

func (r *racer) OnAttach(l *amqp.Link) *amqp.Error {
	msg, _ := (&frames.Message{Data: [][]byte{[]byte("x")}}).AppendAMQP(nil)
	switch {
	case l.Address() == "wait" && l.IsSender():
		r.mu.Lock()
		r.waiting = l
		r.mu.Unlock()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r.sent <- l.Send(ctx, &amqp.Outgoing{Payload: msg})
		}()
		return nil
	case l.Address() == "trigger" && !l.IsSender():
		l.OnMessage(func(d *amqp.Delivery) {
			d.Accept()
			r.mu.Lock()
			w := r.waiting
			r.mu.Unlock()
			start := time.Now()
			err := w.TrySend(&amqp.Outgoing{Payload: msg})
			if time.Since(start) > time.Second {
				err = fmt.Errorf("TrySend blocked the reader for %v", time.Since(start))
			}
			r.tried <- err
		})
		return nil
	}
	return r.Handler.OnAttach(l)
}

// TestTrySendWhileSendWaits: a TrySend on the reader goroutine while a
// Send on the same link waits for credit must not block: the credit that
// Send waits for can only be read by that same goroutine.
func TestTrySendWhileSendWaits(t *testing.T) {
	r := &racer{Handler: demo.NewHandler(), sent: make(chan error, 1), tried: make(chan error, 1)}
	srv := startRaw(t, func(c *amqp.Config) { c.Handler = r })
	c := rawDial(t, srv.Addr)
	c.write(frames.ProtoAMQP[:])
	c.readHeader()
	c.send(0, &frames.Open{ContainerID: "racer", MaxFrameSize: 65536}, nil)
	expect[*frames.Open](c)
	c.send(0, &frames.Begin{IncomingWindow: 100, OutgoingWindow: 100, HandleMax: 10}, nil)
	expect[*frames.Begin](c)
	c.send(0, &frames.Attach{Name: "w", Handle: 0, Role: frames.RoleReceiver, Source: &frames.Source{Address: "wait"}, Target: &frames.Target{}}, nil)
	expect[*frames.Attach](c)
	c.send(0, &frames.Attach{Name: "t", Handle: 1, Role: frames.RoleSender, Source: &frames.Source{}, Target: &frames.Target{Address: "trigger"}}, nil)
	expect[*frames.Attach](c)
	expect[*frames.Flow](c)
	// The waiting Send started in OnAttach, two round trips ago.
	msg, _ := (&frames.Message{Data: [][]byte{[]byte("go")}}).AppendAMQP(nil)
	c.send(0, &frames.Transfer{Handle: 1, DeliveryID: 0, HasDeliveryID: true, DeliveryTag: []byte{1}, Settled: true, HasSettled: true}, msg)
	select {
	case err := <-r.tried:
		if !errors.Is(err, amqp.ErrNoCredit) {
			t.Fatalf("TrySend: %v, want ErrNoCredit at once", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("TrySend on the reader goroutine blocked behind a waiting Send")
	}
	// Credit now reaches the waiting Send through the unblocked reader.
	c.send(0, &frames.Flow{Handle: 0, HasHandle: true, LinkCredit: 5, HasLinkCredit: true, DeliveryCount: 0, HasDeliveryCount: true,
		NextIncomingID: 0, HasNextIncomingID: true, IncomingWindow: 100, OutgoingWindow: 100}, nil)
	if tr := expect[*frames.Transfer](c); tr.Handle != 0 {
		t.Fatalf("transfer on handle %d", tr.Handle)
	}
	if err := <-r.sent; err != nil {
		t.Fatalf("waiting Send: %v", err)
	}
}
