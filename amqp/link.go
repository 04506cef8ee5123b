package amqp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
)

// Link is one attached link. "Sender" and "receiver" below are the
// server's role: on a Sender link the hub sends messages to the peer.
type Link struct {
	sess         *Session
	conn         *Conn
	name         string
	remoteHandle uint32
	localHandle  uint32
	role         frames.Role // our role
	peer         *frames.Attach

	// Reply attach fields the hub may adjust in OnAttach.
	source         *frames.Source
	target         *frames.Target
	sndSettle      frames.SenderSettleMode
	rcvSettle      frames.ReceiverSettleMode
	maxMessageSize uint64 // ours when receiving, the peer's when sending
	props          map[any]any
	offeredCaps    []encoding.Symbol

	// Flow state (guarded by conn.mu).
	deliveryCount uint32
	linkCredit    uint32
	drain         bool

	// Receiving side.
	creditWindow uint32
	outstanding  uint32
	partial      *Delivery
	partialOver  bool
	onMessage    func(*Delivery)

	// Sending side.
	sendMu       sync.Mutex
	creditWake   chan struct{} // closed and replaced when credit may have changed
	waiters      int
	onDrain      func()
	nUnsettled   int
	nextTag      uint64
	peerMaxFrame uint32
	tagScratch   [8]byte          // guarded by sendMu
	trScratch    *frames.Transfer // guarded by sendMu; only sending links get one

	attached bool
	detached bool // we sent detach or the link is gone
	goneFlag bool
	gone     chan struct{}
	onDetach func(*Error)
	onGone   []func() // guarded by conn.mu
	value    any
}

// Name returns the link name.
func (l *Link) Name() string { return l.name }

// IsSender reports whether the hub sends on this link (the peer receives).
func (l *Link) IsSender() bool { return l.role == frames.RoleSender }

// Address returns the address the peer named: the source address when the
// hub sends, the target address when the hub receives.
func (l *Link) Address() string {
	if l.role == frames.RoleSender {
		if l.peer.Source != nil {
			return l.peer.Source.Address
		}
		return ""
	}
	if l.peer.Target != nil {
		return l.peer.Target.Address
	}
	return ""
}

// PeerAttach returns the peer's attach (source, target, properties,
// capabilities, settle modes). It must not be modified.
func (l *Link) PeerAttach() *frames.Attach { return l.peer }

// Session returns the link's session.
func (l *Link) Session() *Session { return l.sess }

// Conn returns the link's connection.
func (l *Link) Conn() *Conn { return l.conn }

// SetValue attaches hub state to the link.
func (l *Link) SetValue(v any) { l.conn.mu.Lock(); l.value = v; l.conn.mu.Unlock() }

// Value returns what SetValue stored.
func (l *Link) Value() any { l.conn.mu.Lock(); defer l.conn.mu.Unlock(); return l.value }

// The setters below take effect when called from OnAttach, before the
// engine answers the attach.

// SetMaxMessageSize sets the largest message accepted on a receiving link
// (advertised in our attach).
func (l *Link) SetMaxMessageSize(n uint64) { l.maxMessageSize = n }

// SetCreditWindow sets how much credit a receiving link keeps granted.
func (l *Link) SetCreditWindow(n uint32) { l.creditWindow = max(n, 1) }

// SetProperties sets the properties of our attach.
func (l *Link) SetProperties(m map[any]any) { l.props = m }

// SetOfferedCapabilities sets the offered capabilities of our attach.
func (l *Link) SetOfferedCapabilities(caps []encoding.Symbol) { l.offeredCaps = caps }

// SetSource replaces the source echoed in our attach.
func (l *Link) SetSource(s *frames.Source) { l.source = s }

// SetTarget replaces the target echoed in our attach.
func (l *Link) SetTarget(t *frames.Target) { l.target = t }

// SetSenderSettleMode overrides the snd-settle-mode of our attach.
func (l *Link) SetSenderSettleMode(m frames.SenderSettleMode) { l.sndSettle = m }

// OnMessage sets the callback for complete messages on a receiving link.
// It runs on the connection's reader goroutine; the Delivery must be
// settled (now or later, from any goroutine) to free credit.
func (l *Link) OnMessage(f func(*Delivery)) { l.onMessage = f }

// OnDetach sets the callback run once when the link is gone, with the
// peer's error if it sent one.
func (l *Link) OnDetach(f func(*Error)) { l.onDetach = f }

// OnDrain sets the callback run when the peer asks a sending link to
// drain. Without one, the engine drains at once (gives the credit back).
// The callback calls Drain when it has sent what it had.
func (l *Link) OnDrain(f func()) { l.onDrain = f }

// Done is closed when the link is gone.
func (l *Link) Done() <-chan struct{} { return l.gone }

// Credit returns the credit the peer has granted a sending link.
func (l *Link) Credit() uint32 {
	l.conn.mu.Lock()
	defer l.conn.mu.Unlock()
	return l.linkCredit
}

// SenderSettleMode returns the snd-settle-mode in force.
func (l *Link) SenderSettleMode() frames.SenderSettleMode { return l.sndSettle }

// ReceiverSettleMode returns the rcv-settle-mode in force.
func (l *Link) ReceiverSettleMode() frames.ReceiverSettleMode { return l.rcvSettle }

// Close detaches the link (closed=true) with err, nil for a normal close.
func (l *Link) Close(err *Error) {
	c := l.conn
	var after deferred
	c.mu.Lock()
	l.closeLocked(&after, err)
	c.mu.Unlock()
	after.run()
}

func (l *Link) closeLocked(after *deferred, err *Error) {
	s := l.sess
	if l.detached || s.ended {
		return
	}
	l.detached = true
	if s.links[l.remoteHandle] == l {
		delete(s.links, l.remoteHandle)
		s.detaching[l.remoteHandle] = l
	}
	s.conn.queue(frames.FrameAMQP, s.localChannel, &frames.Detach{Handle: l.localHandle, Closed: true, Error: err}, nil)
	l.goneLocked(after, nil)
}

// goneLocked marks the link gone and reports it once. Caller holds conn.mu.
func (l *Link) goneLocked(after *deferred, remoteErr *Error) {
	if l.goneFlag {
		return
	}
	l.goneFlag = true
	l.detached = true
	l.conn.nlinks--
	close(l.gone)
	s := l.sess
	if l.nUnsettled > 0 {
		for id, od := range s.unsettledOut {
			if od.link == l {
				delete(s.unsettledOut, id)
				if cb := od.onSettled; cb != nil {
					after.add(func() { cb(nil, ErrLinkClosed) })
				}
			}
		}
		l.nUnsettled = 0
	}
	if f := l.onDetach; f != nil && l.attached {
		after.add(func() { f(remoteErr) })
	}
	for _, f := range l.onGone {
		after.add(f)
	}
	l.onGone = nil
}

// OnGone registers f to run once when the link is gone (after OnDetach's
// callback), or at once if it already is. Unlike OnDetach, any number may
// be registered, from any goroutine and at any time: it is how code other
// than the link's endpoint forgets a link without parking a goroutine on
// Done for each one. f runs without engine locks held.
func (l *Link) OnGone(f func()) {
	l.conn.mu.Lock()
	if l.goneFlag {
		l.conn.mu.Unlock()
		f()
		return
	}
	l.onGone = append(l.onGone, f)
	l.conn.mu.Unlock()
}

// signalCredit wakes everyone waiting on this link. Caller holds conn.mu.
func (l *Link) signalCredit() {
	if l.waiters > 0 {
		close(l.creditWake)
		l.creditWake = make(chan struct{})
	}
}

// WaitCredit blocks until the peer grants credit on a sending link, ctx
// ends, or the link goes.
func (l *Link) WaitCredit(ctx context.Context) error {
	l.conn.mu.Lock()
	defer l.conn.mu.Unlock()
	return l.waitLocked(ctx, true, func() bool { return l.linkCredit > 0 })
}

// onAttach creates the link, asks the hub, and answers the peer.
func (s *Session) onAttach(a *frames.Attach) error {
	c := s.conn
	var after deferred
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		return nil
	}
	if a.Handle > s.handleMax {
		c.mu.Unlock()
		return protoErrorf(ErrCondFramingError, "attach handle %d exceeds handle-max %d", a.Handle, s.handleMax)
	}
	if _, used := s.links[a.Handle]; used {
		s.endWithErrorLocked(&after, ErrCondHandleInUse, fmt.Sprintf("handle %d is in use", a.Handle))
		c.mu.Unlock()
		after.run()
		return nil
	}
	// The peer may reuse a handle we are detaching: treat the old link
	// as finished.
	delete(s.detaching, a.Handle)
	peer := *a
	l := &Link{
		sess:           s,
		conn:           c,
		name:           a.Name,
		remoteHandle:   a.Handle,
		role:           !a.Role,
		peer:           &peer,
		source:         a.Source,
		target:         a.Target,
		sndSettle:      a.SenderSettleMode,
		rcvSettle:      a.ReceiverSettleMode,
		creditWindow:   c.cfg.CreditWindow,
		creditWake:     make(chan struct{}),
		gone:           make(chan struct{}),
		peerMaxFrame:   c.peerMaxFrame,
		maxMessageSize: c.cfg.MaxMessageSize,
	}
	if l.role == frames.RoleSender {
		l.maxMessageSize = a.MaxMessageSize
	}
	for h := uint32(0); ; h++ {
		if _, used := s.byLocal[h]; !used {
			l.localHandle = h
			break
		}
	}
	s.links[a.Handle] = l
	s.byLocal[l.localHandle] = l
	c.nlinks++
	tooMany := c.nlinks > c.cfg.MaxLinks
	c.mu.Unlock()

	var refuse *Error
	if tooMany {
		refuse = NewError(ErrCondResourceLimitExceeded, fmt.Sprintf("more than %d links on one connection", c.cfg.MaxLinks))
	} else {
		refuse = c.srv.cfg.Handler.OnAttach(l)
	}

	c.mu.Lock()
	if s.ended || l.goneFlag {
		c.mu.Unlock()
		return nil
	}
	reply := &frames.Attach{
		Name:                l.name,
		Handle:              l.localHandle,
		Role:                l.role,
		SenderSettleMode:    l.sndSettle,
		ReceiverSettleMode:  l.rcvSettle,
		Source:              l.source,
		Target:              l.target,
		OfferedCapabilities: l.offeredCaps,
		Properties:          l.props,
	}
	if l.role == frames.RoleSender {
		reply.HasInitialDelivery = true
	} else {
		reply.MaxMessageSize = l.maxMessageSize
	}
	if refuse != nil && refuse.Condition == ErrCondLinkRedirect {
		// Azure services attach and then detach with the redirect, so
		// clients surface it as a link error carrying the info map.
		l.attached = true
		c.queue(frames.FrameAMQP, s.localChannel, completeTerminus(reply), nil)
		l.closeLocked(&after, refuse)
		c.mu.Unlock()
		after.run()
		return nil
	}
	if refuse != nil {
		// A null terminus on the peer's side of the link tells it the
		// attach failed; the detach that follows carries the reason.
		if l.role == frames.RoleSender {
			reply.Source = nil
		} else {
			reply.Target = nil
		}
		c.queue(frames.FrameAMQP, s.localChannel, reply, nil)
		l.closeLocked(&after, refuse)
		c.mu.Unlock()
		after.run()
		return nil
	}
	l.attached = true
	c.queue(frames.FrameAMQP, s.localChannel, completeTerminus(reply), nil)
	if l.role == frames.RoleReceiver {
		l.linkCredit = l.creditWindow
		s.sendFlowLocked(l)
	}
	c.mu.Unlock()
	return nil
}

// completeTerminus fills absent terminus fields: clients take a null
// terminus in the answer as a refusal.
func completeTerminus(a *frames.Attach) *frames.Attach {
	if a.Source == nil {
		a.Source = &frames.Source{}
	}
	if a.Target == nil {
		a.Target = &frames.Target{}
	}
	return a
}

// onDetach handles the peer's detach: either its answer to ours, or its
// own, which we answer.
func (s *Session) onDetach(d *frames.Detach) error {
	c := s.conn
	var after deferred
	c.mu.Lock()
	defer func() { c.mu.Unlock(); after.run() }()
	if s.ended {
		return nil
	}
	if l := s.detaching[d.Handle]; l != nil {
		delete(s.detaching, d.Handle)
		delete(s.byLocal, l.localHandle)
		return nil
	}
	l := s.links[d.Handle]
	if l == nil {
		s.endWithErrorLocked(&after, ErrCondUnattachedHandle, "detach of an unattached handle")
		return nil
	}
	delete(s.links, d.Handle)
	delete(s.byLocal, l.localHandle)
	if !l.detached {
		c.queue(frames.FrameAMQP, s.localChannel, &frames.Detach{Handle: l.localHandle, Closed: d.Closed}, nil)
	}
	var remoteErr *Error
	if d.Error != nil {
		e := *d.Error
		remoteErr = &e
	}
	l.goneLocked(&after, remoteErr)
	return nil
}

// onFlowLocked applies a link flow. Caller holds conn.mu.
func (l *Link) onFlowLocked(f *frames.Flow, after *deferred) {
	if l.detached {
		return
	}
	if l.role == frames.RoleSender {
		if f.HasLinkCredit {
			// Without delivery-count the peer has seen none of our
			// transfers: it counts from our initial-delivery-count, 0.
			var rcvCount uint32
			if f.HasDeliveryCount {
				rcvCount = f.DeliveryCount
			}
			credit := rcvCount + f.LinkCredit - l.deliveryCount
			if int32(credit) < 0 {
				credit = 0
			}
			l.linkCredit = credit
		}
		l.drain = f.Drain
		if l.drain {
			if l.onDrain != nil && l.linkCredit > 0 {
				after.add(l.onDrain)
			} else {
				// Nothing to send (or no hub drain logic): give the
				// credit back now; the flow tells the peer the drain is done.
				l.drainLocked()
				return
			}
		}
		if f.Echo {
			l.sess.sendFlowLocked(l)
		}
		l.signalCredit()
		return
	}
	// We receive: the peer reports its delivery-count; credit it consumed
	// without sending (after a drain) is gone.
	if f.HasDeliveryCount {
		if diff := f.DeliveryCount - l.deliveryCount; diff > 0 && diff <= l.linkCredit {
			l.deliveryCount += diff
			l.linkCredit -= diff
		}
	}
	if f.Echo {
		l.sess.sendFlowLocked(l)
	}
}

// Drain gives back all remaining credit of a sending link (after a drain
// request, once the hub has sent what it had).
func (l *Link) Drain() {
	l.conn.mu.Lock()
	defer l.conn.mu.Unlock()
	if !l.detached && l.drain {
		l.drainLocked()
	}
}

func (l *Link) drainLocked() {
	l.deliveryCount += l.linkCredit
	l.linkCredit = 0
	l.sess.sendFlowLocked(l)
}

// onTransferLocked assembles deliveries on a receiving link. It returns a
// complete delivery whose OnMessage callback the caller must run after
// releasing conn.mu, or nil. Caller holds conn.mu.
func (l *Link) onTransferLocked(t *frames.Transfer, after *deferred) *Delivery {
	if l.detached {
		return nil
	}
	if l.partial == nil {
		if !t.HasDeliveryID {
			l.closeLocked(after, NewError(ErrCondNotAllowed, "first transfer of a delivery without delivery-id"))
			return nil
		}
		if l.linkCredit == 0 {
			l.closeLocked(after, NewError(ErrCondTransferLimitExceeded, "transfer without link credit"))
			return nil
		}
		l.linkCredit--
		l.deliveryCount++
		settled := t.Settled || l.sndSettle == frames.SenderSettleSettled
		d := &Delivery{
			link:    l,
			ID:      t.DeliveryID,
			Format:  t.MessageFormat,
			Settled: settled,
		}
		// The tag lives in the delivery itself: one allocation per
		// message instead of two (tags are at most 32 bytes by the spec).
		if len(t.DeliveryTag) <= len(d.tag) {
			d.Tag = d.tag[:copy(d.tag[:], t.DeliveryTag)]
		} else {
			d.Tag = append([]byte(nil), t.DeliveryTag...)
		}
		l.partial = d
		l.partialOver = false
	} else if t.Settled {
		l.partial.Settled = true
	}
	d := l.partial
	if t.Aborted {
		// The delivery consumed credit but never reaches the hub.
		l.partial = nil
		l.replenishLocked()
		return nil
	}
	if uint64(len(d.Payload))+uint64(len(t.Payload)) > l.maxMessageSize && l.maxMessageSize > 0 {
		l.partial = nil
		l.closeLocked(after, NewError(ErrCondMessageSizeExceeded,
			fmt.Sprintf("message exceeds the link's max-message-size of %d bytes", l.maxMessageSize)))
		return nil
	}
	if d.Payload == nil && !t.More {
		// Single-frame delivery: one exact-size copy out of the read buffer.
		d.Payload = append(make([]byte, 0, len(t.Payload)), t.Payload...)
	} else {
		d.Payload = append(d.Payload, t.Payload...)
	}
	if t.More {
		return nil
	}
	l.partial = nil
	l.outstanding++
	if !d.Settled && l.rcvSettle == frames.ReceiverSettleSecond {
		l.sess.unsettledIn[d.ID] = d
	}
	if l.onMessage != nil {
		// The caller runs the callback once conn.mu is released; handing
		// the delivery back costs nothing, a deferred closure allocates.
		return d
	}
	d.settleLocked(frames.Accepted{})
	return nil
}

// Delivery is a message received on a receiving link. Payload is the
// encoded message and belongs to the hub.
type Delivery struct {
	link    *Link
	ID      uint32
	Tag     []byte
	tag     [32]byte // backs Tag
	Format  uint32
	Payload []byte
	// Settled reports that the peer sent the delivery pre-settled: no
	// outcome goes back, but Settle must still be called to free credit.
	Settled     bool
	done        bool
	peerSettled bool
}

// Link returns the link the delivery arrived on.
func (d *Delivery) Link() *Link { return d.link }

// Message decodes the payload.
func (d *Delivery) Message() (*frames.Message, error) {
	m := &frames.Message{}
	if err := m.UnmarshalAMQP(d.Payload); err != nil {
		return nil, err
	}
	return m, nil
}

// Accept settles the delivery as accepted.
func (d *Delivery) Accept() { d.Settle(frames.Accepted{}) }

// Reject settles the delivery as rejected with err.
func (d *Delivery) Reject(err *Error) { d.Settle(frames.Rejected{Error: err}) }

// Release settles the delivery as released.
func (d *Delivery) Release() { d.Settle(frames.Released{}) }

// Settle sends the outcome (unless the peer pre-settled) and frees credit.
// It may be called from any goroutine, once; later calls do nothing.
func (d *Delivery) Settle(state frames.DeliveryState) {
	c := d.link.conn
	c.mu.Lock()
	d.settleLocked(state)
	c.mu.Unlock()
}

func (d *Delivery) settleLocked(state frames.DeliveryState) {
	l := d.link
	if d.done {
		return
	}
	d.done = true
	l.outstanding--
	if l.detached {
		return
	}
	if !d.Settled && state != nil {
		settled := l.rcvSettle == frames.ReceiverSettleFirst
		l.conn.queueDisposition(l.sess.localChannel, frames.Disposition{
			Role: frames.RoleReceiver, First: d.ID, Last: d.ID, Settled: settled, State: state,
		})
		if settled {
			delete(l.sess.unsettledIn, d.ID)
		}
	}
	l.replenishLocked()
}

// replenishLocked tops credit back up to the window minus what the hub has
// not settled yet, in steps large enough to keep flow frames rare.
func (l *Link) replenishLocked() {
	if l.outstanding >= l.creditWindow {
		return
	}
	grant := l.creditWindow - l.outstanding
	if grant <= l.linkCredit {
		return
	}
	if l.linkCredit > 0 && grant-l.linkCredit < max(l.creditWindow/4, 1) {
		return
	}
	l.linkCredit = grant
	l.sess.sendFlowLocked(l)
}

// outDelivery is an unsettled delivery the hub sent.
type outDelivery struct {
	link      *Link
	onSettled func(frames.DeliveryState, error)
	onDecided func(frames.DeliveryState, func(frames.DeliveryState))
}

func (od *outDelivery) onDispositionLocked(s *Session, id uint32, d *frames.Disposition, after *deferred) {
	terminal := false
	switch d.State.(type) {
	case frames.Accepted, frames.Rejected, frames.Released, frames.Modified:
		terminal = true
	}
	if !d.Settled && !terminal {
		return
	}
	if !d.Settled && od.link.rcvSettle == frames.ReceiverSettleSecond && od.onDecided != nil {
		// The peer decided and waits for our settlement, whose state the
		// hub chooses once it has applied the outcome.
		delete(s.unsettledOut, id)
		od.link.nUnsettled--
		cb, state := od.onDecided, d.State
		var once sync.Once
		after.add(func() {
			cb(state, func(final frames.DeliveryState) { once.Do(func() { s.settleDecided(id, final) }) })
		})
		return
	}
	if !d.Settled && od.link.rcvSettle == frames.ReceiverSettleSecond {
		// The peer decided but waits for us to settle first.
		s.conn.queueDisposition(s.localChannel, frames.Disposition{
			Role: frames.RoleSender, First: id, Last: id, Settled: true, State: d.State,
		})
	}
	delete(s.unsettledOut, id)
	od.link.nUnsettled--
	if cb := od.onSettled; cb != nil {
		state := d.State
		after.add(func() { cb(state, nil) })
	}
}

// Outgoing is a message the hub sends on a sending link.
type Outgoing struct {
	// Tag is the delivery tag (at most 32 bytes). Nil gets an 8-byte
	// counter. C2D deliveries need 16-byte tags (the C# SDK makes lock
	// tokens of them).
	Tag []byte
	// Format is the message format (0 for a plain message).
	Format uint32
	// Payload is the encoded message; it is copied before Send returns.
	Payload []byte
	// Settled sends the delivery pre-settled (as Event Hubs does). The
	// link's snd-settle-mode overrides it when it is not mixed.
	Settled bool
	// OnSettled, if set, runs when the peer settles an unsettled delivery
	// (with its outcome), or with ErrLinkClosed if the link goes first.
	OnSettled func(state frames.DeliveryState, err error)
	// OnDecided, if set, replaces OnSettled when the peer receives in
	// rcv-settle-mode second and sends its outcome unsettled: the engine
	// then does not settle by itself (echoing the outcome) but waits for
	// the hub to call settle, once, with the final state — the peer's
	// outcome if the hub could apply it, or another one (a rejection
	// naming why) if not. IoT Hub answers a C2D completion whose lock
	// expired this way. settle may be called from any goroutine; it does
	// nothing once the session has ended.
	OnDecided func(state frames.DeliveryState, settle func(final frames.DeliveryState))
}

// ErrMessageTooLarge is returned when a message exceeds the peer's
// max-message-size.
var ErrMessageTooLarge = errors.New("amqp: message exceeds the peer's max-message-size")

// Send sends a message once the peer grants credit, blocking until then,
// until ctx ends, or until the link goes. Do not call it from a hub
// callback of the same connection (credit arrives on that goroutine).
func (l *Link) Send(ctx context.Context, out *Outgoing) error {
	return l.send(ctx, out, true)
}

// TrySend sends only if credit is available now; otherwise ErrNoCredit.
// It is safe to call from hub callbacks.
func (l *Link) TrySend(out *Outgoing) error {
	return l.send(context.Background(), out, false)
}

func (l *Link) send(ctx context.Context, out *Outgoing, wait bool) error {
	if l.role != frames.RoleSender {
		return errors.New("amqp: Send on a link where the peer sends")
	}
	if l.maxMessageSize > 0 && uint64(len(out.Payload)) > l.maxMessageSize {
		return ErrMessageTooLarge
	}
	if len(out.Tag) > 32 {
		return errors.New("amqp: delivery tag longer than 32 bytes")
	}
	if !l.lockSend(wait) {
		return ErrNoCredit
	}
	defer l.sendMu.Unlock()
	c, s := l.conn, l.sess
	c.mu.Lock()
	if err := l.waitLocked(ctx, wait, func() bool { return l.linkCredit > 0 && s.remoteIncomingWindow > 0 }); err != nil {
		c.mu.Unlock()
		return err
	}
	settled := out.Settled
	switch l.sndSettle {
	case frames.SenderSettleSettled:
		settled = true
	case frames.SenderSettleUnsettled:
		settled = false
	}
	tag := out.Tag
	if tag == nil {
		// The frame is encoded before sendMu is released, so one scratch
		// tag per link serves every send.
		tag = binary.BigEndian.AppendUint64(l.tagScratch[:0], l.nextTag)
		l.nextTag++
	}
	id := s.nextDeliveryID
	s.nextDeliveryID++
	l.linkCredit--
	l.deliveryCount++
	if !settled {
		s.unsettledOut[id] = &outDelivery{link: l, onSettled: out.OnSettled, onDecided: out.OnDecided}
		l.nUnsettled++
	}
	// The transfer is encoded into the output buffer by queue, so a
	// per-link scratch (guarded by sendMu) replaces an allocation per send.
	if l.trScratch == nil {
		l.trScratch = new(frames.Transfer)
	}
	t := l.trScratch
	*t = frames.Transfer{
		Handle:           l.localHandle,
		DeliveryID:       id,
		HasDeliveryID:    true,
		DeliveryTag:      tag,
		MessageFormat:    out.Format,
		HasMessageFormat: true,
		Settled:          settled,
		HasSettled:       true,
	}
	payload := out.Payload
	room := int(l.peerMaxFrame) - frameOverhead
	for first := true; ; first = false {
		if !first {
			// Continuation frames carry only the handle.
			*t = frames.Transfer{Handle: l.localHandle}
			if err := l.waitLocked(ctx, true, func() bool { return s.remoteIncomingWindow > 0 }); err != nil {
				// The delivery cannot be finished: abort it so the peer
				// discards what it has.
				if !l.detached && !s.ended {
					s.remoteIncomingWindow--
					s.nextOutgoingID++
					c.queue(frames.FrameAMQP, s.localChannel, &frames.Transfer{Handle: l.localHandle, Aborted: true, Settled: true, HasSettled: true}, nil)
				}
				c.mu.Unlock()
				return err
			}
		}
		chunk := payload
		if len(chunk) > room {
			chunk = payload[:room]
			t.More = true
		} else {
			t.More = false
		}
		payload = payload[len(chunk):]
		s.remoteIncomingWindow--
		s.nextOutgoingID++
		c.queue(frames.FrameAMQP, s.localChannel, t, chunk)
		if !t.More {
			break
		}
	}
	c.mu.Unlock()
	return nil
}

// waitLocked waits (releasing conn.mu) until ready() holds. Caller holds conn.mu.
func (l *Link) waitLocked(ctx context.Context, wait bool, ready func() bool) error {
	c := l.conn
	for {
		if l.detached || l.sess.ended || c.closing {
			return ErrLinkClosed
		}
		if ready() {
			return nil
		}
		if !wait {
			return ErrNoCredit
		}
		wake := l.creditWake
		l.waiters++
		c.mu.Unlock()
		var err error
		select {
		case <-wake:
		case <-l.gone:
		case <-c.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		c.mu.Lock()
		l.waiters--
		if err != nil {
			return err
		}
	}
}
