package amqp_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/amqp/frames"
)

// goneHandler accepts every link, settles every message and registers
// OnGone hooks: two at attach, one more after the link is gone.
type goneHandler struct {
	mu    sync.Mutex
	links []*amqp.Link
	runs  map[*amqp.Link]*atomic.Int32
}

func (h *goneHandler) OnOpen(*amqp.Conn) *amqp.Error { return nil }
func (h *goneHandler) OnClose(*amqp.Conn, error)     {}
func (h *goneHandler) OnAttach(l *amqp.Link) *amqp.Error {
	n := &atomic.Int32{}
	h.mu.Lock()
	h.links = append(h.links, l)
	h.runs[l] = n
	h.mu.Unlock()
	l.OnMessage(func(d *amqp.Delivery) { d.Accept() })
	l.OnGone(func() { n.Add(1) })
	l.OnGone(func() { n.Add(10) })
	return nil
}

func TestLinkOnGone(t *testing.T) {
	h := &goneHandler{runs: map[*amqp.Link]*atomic.Int32{}}
	srv := amqptest.Start(t, amqp.Config{Handler: h, AllowNoSASL: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, srv.URL, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		detach func(*goamqp.Sender)
	}{
		{"peer detaches", func(snd *goamqp.Sender) { snd.Close(ctx) }},
		{"connection ends", func(*goamqp.Sender) { c.Close() }},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snd, err := s.NewSender(ctx, fmt.Sprintf("q%d", i), nil)
			if err != nil {
				t.Fatal(err)
			}
			h.mu.Lock()
			l, n := h.links[i], h.runs[h.links[i]]
			h.mu.Unlock()
			if got := n.Load(); got != 0 {
				t.Fatalf("hooks ran %d before the link went", got)
			}
			tc.detach(snd)
			amqptest.Eventually(t, 5*time.Second, func() bool { return n.Load() == 11 }, "both hooks run once")
			// Registered after the link is gone: runs at once.
			l.OnGone(func() { n.Add(100) })
			if got := n.Load(); got != 111 {
				t.Fatalf("hook sum %d, want 111 (each hook exactly once)", got)
			}
		})
	}
}

// TestLargeOutputAndInput moves messages larger than the output chunk and
// the pooled input buffer through one connection in both directions, many
// in flight, and checks every byte: frames spanning chunks and buffer
// boundaries must arrive intact and in order.
func TestLargeOutputAndInput(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx, "queue/big", nil)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{1, 511, 512, 513, 32 << 10, 64<<10 - 100, 64 << 10, 100 << 10, 300 << 10}
	body := func(i, n int) []byte {
		b := bytes.Repeat([]byte{byte(i)}, n)
		if n > 0 {
			b[n-1] = byte(i + 1)
		}
		return b
	}
	var receipts []goamqp.SendReceipt
	for i, n := range sizes {
		r, err := snd.SendWithReceipt(ctx, goamqp.NewMessage(body(i, n)), nil)
		if err != nil {
			t.Fatalf("send %d bytes: %v", n, err)
		}
		receipts = append(receipts, r)
	}
	for i, r := range receipts {
		if st, err := r.Wait(ctx); err != nil {
			t.Fatalf("message %d: %v", i, err)
		} else if _, ok := st.(*goamqp.StateAccepted); !ok {
			t.Fatalf("message %d: outcome %T", i, st)
		}
	}
	rcv, err := s.NewReceiver(ctx, "queue/big", &goamqp.ReceiverOptions{Credit: int32(len(sizes))})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range sizes {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if got := m.GetData(); !bytes.Equal(got, body(i, n)) {
			t.Fatalf("message %d: got %d bytes, want %d bytes of %d", i, len(got), n, i)
		}
		rcv.AcceptMessage(ctx, m)
	}
}

// TestIdleConnectionCost: an open, idle connection with a session and a
// link costs the engine one goroutine (its reader; output is written by a
// flusher only while some is queued) and a few KiB of heap (no 4 KiB
// reader buffer, no output buffer). The heap figure includes the test's
// own client end (a socket and a 4 KiB bufio reader), so the engine's
// share is smaller still; the bounds leave room for parallel tests.
func TestIdleConnectionCost(t *testing.T) {
	srv := startRaw(t, nil)
	const n = 200
	g0, h0 := runtime.NumGoroutine(), heapInuse()
	clients := make([]*rawClient, n)
	for i := range clients {
		c := rawDial(t, srv.Addr)
		c.open()
		c.send(0, &frames.Attach{Name: fmt.Sprint("l", i), Handle: 0, Role: frames.RoleSender,
			Source: &frames.Source{}, Target: &frames.Target{Address: "queue/idle"}, HasInitialDelivery: true}, nil)
		expect[*frames.Attach](c)
		expect[*frames.Flow](c)
		clients[i] = c
	}
	// Let the flushers of the last replies finish.
	amqptest.Eventually(t, 5*time.Second, func() bool {
		return runtime.NumGoroutine()-g0 <= n+n/10
	}, "idle connections hold at most one goroutine each")
	perConn := float64(heapInuse()-h0) / n
	t.Logf("%.2f goroutines and %.0f bytes of heap per idle connection",
		float64(runtime.NumGoroutine()-g0)/n, perConn)
	if perConn > 16<<10 {
		t.Fatalf("%.0f bytes of heap per idle connection, want under 16 KiB", perConn)
	}
}

// TestHugeIncomingWindow: a peer may advertise any session window up to
// 2^32-1; the server must still send to it (a window taken for negative
// would stall every delivery).
func TestHugeIncomingWindow(t *testing.T) {
	for _, window := range []uint32{1 << 31, 0xFFFFFFFF} {
		t.Run(fmt.Sprint(window), func(t *testing.T) {
			srv := startRaw(t, nil)
			c := rawDial(t, srv.Addr)
			c.write(frames.ProtoAMQP[:])
			c.readHeader()
			c.send(0, &frames.Open{ContainerID: "raw", MaxFrameSize: 65536, ChannelMax: 10}, nil)
			expect[*frames.Open](c)
			c.send(0, &frames.Begin{IncomingWindow: window, OutgoingWindow: 1000, HandleMax: 10}, nil)
			expect[*frames.Begin](c)
			q := fmt.Sprintf("queue/window-%d", window)
			c.send(0, &frames.Attach{Name: "s", Handle: 0, Role: frames.RoleSender, Source: &frames.Source{},
				Target: &frames.Target{Address: q}, HasInitialDelivery: true}, nil)
			expect[*frames.Attach](c)
			expect[*frames.Flow](c)
			msg, _ := (&frames.Message{Data: [][]byte{[]byte("hello")}}).AppendAMQP(nil)
			c.send(0, &frames.Transfer{Handle: 0, DeliveryID: 0, HasDeliveryID: true, DeliveryTag: []byte{1},
				HasMessageFormat: true, Settled: true, HasSettled: true}, msg)
			c.send(0, &frames.Attach{Name: "r", Handle: 1, Role: frames.RoleReceiver, Source: &frames.Source{Address: q},
				Target: &frames.Target{}}, nil)
			expect[*frames.Attach](c)
			c.send(0, &frames.Flow{NextIncomingID: 0, HasNextIncomingID: true, IncomingWindow: window, NextOutgoingID: 1,
				OutgoingWindow: 1000, Handle: 1, HasHandle: true, DeliveryCount: 0, HasDeliveryCount: true,
				LinkCredit: 10, HasLinkCredit: true}, nil)
			tr := expect[*frames.Transfer](c)
			if !bytes.Contains(tr.Payload, []byte("hello")) {
				t.Fatalf("transfer payload %q", tr.Payload)
			}
		})
	}
}
