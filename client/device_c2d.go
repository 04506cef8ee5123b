package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// AckMode is the feedback a service asks for when it sends a
// cloud-to-device message (the iothub-ack property).
type AckMode string

// Ack modes.
const (
	AckNone     AckMode = "none"
	AckPositive AckMode = "positive" // feedback when the device completes it
	AckNegative AckMode = "negative" // feedback when it expires, is rejected or delivered too often
	AckFull     AckMode = "full"     // both
)

// ParseAckMode parses none, positive, negative or full ("" is none).
func ParseAckMode(s string) (AckMode, error) {
	switch a := AckMode(strings.ToLower(s)); a {
	case "":
		return AckNone, nil
	case AckNone, AckPositive, AckNegative, AckFull:
		return a, nil
	}
	return "", fmt.Errorf("ack mode %q: want none, positive, negative or full", s)
}

// C2DMessage is a cloud-to-device message received by a device. Settle it
// with Complete, Abandon or Reject; until then the hub keeps it locked
// (one minute on IoT Hub) and will deliver it again afterwards.
type C2DMessage struct {
	Message
	// To is the address the service sent it to.
	To string
	// Ack is the feedback the service asked for.
	Ack AckMode
	// EnqueuedTime is when the hub accepted it.
	EnqueuedTime time.Time
	// DeliveryCount is how many times it was delivered before.
	DeliveryCount int
	// SequenceNumber is the hub's sequence number in the device queue.
	SequenceNumber int64
	// LockToken identifies the delivery.
	LockToken string

	lc  *liveConn
	rcv *goamqp.Receiver
	raw *goamqp.Message

	mu      sync.Mutex
	settled bool
}

func newC2DMessage(lc *liveConn, rcv *goamqp.Receiver, m *goamqp.Message) *C2DMessage {
	c := &C2DMessage{lc: lc, rcv: rcv, raw: m}
	c.Message.fromAMQP(m)
	if ack, ok := c.Message.Properties["iothub-ack"]; ok {
		c.Ack = AckMode(strings.ToLower(ack))
		delete(c.Message.Properties, "iothub-ack")
	}
	if m.Properties != nil && m.Properties.To != nil {
		c.To = *m.Properties.To
	}
	c.EnqueuedTime = annotationTime(m, "iothub-enqueuedtime")
	if n, ok := annotationInt(m, "iothub-deliverycount"); ok {
		c.DeliveryCount = int(n)
	}
	c.SequenceNumber, _ = annotationInt(m, "x-opt-sequence-number")
	c.LockToken = annotationString(m, "x-opt-lock-token")
	if c.LockToken == "" && len(m.DeliveryTag) == 16 {
		c.LockToken = guidString(m.DeliveryTag)
	}
	return c
}

// guidString formats a 16-byte delivery tag as .NET formats a Guid made
// from those bytes (the first three groups little-endian), which is how
// IoT Hub SDKs derive lock tokens.
func guidString(b []byte) string {
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x",
		b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8:10], b[10:16])
}

// Complete tells the hub the device handled the message: it is removed
// and positive feedback is generated if the service asked for it.
func (c *C2DMessage) Complete(ctx context.Context) error {
	return c.settle(ctx, "complete", func() error { return c.rcv.AcceptMessage(ctx, c.raw) })
}

// Abandon returns the message to the queue for another delivery (up to
// the hub's max delivery count).
func (c *C2DMessage) Abandon(ctx context.Context) error {
	return c.settle(ctx, "abandon", func() error { return c.rcv.ReleaseMessage(ctx, c.raw) })
}

// Reject dead-letters the message; negative feedback is generated if the
// service asked for it.
func (c *C2DMessage) Reject(ctx context.Context) error {
	return c.settle(ctx, "reject", func() error { return c.rcv.RejectMessage(ctx, c.raw, nil) })
}

func (c *C2DMessage) settle(ctx context.Context, op string, f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.settled {
		return fmt.Errorf("%s C2D message: already settled", op)
	}
	if !c.lc.alive() {
		return fmt.Errorf("%s C2D message: %w: the connection that delivered it is gone and the hub will deliver it again", op, ErrLockLost)
	}
	if err := f(); err != nil {
		var le *goamqp.LinkError
		if errors.As(err, &le) || !c.lc.alive() {
			return fmt.Errorf("%s C2D message: %w: %w", op, ErrLockLost, amqpErr("disposition", err))
		}
		return amqpErr(op+" C2D message", err)
	}
	c.settled = true
	return nil
}

// c2dCredit is how many messages the hub may send before the device
// settles one: small, since each waits locked until settled.
const c2dCredit = 1

func (d *DeviceClient) c2dReceiver(ctx context.Context, lc *liveConn) (*goamqp.Receiver, error) {
	addr := d.base + "/messages/devicebound"
	return cachedLink(ctx, lc, "c2d", func(ctx context.Context, s *goamqp.Session) (*goamqp.Receiver, error) {
		r, err := s.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Credit: c2dCredit, Properties: linkProps("")})
		if err != nil {
			return nil, amqpErr("attach "+addr, err)
		}
		return r, nil
	})
}

// ReceiveC2D waits for the next cloud-to-device message. It cannot be used
// while a handler is registered with OnC2DMessage.
func (d *DeviceClient) ReceiveC2D(ctx context.Context) (*C2DMessage, error) {
	if _, _, h := d.features(); h {
		return nil, errors.New("receive C2D: a handler is registered with OnC2DMessage")
	}
	var out *C2DMessage
	err := d.do(ctx, "receive C2D", func(ctx context.Context, lc *liveConn) error {
		rcv, err := d.c2dReceiver(ctx, lc)
		if err != nil {
			return err
		}
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lc.note("c2d", err)
			return amqpErr("receive C2D", err)
		}
		out = newC2DMessage(lc, rcv, m)
		return nil
	})
	return out, err
}

// OnC2DMessage registers h to be called with each cloud-to-device
// message, one at a time, on a goroutine of the client; h settles the
// message (a message h leaves unsettled is abandoned). The receiver link
// is restored after each reconnect. A nil h stops delivery.
func (d *DeviceClient) OnC2DMessage(h func(*C2DMessage)) error {
	d.mu.Lock()
	d.c2dHandler = h
	d.mu.Unlock()
	if h == nil {
		if lc := d.conn.current(); lc != nil {
			lc.dropLink("c2d")
		}
		return nil
	}
	return d.kick()
}

// c2dLoop starts (once per connection) the goroutine that feeds the
// handler.
func (d *DeviceClient) c2dLoop(ctx context.Context, lc *liveConn) (*goamqp.Receiver, error) {
	lc.mu.Lock()
	_, running := lc.links["c2d-loop"]
	lc.mu.Unlock()
	rcv, err := d.c2dReceiver(ctx, lc)
	if err != nil || running {
		return rcv, err
	}
	lc.mu.Lock()
	lc.links["c2d-loop"] = nopCloser{}
	lc.mu.Unlock()
	if !lc.c.spawn(func() {
		defer func() {
			lc.mu.Lock()
			delete(lc.links, "c2d-loop")
			lc.mu.Unlock()
			select {
			case d.changed <- struct{}{}:
			default:
			}
		}()
		for {
			m, err := rcv.Receive(lc.ctx, nil)
			if err != nil {
				lc.note("c2d", err)
				return
			}
			msg := newC2DMessage(lc, rcv, m)
			d.mu.Lock()
			h := d.c2dHandler
			d.mu.Unlock()
			if h == nil {
				_ = msg.Abandon(lc.ctx)
				lc.dropLink("c2d")
				return
			}
			h(msg)
			msg.mu.Lock()
			settled := msg.settled
			msg.mu.Unlock()
			if !settled {
				_ = msg.Abandon(lc.ctx)
			}
		}
	}) {
		return nil, ErrClosed
	}
	return rcv, nil
}

// nopCloser marks state kept in a connection's link map.
type nopCloser struct{}

func (nopCloser) Close(context.Context) error { return nil }
