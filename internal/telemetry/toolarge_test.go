package telemetry_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/telemetry"
)

// rawConn speaks AMQP frame by frame, because go-amqp refuses to send a
// message larger than the link's max-message-size itself and so cannot
// show that the hub enforces it.
type rawConn struct {
	t   *testing.T
	nc  net.Conn
	br  *bufio.Reader
	dec frames.Decoder
}

func rawDial(t *testing.T, addr, user, token string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
	c.write(frames.ProtoSASL[:])
	if h := c.header(); h != frames.ProtoSASL {
		t.Fatalf("server header %q", h[:])
	}
	rawExpect[*frames.SASLMechanisms](c)
	resp := append(append(append([]byte{0}, user...), 0), token...)
	c.send(frames.FrameSASL, 0, &frames.SASLInit{Mechanism: "PLAIN", InitialResponse: resp, Hostname: "localhost"}, nil)
	if o := rawExpect[*frames.SASLOutcome](c); o.Result != frames.SASLOK {
		t.Fatalf("SASL outcome %d", o.Result)
	}
	c.write(frames.ProtoAMQP[:])
	if h := c.header(); h != frames.ProtoAMQP {
		t.Fatalf("server header %q", h[:])
	}
	c.send(frames.FrameAMQP, 0, &frames.Open{ContainerID: "raw", MaxFrameSize: 65536, ChannelMax: 10}, nil)
	rawExpect[*frames.Open](c)
	c.send(frames.FrameAMQP, 0, &frames.Begin{IncomingWindow: 1000, OutgoingWindow: 1000}, nil)
	rawExpect[*frames.Begin](c)
	return c
}

func (c *rawConn) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawConn) send(typ byte, ch uint16, p frames.Performative, payload []byte) {
	c.t.Helper()
	b, err := frames.AppendFrame(nil, typ, ch, p, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(b)
}

func (c *rawConn) header() [8]byte {
	c.t.Helper()
	var h [8]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("read protocol header: %v", err)
	}
	return h
}

func (c *rawConn) next() (frames.Performative, error) {
	for {
		var h [8]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, err
		}
		body := make([]byte, binary.BigEndian.Uint32(h[:])-8)
		if _, err := io.ReadFull(c.br, body); err != nil {
			return nil, err
		}
		if body = body[int(h[4])*4-8:]; len(body) > 0 {
			return c.dec.Decode(body)
		}
	}
}

func rawExpect[T frames.Performative](c *rawConn) T {
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

func TestTooLargeMessage(t *testing.T) {
	s := startHub(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Another device keeps sending throughout.
	other := deviceSender(t, s, "d2", "", nil)
	var sent atomic.Int64
	stop := make(chan struct{})
	otherErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				otherErr <- nil
				return
			default:
			}
			if err := other.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("small")}}, nil); err != nil {
				otherErr <- err
				return
			}
			sent.Add(1)
		}
	}()

	user, token := deviceLogin(t, s, "d1", "")
	c := rawDial(t, s.AMQPAddr, user, token)
	c.send(frames.FrameAMQP, 0, &frames.Attach{
		Name: "big", Handle: 0, Role: frames.RoleSender,
		Source: &frames.Source{}, Target: &frames.Target{Address: "/devices/d1/messages/events"},
		HasInitialDelivery: true,
	}, nil)
	a := rawExpect[*frames.Attach](c)
	if a.MaxMessageSize != telemetry.DefaultMaxMessageSize {
		t.Errorf("attach max-message-size %d, want %d", a.MaxMessageSize, telemetry.DefaultMaxMessageSize)
	}
	rawExpect[*frames.Flow](c)
	msg, err := (&frames.Message{Data: [][]byte{make([]byte, 257<<10)}}).AppendAMQP(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := sent.Load()
	const chunk = 60000
	for off := 0; off < len(msg); off += chunk {
		end := min(off+chunk, len(msg))
		tr := &frames.Transfer{Handle: 0, More: end < len(msg)}
		if off == 0 {
			tr.DeliveryID, tr.HasDeliveryID, tr.DeliveryTag, tr.HasMessageFormat = 0, true, []byte{1}, true
		}
		c.send(frames.FrameAMQP, 0, tr, msg[off:end])
	}
	d := rawExpect[*frames.Detach](c)
	if d.Error == nil || d.Error.Condition != amqp.ErrCondMessageSizeExceeded {
		t.Fatalf("detach error %v, want %s", d.Error, amqp.ErrCondMessageSizeExceeded)
	}

	// The same device on a new link, and the other device, carry on; a
	// message just under the limit is stored.
	snd := deviceSender(t, s, "d1", "", nil)
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{make([]byte, 256<<10-64)}}, nil); err != nil {
		t.Fatalf("message under the limit: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); sent.Load() < before+10; {
		if time.Now().After(deadline) {
			t.Fatalf("the other device sent only %d messages after the refusal", sent.Load()-before)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	if err := <-otherErr; err != nil {
		t.Fatalf("other device: %v", err)
	}
	recs := readAll(t, s.Log, telemetry.Partition("d1", testPartitions))
	for _, r := range recs {
		if m := decodeRecord(t, r); m.Annotations[encoding.Symbol(telemetry.AnnDeviceID)] == "d1" && len(m.Data[0]) > 256<<10 {
			t.Errorf("the oversized message was stored")
		}
	}
	if n := len(readAll(t, s.Log, telemetry.Partition("d2", testPartitions))); int64(n) < sent.Load() {
		t.Errorf("d2: %d records for %d acknowledged messages", n, sent.Load())
	}
}
