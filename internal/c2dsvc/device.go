package c2dsvc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/telemetry"
	"amqphub/store/c2d"
)

// Message annotations the hub adds to each delivery to a device.
const (
	AnnEnqueuedTime   = "iothub-enqueuedtime"   // timestamp
	AnnDeliveryCount  = "iothub-deliverycount"  // ubyte
	AnnSequenceNumber = "x-opt-sequence-number" // ulong
	AnnLockToken      = "x-opt-lock-token"      // string
)

// deviceLink is one /devices/{id}[/modules/{mid}]/messages/devicebound link.
type deviceLink struct {
	svc        *Service
	l          *amqp.Link
	q          string
	gen        string // the device's generation id when the link attached
	presettled bool

	mu sync.Mutex
	// inflight holds the locks of messages sent and not yet settled.
	inflight map[c2d.LockToken]lostLock
}

// attachDevice serves a device's (or module's) devicebound address.
func (s *Service) attachDevice(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	if !l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotAllowed, "devices receive cloud-to-device messages on this address; attach a receiver")
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	gen, aerr := s.resolve(ctx, req.Route.DeviceID, req.Route.ModuleID)
	if aerr != nil {
		return aerr
	}
	dl := &deviceLink{
		svc:      s,
		l:        l,
		q:        queueID(req.Route.DeviceID, req.Route.ModuleID),
		gen:      gen,
		inflight: make(map[c2d.LockToken]lostLock),
	}
	// A device that asks for pre-settled deliveries gets them, and each
	// counts as completed once sent; otherwise the device settles.
	if l.PeerAttach().SenderSettleMode == frames.SenderSettleSettled {
		dl.presettled = true
		l.SetSenderSettleMode(frames.SenderSettleSettled)
	} else {
		l.SetSenderSettleMode(frames.SenderSettleUnsettled)
	}
	s.linkUp(dl)
	if !s.goTracked(dl.run) {
		s.linkDown(dl)
		return amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down")
	}
	return nil
}

// run delivers the queue's messages while the link lasts: it waits for
// credit, locks the oldest available message and sends it.
func (dl *deviceLink) run() {
	s, l := dl.svc, dl.l
	defer s.linkDown(dl)
	// The loop ends when the link is gone (or going, or the service
	// stops): what is still in flight then was not settled.
	defer dl.orphan()
	s.releaseLost(dl.q)
	ch, stop := s.store.Watch(dl.q)
	defer stop()
	for {
		if err := l.WaitCredit(s.ctx); err != nil {
			return
		}
		m, ok, err := s.store.Lock(s.ctx, dl.q)
		if errors.Is(err, pebbleutil.ErrNoSpace) {
			// Deliveries pause while the disk is full (see nospace.go).
			if !s.waitForSpace(l) {
				return
			}
			continue
		}
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("c2d: locking a message failed; detaching the device link", "queue", dl.q, "err", err)
				l.Close(amqp.NewError(amqp.ErrCondInternalError, "the hub could not read the device's queue"))
			}
			return
		}
		if !ok {
			select {
			case <-ch:
			case <-l.Done():
				return
			case <-s.ctx.Done():
				return
			}
			continue
		}
		if m.GenerationID != dl.gen {
			// The message was sent to a deleted device of the same id.
			n, err := s.store.DropGenerations(s.ctx, dl.q, dl.gen)
			if errors.Is(err, pebbleutil.ErrNoSpace) {
				if !s.waitForSpace(l) {
					return
				}
				continue
			}
			if err != nil {
				if s.ctx.Err() == nil {
					s.log.Error("c2d: dropping messages of a deleted device failed", "queue", dl.q, "err", err)
				}
				return
			}
			s.log.Info("c2d: dropped messages of a deleted device", "queue", dl.q, "messages", n)
			continue
		}
		if !dl.send(m) {
			return
		}
	}
}

// send sends one locked message and reports whether the link is still
// usable.
func (dl *deviceLink) send(m c2d.Message) bool {
	s, l := dl.svc, dl.l
	payload, err := deviceMessage(m)
	if err != nil {
		// Stored messages were validated when they were accepted; one
		// that cannot be stamped is dead-lettered rather than retried.
		s.log.Error("c2d: a stored message cannot be delivered; rejecting it", "queue", dl.q, "seq", m.Seq, "err", err)
		if err := s.store.Reject(s.ctx, dl.q, m.LockToken); err != nil {
			s.log.Error("c2d: rejecting an undeliverable message failed", "queue", dl.q, "seq", m.Seq, "err", err)
		}
		return true
	}
	token := m.LockToken
	dl.mu.Lock()
	dl.inflight[token] = lostLock{token: token, seq: m.Seq, until: m.LockedUntil}
	dl.mu.Unlock()
	tag := append([]byte(nil), token[:]...)
	err = l.Send(s.ctx, &amqp.Outgoing{
		Tag:       tag,
		Payload:   payload,
		Settled:   dl.presettled,
		OnSettled: func(st frames.DeliveryState, err error) { dl.onSettled(token, st, err, nil) },
		// A device in rcv-settle-mode second (the C# SDK) waits for the
		// hub's settlement: it learns whether its outcome took effect.
		OnDecided: func(st frames.DeliveryState, settle func(frames.DeliveryState)) { dl.onSettled(token, st, nil, settle) },
	})
	if err != nil {
		if errors.Is(err, amqp.ErrMessageTooLarge) {
			// The device cannot take it: count a delivery, so that it is
			// dead-lettered (DeliveryCountExceeded) after MaxDeliveryCount
			// attempts instead of blocking the queue forever.
			dl.mu.Lock()
			delete(dl.inflight, token)
			dl.mu.Unlock()
			// Before the detach, so that the device's next link finds the
			// message available again.
			if err := s.store.Abandon(s.ctx, dl.q, token); err != nil && s.ctx.Err() == nil {
				s.log.Error("c2d: abandoning a message too large for the device failed", "queue", dl.q, "err", err)
			}
			s.log.Info("c2d: a message exceeds the device's max-message-size; detaching its link", "queue", dl.q, "seq", m.Seq, "bytes", len(payload))
			l.Close(amqp.NewError(amqp.ErrCondMessageSizeExceeded,
				fmt.Sprintf("a pending message is %d bytes, more than the link's max-message-size", len(payload))))
		}
		// Otherwise the link is gone or the hub stops: the message was not
		// sent, and orphan handles its lock with the others, in order.
		return false
	}
	if dl.presettled {
		dl.mu.Lock()
		delete(dl.inflight, token)
		dl.mu.Unlock()
		dl.apply(token, "complete", s.store.Complete, nil)
	}
	return true
}

// deviceMessage is the service's stored message with the per-delivery
// annotations.
func deviceMessage(m c2d.Message) ([]byte, error) {
	count := uint8(min(m.DeliveryCount, 255))
	return telemetry.StampAnnotations(m.Body, map[any]any{
		encoding.Symbol(AnnEnqueuedTime):   m.EnqueuedAt,
		encoding.Symbol(AnnDeliveryCount):  count,
		encoding.Symbol(AnnSequenceNumber): m.Seq,
		encoding.Symbol(AnnLockToken):      m.LockToken.String(),
	})
}

// onSettled runs on the engine's goroutine when the device settles a
// delivery or the link goes first. settle is set when the device waits for
// the hub's settlement (rcv-settle-mode second): it gets the device's
// outcome back once applied, or a rejection saying why not.
func (dl *deviceLink) onSettled(token c2d.LockToken, st frames.DeliveryState, err error, settle func(frames.DeliveryState)) {
	s := dl.svc
	if err != nil {
		// The link went first; the loop's orphan gives the locks back
		// in order.
		return
	}
	dl.mu.Lock()
	_, ok := dl.inflight[token]
	delete(dl.inflight, token)
	dl.mu.Unlock()
	var done func(error)
	if settle != nil {
		done = func(err error) { settle(settlement(st, err)) }
	}
	if !ok {
		// Settled twice, or after the link's locks were given back.
		if done != nil {
			done(c2d.ErrNotFound)
		}
		return
	}
	switch st := st.(type) {
	case frames.Accepted:
		dl.apply(token, "complete", s.store.Complete, done)
	case frames.Rejected:
		dl.apply(token, "reject", s.store.Reject, done)
	case frames.Released:
		dl.apply(token, "abandon", s.store.Abandon, done)
	case frames.Modified:
		switch {
		case st.UndeliverableHere:
			dl.apply(token, "reject", s.store.Reject, done)
		case st.DeliveryFailed:
			dl.apply(token, "abandon", s.store.Abandon, done)
		default:
			dl.apply(token, "release", s.store.Release, done)
		}
	default:
		// Settled without an outcome: the device took no decision, so the
		// message comes back without counting a delivery.
		dl.apply(token, "release", s.store.Release, done)
	}
}

// CondMessageLockLost is IoT Hub's error condition for a settlement whose
// lock expired (or whose message is gone); the C# SDK raises
// DeviceMessageLockLostException for it.
const CondMessageLockLost = "com.microsoft:message-lock-lost"

// settlement is the hub's final state for a device outcome sent in
// rcv-settle-mode second: the outcome itself when the store applied it,
// otherwise a rejection naming why.
func settlement(outcome frames.DeliveryState, err error) frames.DeliveryState {
	switch {
	case err == nil:
		return outcome
	case errors.Is(err, c2d.ErrLockLost), errors.Is(err, c2d.ErrNotFound):
		return frames.Rejected{Error: &frames.Error{Condition: CondMessageLockLost,
			Description: "the message's lock expired or the message is gone; it was or will be delivered again"}}
	case errors.Is(err, pebbleutil.ErrNoSpace):
		return frames.Rejected{Error: &frames.Error{Condition: amqp.ErrCondInternalError,
			Description: "the hub could not record the outcome: insufficient disk space; the message will be delivered again"}}
	default:
		return frames.Rejected{Error: &frames.Error{Condition: amqp.ErrCondInternalError,
			Description: "the hub could not record the outcome; the message will be delivered again"}}
	}
}

// apply runs a settlement on a goroutine. A lock that expired (or a message
// purged or dropped meanwhile) is not an error of the hub: the message was
// or will be delivered again, so it is only logged. done, if set, gets the
// store's answer (before any detach).
func (dl *deviceLink) apply(token c2d.LockToken, op string, f func(context.Context, string, c2d.LockToken) error, done func(error)) {
	s := dl.svc
	s.goTracked(func() {
		err := f(s.ctx, dl.q, token)
		if done != nil {
			done(err)
		}
		switch {
		case err == nil:
		case errors.Is(err, c2d.ErrLockLost), errors.Is(err, c2d.ErrNotFound):
			s.log.Debug("c2d: late settlement ignored", "queue", dl.q, "op", op, "err", err)
		case errors.Is(err, pebbleutil.ErrNoSpace):
			s.log.Debug("c2d: settlement refused for lack of disk space; detaching the device link", "queue", dl.q, "op", op, "err", err)
			dl.l.Close(noSpaceError("the hub could not record the outcome of a message (" + op + "); it will be delivered again"))
		case s.ctx.Err() != nil:
		default:
			s.log.Error("c2d: settling a message failed", "queue", dl.q, "op", op, "err", err)
		}
	})
}

// linkUp and linkDown track the device links of each queue.
func (s *Service) linkUp(dl *deviceLink) {
	s.mu.Lock()
	set := s.links[dl.q]
	if set == nil {
		set = make(map[*deviceLink]struct{})
		s.links[dl.q] = set
	}
	set[dl] = struct{}{}
	s.mu.Unlock()
}

func (s *Service) linkDown(dl *deviceLink) {
	s.mu.Lock()
	if set := s.links[dl.q]; set != nil {
		delete(set, dl)
		if len(set) == 0 {
			delete(s.links, dl.q)
		}
	}
	s.mu.Unlock()
}

// orphan hands the locks of the messages the link sent and the device did
// not settle to lockLost, and stops tracking them.
func (dl *deviceLink) orphan() {
	dl.mu.Lock()
	locks := make([]lostLock, 0, len(dl.inflight))
	for _, ll := range dl.inflight {
		locks = append(locks, ll)
	}
	clear(dl.inflight)
	dl.mu.Unlock()
	if len(locks) > 0 {
		dl.svc.lockLost(dl, locks)
	}
}

// lockLost handles the locks of messages whose link went away unsettled.
// If another link of the queue is attached they are given back at once;
// otherwise the next link to attach in this process gives them back, and
// without one they expire (after a restart, too).
func (s *Service) lockLost(gone *deviceLink, locks []lostLock) {
	q := gone.q
	s.mu.Lock()
	for dl := range s.links[q] {
		if dl == gone {
			continue
		}
		select {
		case <-dl.l.Done():
		default:
			s.mu.Unlock()
			s.goTracked(func() { s.releaseInOrder(q, locks) })
			return
		}
	}
	now := time.Now()
	kept := s.lost[q][:0]
	for _, ll := range s.lost[q] {
		if ll.until.After(now) {
			kept = append(kept, ll)
		}
	}
	s.lost[q] = append(kept, locks...)
	s.mu.Unlock()
}

// releaseLost gives back the lost locks of q, before the link that calls
// it locks anything: the device then gets its messages in order.
func (s *Service) releaseLost(q string) {
	s.mu.Lock()
	lost := s.lost[q]
	delete(s.lost, q)
	s.mu.Unlock()
	s.releaseInOrder(q, lost)
}

// releaseInOrder releases locks one after the other in sequence order, so
// that a link locking meanwhile still gets the oldest message first.
func (s *Service) releaseInOrder(q string, locks []lostLock) {
	slices.SortFunc(locks, func(a, b lostLock) int { return cmp.Compare(a.seq, b.seq) })
	now := time.Now()
	for _, ll := range locks {
		if !ll.until.After(now) {
			continue // expired anyway
		}
		err := s.store.Release(s.ctx, q, ll.token)
		// A lock that cannot be given back for lack of disk space simply
		// expires, as it would in IoT Hub.
		if err != nil && !errors.Is(err, c2d.ErrLockLost) && !errors.Is(err, c2d.ErrNotFound) &&
			!errors.Is(err, pebbleutil.ErrNoSpace) && s.ctx.Err() == nil {
			s.log.Error("c2d: releasing a lock failed", "queue", q, "err", err)
		}
	}
}

// pruneLost forgets lost locks that have expired anyway.
func (s *Service) pruneLost() {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, list := range s.lost {
		kept := list[:0]
		for _, ll := range list {
			if ll.until.After(now) {
				kept = append(kept, ll)
			}
		}
		if len(kept) == 0 {
			delete(s.lost, q)
		} else {
			s.lost[q] = kept
		}
	}
}
