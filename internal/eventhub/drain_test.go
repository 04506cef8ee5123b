package eventhub_test

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/server"
)

// rawClient speaks AMQP frame by frame, for what go-amqp cannot send: a
// drain flow that keeps its credit (go-amqp's drain zeroes it).
type rawClient struct {
	t   testing.TB
	nc  net.Conn
	br  *bufio.Reader
	dec frames.Decoder
}

func rawDialOwner(t testing.TB, s *server.Server) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", s.AMQPAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	c.write(frames.ProtoSASL[:])
	c.header(frames.ProtoSASL)
	c.expectType(frames.FrameSASL)
	resp := []byte("\x00" + auth.PolicyIoTHubOwner + "@sas.root." + s.Options.HubName + "\x00" + ownerToken(t, s.Options.HostName))
	c.sendType(frames.FrameSASL, 0, &frames.SASLInit{Mechanism: "PLAIN", InitialResponse: resp}, nil)
	if o, ok := c.nextOfType(frames.FrameSASL).(*frames.SASLOutcome); !ok || o.Result != frames.SASLOK {
		t.Fatalf("SASL outcome %#v", o)
	}
	c.write(frames.ProtoAMQP[:])
	c.header(frames.ProtoAMQP)
	c.send(&frames.Open{ContainerID: "raw", MaxFrameSize: 65536, ChannelMax: 10}, nil)
	expectFrame[*frames.Open](c)
	c.send(&frames.Begin{NextOutgoingID: 0, IncomingWindow: 1 << 30, OutgoingWindow: 10000, HandleMax: 1 << 16}, nil)
	expectFrame[*frames.Begin](c)
	return c
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) header(want [8]byte) {
	c.t.Helper()
	var h [8]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil || h != want {
		c.t.Fatalf("protocol header %q, %v", h[:], err)
	}
}

func (c *rawClient) send(p frames.Performative, payload []byte) {
	c.sendType(frames.FrameAMQP, 0, p, payload)
}

func (c *rawClient) sendType(typ byte, ch uint16, p frames.Performative, payload []byte) {
	c.t.Helper()
	b, err := frames.AppendFrame(nil, typ, ch, p, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(b)
}

func (c *rawClient) expectType(typ byte) frames.Performative { return c.nextOfType(typ) }

// nextOfType returns the next non-empty frame, which must be of type typ.
// Decoded performatives are reused by the decoder: copy what you keep.
func (c *rawClient) nextOfType(typ byte) frames.Performative {
	c.t.Helper()
	for {
		var h [8]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			c.t.Fatalf("read frame: %v", err)
		}
		body := make([]byte, binary.BigEndian.Uint32(h[:])-8)
		if _, err := io.ReadFull(c.br, body); err != nil {
			c.t.Fatalf("read frame: %v", err)
		}
		body = body[int(h[4])*4-8:]
		if len(body) == 0 {
			continue
		}
		if h[5] != typ {
			c.t.Fatalf("frame type %d, want %d", h[5], typ)
		}
		p, err := c.dec.Decode(body)
		if err != nil {
			c.t.Fatalf("decode: %v", err)
		}
		return p
	}
}

func expectFrame[T frames.Performative](c *rawClient) T {
	c.t.Helper()
	p := c.nextOfType(frames.FrameAMQP)
	v, ok := p.(T)
	if !ok {
		var zero T
		if cl, ok := p.(*frames.Close); ok && cl.Error != nil {
			c.t.Fatalf("connection closed: %v", cl.Error)
		}
		c.t.Fatalf("got %#v, want %T", p, zero)
	}
	return v
}

// flowResult is what the hub's drain answer said.
type flowResult struct {
	transfers     int
	deliveryCount uint32
	credit        uint32
	drain         bool
}

// untilFlow counts transfers until the hub's next link flow.
func (c *rawClient) untilFlow() flowResult {
	c.t.Helper()
	var r flowResult
	for {
		switch p := c.nextOfType(frames.FrameAMQP).(type) {
		case *frames.Transfer:
			if !p.Settled {
				c.t.Fatal("event transfer not pre-settled")
			}
			r.transfers++
		case *frames.Flow:
			if !p.HasHandle {
				continue
			}
			r.deliveryCount, r.credit, r.drain = p.DeliveryCount, p.LinkCredit, p.Drain
			return r
		case *frames.Detach:
			c.t.Fatalf("link detached: %v", p.Error)
		}
	}
}

// TestDrainKeepingCredit: a drain flow that grants credit gets what the
// partition holds and then the rest of the credit back, also when the
// reader is parked at the tail.
func TestDrainKeepingCredit(t *testing.T) {
	s := server.StartTest(t, nil)
	seed(t, s.Log, 0, 3, 0)
	c := rawDialOwner(t, s)
	c.send(&frames.Attach{
		Name: "drainer", Handle: 0, Role: frames.RoleReceiver,
		Source: &frames.Source{Address: partitionAddr(s, "$Default", 0)},
		Target: &frames.Target{Address: "me"},
	}, nil)
	if a := expectFrame[*frames.Attach](c); a.Source == nil {
		t.Fatal("attach refused")
	}
	flow := func(count, credit uint32) {
		c.send(&frames.Flow{
			NextIncomingID: 0, HasNextIncomingID: true, IncomingWindow: 10000, OutgoingWindow: 10000,
			Handle: 0, HasHandle: true, DeliveryCount: count, HasDeliveryCount: true,
			LinkCredit: credit, HasLinkCredit: true, Drain: true,
		}, nil)
	}
	// Three events, ten credits: three transfers, then the other seven back.
	flow(0, 10)
	if got := c.untilFlow(); got != (flowResult{transfers: 3, deliveryCount: 10, credit: 0, drain: true}) {
		t.Fatalf("drain with events: %+v", got)
	}
	// At the tail: nothing to send, all credit back at once.
	flow(10, 5)
	if got := c.untilFlow(); got != (flowResult{transfers: 0, deliveryCount: 15, credit: 0, drain: true}) {
		t.Fatalf("drain at the tail: %+v", got)
	}
}
