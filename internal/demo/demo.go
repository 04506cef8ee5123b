// Package demo is a small AMQP application on the engine, used to prove the
// engine against independent clients before the hub exists, and by the
// interop suites. Its addresses:
//
//	sink          accepts every message
//	queue/<name>  an in-memory FIFO shared by all connections
//	source/<n>    sends n messages "message <i>" with application property index=i
//	refuse        refused with amqp:unauthorized-access
//	redirect      detached with amqp:link:redirect to queue/redirected
//	reject        rejects every message with amqp:not-allowed
//
// Anything else is refused with amqp:not-found. SASL PLAIN accepts only
// guest/guest; ANONYMOUS is accepted; the plain header without SASL too.
package demo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"amqphub/amqp"
	"amqphub/amqp/frames"
)

// Handler implements amqp.Handler for the demo addresses.
type Handler struct {
	mu     sync.Mutex
	queues map[string]*queue
}

// NewHandler returns a demo handler with empty queues.
func NewHandler() *Handler { return &Handler{queues: make(map[string]*queue)} }

// Authenticator accepts PLAIN guest/guest and ANONYMOUS.
type Authenticator struct{}

// Mechanisms implements amqp.Authenticator.
func (Authenticator) Mechanisms() []string {
	return []string{amqp.MechPLAIN, amqp.MechANONYMOUS, amqp.MechMSSBCBS}
}

// Authenticate implements amqp.Authenticator.
func (Authenticator) Authenticate(req *amqp.SASLRequest) (any, error) {
	switch req.Mechanism {
	case amqp.MechPLAIN:
		if req.Username == "guest" && req.Password == "guest" {
			return req.Username, nil
		}
		return nil, errors.New("bad user name or password")
	case amqp.MechANONYMOUS, amqp.MechMSSBCBS:
		return nil, nil
	}
	return nil, fmt.Errorf("mechanism %s not supported", req.Mechanism)
}

// OnOpen implements amqp.Handler.
func (h *Handler) OnOpen(*amqp.Conn) *amqp.Error { return nil }

// OnClose implements amqp.Handler.
func (h *Handler) OnClose(*amqp.Conn, error) {}

// OnAttach implements amqp.Handler.
func (h *Handler) OnAttach(l *amqp.Link) *amqp.Error {
	addr := l.Address()
	l.SetMaxMessageSize(2 << 20)
	switch {
	case addr == "refuse":
		return amqp.NewError(amqp.ErrCondUnauthorizedAccess, "refused by test server")
	case addr == "redirect":
		return amqp.RedirectError("redirect.example", "redirect.example", 5671, "queue/redirected")
	case addr == "sink" && !l.IsSender():
		l.OnMessage(func(d *amqp.Delivery) { d.Accept() })
		return nil
	case addr == "reject" && !l.IsSender():
		l.OnMessage(func(d *amqp.Delivery) {
			d.Reject(amqp.NewError(amqp.ErrCondNotAllowed, "rejected by test server"))
		})
		return nil
	case strings.HasPrefix(addr, "queue/"):
		q := h.queue(addr)
		if l.IsSender() {
			go q.feed(l)
		} else {
			l.OnMessage(func(d *amqp.Delivery) {
				q.push(d.Payload)
				d.Accept()
			})
		}
		return nil
	case strings.HasPrefix(addr, "source/") && l.IsSender():
		n, err := strconv.Atoi(strings.TrimPrefix(addr, "source/"))
		if err != nil || n < 0 {
			return amqp.NewError(amqp.ErrCondNotFound, "source/<n> needs a count")
		}
		go source(l, n)
		return nil
	}
	return amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("no node at address %q", addr))
}

func (h *Handler) queue(name string) *queue {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queues[name]
	if q == nil {
		q = &queue{wake: make(chan struct{})}
		h.queues[name] = q
	}
	return q
}

func source(l *amqp.Link, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-l.Done(); cancel() }()
	for i := 0; i < n; i++ {
		m := &frames.Message{
			ApplicationProperties: map[string]any{"index": int32(i)},
			Value:                 fmt.Sprintf("message %d", i),
			HasValue:              true,
		}
		b, err := m.AppendAMQP(nil)
		if err != nil {
			return
		}
		if err := l.Send(ctx, &amqp.Outgoing{Payload: b}); err != nil {
			return
		}
	}
}

// queue is an in-memory FIFO; released messages go back to the front.
type queue struct {
	mu    sync.Mutex
	items [][]byte
	wake  chan struct{} // closed and replaced on every push
}

func (q *queue) push(b []byte) {
	q.mu.Lock()
	q.items = append(q.items, b)
	close(q.wake)
	q.wake = make(chan struct{})
	q.mu.Unlock()
}

func (q *queue) pushFront(b []byte) {
	q.mu.Lock()
	q.items = append([][]byte{b}, q.items...)
	close(q.wake)
	q.wake = make(chan struct{})
	q.mu.Unlock()
}

// pop waits for a message or for done.
func (q *queue) pop(done <-chan struct{}) ([]byte, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			b := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return b, true
		}
		w := q.wake
		q.mu.Unlock()
		select {
		case <-w:
		case <-done:
			return nil, false
		}
	}
}

// feed delivers queued messages to a receiving peer within its credit.
// A message is taken off the queue only once credit for it exists, so a
// receiver without credit never strands messages.
func (q *queue) feed(l *amqp.Link) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-l.Done(); cancel() }()
	for {
		if err := l.WaitCredit(ctx); err != nil {
			return
		}
		b, ok := q.pop(l.Done())
		if !ok {
			return
		}
		err := l.Send(ctx, &amqp.Outgoing{Payload: b, OnSettled: func(st frames.DeliveryState, err error) {
			switch st.(type) {
			case frames.Accepted, frames.Rejected:
				return
			}
			// Released, modified, or lost with the link: back to the front.
			q.pushFront(b)
		}})
		if err != nil {
			q.pushFront(b)
			return
		}
	}
}
