package amqp_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/amqp/frames"
	"amqphub/internal/demo"
)

// BenchmarkEngineSink measures the engine's receive path alone: a minimal
// client on loopback pipelines 256-byte transfers as fast as credit
// allows to the demo sink, which accepts each one; the engine decodes,
// delivers, settles and coalesces the dispositions. The client only
// copies a pre-encoded frame and counts dispositions, so ns/op and
// allocs/op are essentially the engine's (plus the loopback syscalls).
//
//	go test -run '^$' -bench EngineSink -benchmem ./amqp/
func BenchmarkEngineSink(b *testing.B) {
	srv := amqptest.Start(b, amqp.Config{Handler: demo.NewHandler(), AllowNoSASL: true})
	nc, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReaderSize(nc, 64<<10)
	var dec frames.Decoder
	next := func() frames.Performative {
		for {
			var h [8]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				b.Fatal(err)
			}
			body := make([]byte, binary.BigEndian.Uint32(h[:])-8)
			if _, err := io.ReadFull(br, body); err != nil {
				b.Fatal(err)
			}
			if body = body[int(h[4])*4-8:]; len(body) > 0 {
				p, err := dec.Decode(body)
				if err != nil {
					b.Fatal(err)
				}
				return p
			}
		}
	}
	write := func(p frames.Performative, payload []byte) {
		f, err := frames.AppendFrame(nil, frames.FrameAMQP, 0, p, payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := nc.Write(f); err != nil {
			b.Fatal(err)
		}
	}
	nc.Write(frames.ProtoAMQP[:])
	var hdr [8]byte
	io.ReadFull(br, hdr[:])
	write(&frames.Open{ContainerID: "bench", MaxFrameSize: 65536, ChannelMax: 1}, nil)
	next()
	write(&frames.Begin{IncomingWindow: 1 << 30, OutgoingWindow: 1 << 30, HandleMax: 1}, nil)
	next()
	write(&frames.Attach{Name: "s", Role: frames.RoleSender, SenderSettleMode: frames.SenderSettleUnsettled,
		Source: &frames.Source{}, Target: &frames.Target{Address: "sink"}, HasInitialDelivery: true}, nil)
	// credit is the delivery count up to which the client may send.
	var credit atomic.Int64
	for {
		if f, ok := next().(*frames.Flow); ok && f.HasLinkCredit {
			credit.Store(int64(f.DeliveryCount + f.LinkCredit))
			break
		}
	}
	more := make(chan struct{}, 1)
	msg, _ := (&frames.Message{Data: [][]byte{make([]byte, 256)}}).AppendAMQP(nil)
	// The template transfer; each copy gets its delivery id patched in.
	tmpl, _ := frames.AppendFrame(nil, frames.FrameAMQP, 0, &frames.Transfer{DeliveryID: 0x7fffffff, HasDeliveryID: true,
		DeliveryTag: []byte{1, 2, 3, 4, 5, 6, 7, 8}, HasMessageFormat: true, HasSettled: true}, msg)
	idAt := -1
	for i := 0; i+5 <= len(tmpl); i++ {
		if tmpl[i] == 0x70 && binary.BigEndian.Uint32(tmpl[i+1:]) == 0x7fffffff {
			idAt = i + 1
			break
		}
	}
	if idAt < 0 {
		b.Fatal("delivery id not found in the template")
	}
	done := make(chan struct{})
	var settled atomic.Int64
	go func() { // dispositions and credit
		defer close(done)
		for settled.Load() < int64(b.N) {
			switch p := next().(type) {
			case *frames.Disposition:
				last := p.First
				if p.HasLast {
					last = p.Last
				}
				settled.Add(int64(last-p.First) + 1)
			case *frames.Flow:
				if p.HasLinkCredit {
					credit.Store(int64(p.DeliveryCount + p.LinkCredit))
					select {
					case more <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	b.SetBytes(256)
	b.ReportAllocs()
	b.ResetTimer()
	var out []byte
	limit := func() int64 { return credit.Load() }
	for id := 0; id < b.N; {
		// Send what the credit allows, in one write.
		out = out[:0]
		for ; id < b.N && int64(id) < limit() && len(out) < 64<<10; id++ {
			start := len(out)
			out = append(out, tmpl...)
			binary.BigEndian.PutUint32(out[start+idAt:], uint32(id))
		}
		if len(out) == 0 {
			<-more // out of credit until the engine grants more
			continue
		}
		if _, err := nc.Write(out); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

// sourceHandler sends n pre-settled messages on every link where the
// server sends, from a goroutine of its own (as the Event Hubs reader
// does).
type sourceHandler struct {
	n   int
	out amqp.Outgoing
}

func (h *sourceHandler) OnOpen(*amqp.Conn) *amqp.Error { return nil }
func (h *sourceHandler) OnClose(*amqp.Conn, error)     {}
func (h *sourceHandler) OnAttach(l *amqp.Link) *amqp.Error {
	if l.IsSender() {
		go func() {
			for i := 0; i < h.n; i++ {
				if err := l.Send(context.Background(), &h.out); err != nil {
					return
				}
			}
		}()
	}
	return nil
}

// BenchmarkEngineSource measures the engine's send path alone: a link
// sends 256-byte pre-settled messages as fast as credit allows (Link.Send,
// the output buffer, the flusher) to a minimal loopback client that only
// counts transfers and keeps granting credit.
//
//	go test -run '^$' -bench EngineSource -benchmem ./amqp/
func BenchmarkEngineSource(b *testing.B) {
	msg, _ := (&frames.Message{Data: [][]byte{make([]byte, 256)}}).AppendAMQP(nil)
	srv := amqptest.Start(b, amqp.Config{Handler: &sourceHandler{n: b.N, out: amqp.Outgoing{Payload: msg, Settled: true}}, AllowNoSASL: true})
	nc, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReaderSize(nc, 64<<10)
	var dec frames.Decoder
	var body []byte
	next := func() frames.Performative {
		for {
			var h [8]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				b.Fatal(err)
			}
			n := int(binary.BigEndian.Uint32(h[:]) - 8)
			if cap(body) < n {
				body = make([]byte, n)
			}
			body = body[:n]
			if _, err := io.ReadFull(br, body); err != nil {
				b.Fatal(err)
			}
			if f := body[int(h[4])*4-8:]; len(f) > 0 {
				p, err := dec.Decode(f)
				if err != nil {
					b.Fatal(err)
				}
				return p
			}
		}
	}
	write := func(p frames.Performative) {
		f, err := frames.AppendFrame(nil, frames.FrameAMQP, 0, p, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := nc.Write(f); err != nil {
			b.Fatal(err)
		}
	}
	nc.Write(frames.ProtoAMQP[:])
	var hdr [8]byte
	io.ReadFull(br, hdr[:])
	write(&frames.Open{ContainerID: "bench", MaxFrameSize: 65536, ChannelMax: 1})
	next()
	write(&frames.Begin{IncomingWindow: 1 << 30, OutgoingWindow: 1 << 30, HandleMax: 1})
	next()
	b.SetBytes(256)
	b.ReportAllocs()
	b.ResetTimer()
	write(&frames.Attach{Name: "r", Role: frames.RoleReceiver, SenderSettleMode: frames.SenderSettleSettled,
		Source: &frames.Source{Address: "source"}, Target: &frames.Target{}})
	const window = 5000
	write(&frames.Flow{IncomingWindow: 1 << 30, OutgoingWindow: 1 << 30, HasHandle: true, HasDeliveryCount: true, LinkCredit: window, HasLinkCredit: true})
	got := 0
	for got < b.N {
		if _, ok := next().(*frames.Transfer); !ok {
			continue
		}
		got++
		if got%(window/2) == 0 {
			write(&frames.Flow{NextIncomingID: uint32(got), HasNextIncomingID: true, IncomingWindow: 1 << 30,
				OutgoingWindow: 1 << 30, HasHandle: true, DeliveryCount: uint32(got), HasDeliveryCount: true,
				LinkCredit: window, HasLinkCredit: true})
		}
	}
}
