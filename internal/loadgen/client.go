package loadgen

import (
	"context"
	"errors"
	"fmt"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// Client implementations the scenarios can drive load with.
const (
	// ClientGoAMQP is github.com/Azure/go-amqp, the AMQP library of the
	// Azure SDKs for Go, over a connection that coalesces its per-frame
	// socket writes.
	ClientGoAMQP = "go-amqp"
	// ClientRaw is this package's own minimal pipelined AMQP 1.0 client
	// (built on amqphub/amqp/frames): it batches transfers and reads
	// dispositions in ranges, so the server, not the generator, sets the
	// pace.
	ClientRaw = "raw"
)

// ackFunc receives the outcome of one message: accepted, or err (a
// rejection, a release, or the loss of the link).
type ackFunc func(t0 time.Time, err error)

// msgSender sends messages on one device connection.
type msgSender interface {
	// send sends one message with payload body (which the sender copies
	// before returning). It blocks while the server grants no credit.
	// Exactly one ackFunc call follows each successful send.
	send(ctx context.Context, body []byte, t0 time.Time) error
	// close ends the link and the connection; outstanding messages are
	// reported to the ackFunc as failed.
	close()
}

// errRejected wraps a rejection's error condition.
type errRejected struct{ desc string }

func (e *errRejected) Error() string { return "rejected: " + e.desc }

// senderOptions are what every client implementation needs.
type senderOptions struct {
	target   *Target
	id       Identity
	inFlight int
	durable  bool
	onAck    ackFunc
}

// openSender connects one device with the chosen client.
func openSender(ctx context.Context, client string, o senderOptions) (msgSender, error) {
	switch client {
	case ClientGoAMQP, "":
		return openGoSender(ctx, o)
	case ClientRaw:
		return openRawSender(ctx, o)
	}
	return nil, fmt.Errorf("loadgen: unknown client %q (want %s or %s)", client, ClientGoAMQP, ClientRaw)
}

// goSender is a go-amqp connection with one sending link. A waiter
// goroutine collects the receipts in order: the server settles one
// link's deliveries in order, so waiting in order costs nothing.
type goSender struct {
	conn    *goamqp.Conn
	snd     *goamqp.Sender
	o       senderOptions
	pending chan goPending
	ctx     context.Context
	cancel  context.CancelFunc
	waited  chan struct{}
}

type goPending struct {
	r  goamqp.SendReceipt
	t0 time.Time
}

func openGoSender(ctx context.Context, o senderOptions) (*goSender, error) {
	conn, err := o.target.dialAMQP(ctx, o.id.Login, true)
	if err != nil {
		return nil, err
	}
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("loadgen: begin session: %w", err)
	}
	snd, err := sess.NewSender(ctx, o.id.EventsAddress, &goamqp.SenderOptions{
		SettlementMode: goamqp.SenderSettleModeUnsettled.Ptr(),
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("loadgen: attach sender to %s: %w", o.id.EventsAddress, err)
	}
	s := &goSender{
		conn:    conn,
		snd:     snd,
		o:       o,
		pending: make(chan goPending, max(o.inFlight, 1)),
		waited:  make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.wait()
	return s, nil
}

func (s *goSender) send(ctx context.Context, body []byte, t0 time.Time) error {
	msg := &goamqp.Message{Data: [][]byte{body}}
	if s.o.durable {
		msg.Header = &goamqp.MessageHeader{Durable: true}
	}
	r, err := s.snd.SendWithReceipt(ctx, msg, nil)
	if err != nil {
		return err
	}
	s.pending <- goPending{r: r, t0: t0}
	return nil
}

func (s *goSender) wait() {
	defer close(s.waited)
	for p := range s.pending {
		st, err := p.r.Wait(s.ctx)
		if err == nil {
			err = stateErr(st)
		}
		s.o.onAck(p.t0, err)
	}
}

// stateErr maps a delivery outcome to nil (accepted) or an error.
func stateErr(st goamqp.DeliveryState) error {
	switch st := st.(type) {
	case *goamqp.StateAccepted:
		return nil
	case *goamqp.StateRejected:
		if st.Error != nil {
			return &errRejected{desc: string(st.Error.Condition) + ": " + st.Error.Description}
		}
		return &errRejected{desc: "no error given"}
	case *goamqp.StateReleased:
		return errors.New("released")
	case *goamqp.StateModified:
		return errors.New("modified")
	}
	return fmt.Errorf("unexpected outcome %T", st)
}

func (s *goSender) close() {
	close(s.pending)
	// Receipts still pending when the run gives up fail at once.
	s.cancel()
	<-s.waited
	s.conn.Close()
}
