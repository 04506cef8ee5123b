package amqp

import (
	"amqphub/amqp/frames"
)

// defaultIncomingWindow is the session window we grant, in transfer frames.
// Link credit is the real back-pressure; the window only has to be large
// enough not to throttle several busy links sharing a session.
const defaultIncomingWindow = 1 << 16

// Session is one AMQP session. Its state is guarded by Conn.mu.
type Session struct {
	conn          *Conn
	remoteChannel uint16
	localChannel  uint16

	// Incoming side (transfers from the peer).
	nextIncomingID uint32
	incomingWindow uint32

	// Outgoing side (transfers to the peer).
	nextOutgoingID       uint32
	outgoingWindow       uint32
	remoteIncomingWindow uint32
	nextDeliveryID       uint32

	handleMax uint32
	links     map[uint32]*Link // by the peer's handle
	byLocal   map[uint32]*Link // by our handle
	// closing links: peer handles we detached and await the peer's detach for.
	detaching map[uint32]*Link

	unsettledOut map[uint32]*outDelivery // our deliveries by delivery id
	unsettledIn  map[uint32]*Delivery    // peer's deliveries (rcv-settle-mode second)
	ended        bool
}

func newSession(c *Conn, remote, local uint16, b *frames.Begin) *Session {
	return &Session{
		conn:                 c,
		remoteChannel:        remote,
		localChannel:         local,
		nextIncomingID:       b.NextOutgoingID,
		incomingWindow:       defaultIncomingWindow,
		outgoingWindow:       0xFFFFFFFF,
		remoteIncomingWindow: b.IncomingWindow,
		handleMax:            min(c.cfg.HandleMax, b.HandleMax),
		links:                make(map[uint32]*Link),
		byLocal:              make(map[uint32]*Link),
		detaching:            make(map[uint32]*Link),
		unsettledOut:         make(map[uint32]*outDelivery),
		unsettledIn:          make(map[uint32]*Delivery),
	}
}

// Conn returns the session's connection.
func (s *Session) Conn() *Conn { return s.conn }

// Links returns a snapshot of the session's attached links.
func (s *Session) Links() []*Link {
	s.conn.mu.Lock()
	defer s.conn.mu.Unlock()
	out := make([]*Link, 0, len(s.links))
	for _, l := range s.links {
		out = append(out, l)
	}
	return out
}

func (s *Session) dispatch(p frames.Performative) error {
	switch p := p.(type) {
	case *frames.Attach:
		return s.onAttach(p)
	case *frames.Flow:
		return s.onFlow(p)
	case *frames.Transfer:
		return s.onTransfer(p)
	case *frames.Disposition:
		s.onDisposition(p)
		return nil
	case *frames.Detach:
		return s.onDetach(p)
	case *frames.End:
		s.onEnd(p)
		return nil
	}
	return protoErrorf(ErrCondNotAllowed, "unexpected %T on a session", p)
}

// onEnd answers the peer's End and drops the session with its links.
func (s *Session) onEnd(e *frames.End) {
	c := s.conn
	var after deferred
	c.mu.Lock()
	if !s.ended {
		s.ended = true
		c.queue(frames.FrameAMQP, s.localChannel, &frames.End{}, nil)
	}
	s.detachAllLocked(&after, e.Error)
	delete(c.sessions, s.remoteChannel)
	delete(c.local, s.localChannel)
	c.mu.Unlock()
	after.run()
}

// endWithError ends the session from our side after a session-level
// protocol violation. Caller holds c.mu.
func (s *Session) endWithErrorLocked(after *deferred, cond Condition, desc string) {
	c := s.conn
	if s.ended {
		return
	}
	s.ended = true
	c.log.Info("amqp: ending session on protocol error", "cond", cond, "desc", desc)
	c.queue(frames.FrameAMQP, s.localChannel, &frames.End{Error: NewError(cond, desc)}, nil)
	s.detachAllLocked(after, nil)
	// Keep the channel mapped until the peer's End arrives, so its
	// in-flight frames are recognised and ignored.
}

// detachAllLocked drops every link, reporting loss to the hub. Caller holds c.mu.
func (s *Session) detachAllLocked(after *deferred, remoteErr *Error) {
	for h, l := range s.links {
		l.goneLocked(after, remoteErr)
		delete(s.links, h)
	}
	for h, l := range s.detaching {
		l.goneLocked(after, remoteErr)
		delete(s.detaching, h)
	}
	s.byLocal = map[uint32]*Link{}
	for id, d := range s.unsettledOut {
		if d.onSettled != nil {
			cb := d.onSettled
			after.add(func() { cb(nil, ErrLinkClosed) })
		}
		delete(s.unsettledOut, id)
	}
	s.unsettledIn = map[uint32]*Delivery{}
}

// settleDecided sends the hub's settlement of outgoing delivery id, whose
// outcome the peer sent unsettled (Outgoing.OnDecided). The session must
// still be the one on its channel: once it ended, the channel may carry
// another session, and the settlement is dropped.
func (s *Session) settleDecided(id uint32, state frames.DeliveryState) {
	c := s.conn
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ended {
		return
	}
	c.queueDisposition(s.localChannel, frames.Disposition{
		Role: frames.RoleSender, First: id, Last: id, Settled: true, State: state,
	})
}

// onFlow updates session windows and, with a handle, link credit.
func (s *Session) onFlow(f *frames.Flow) error {
	c := s.conn
	var after deferred
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		return nil
	}
	nextIn := f.NextIncomingID
	if !f.HasNextIncomingID {
		nextIn = 0 // the peer has not seen our first transfer yet
	}
	// The spec's formula: the peer may take next-incoming-id +
	// incoming-window - next-outgoing-id more transfer frames. Computed as
	// the window minus the transfers in flight, so windows of 2^31 and
	// more (which some clients advertise) are not taken for negative.
	if inFlight := s.nextOutgoingID - nextIn; inFlight < f.IncomingWindow {
		s.remoteIncomingWindow = f.IncomingWindow - inFlight
	} else {
		s.remoteIncomingWindow = 0
	}
	var l *Link
	if f.HasHandle {
		l = s.links[f.Handle]
		if l == nil {
			// A flow can cross our detach on the wire (go-amqp sends one
			// right after answering a detach that follows an attach, as
			// with redirects): it carries no data, so ignore it rather than
			// end the whole session.
			c.mu.Unlock()
			return nil
		}
		l.onFlowLocked(f, &after)
	} else if f.Echo {
		s.sendFlowLocked(nil)
	}
	// A wider window may unblock senders on any link of this session.
	for _, sl := range s.links {
		if sl.role == frames.RoleSender {
			sl.signalCredit()
		}
	}
	c.mu.Unlock()
	after.run()
	return nil
}

// sendFlowLocked queues a flow with the session state and, if l is not
// nil, that link's state. Caller holds c.mu.
func (s *Session) sendFlowLocked(l *Link) {
	f := &frames.Flow{
		NextIncomingID:    s.nextIncomingID,
		HasNextIncomingID: true,
		IncomingWindow:    s.incomingWindow,
		NextOutgoingID:    s.nextOutgoingID,
		OutgoingWindow:    s.outgoingWindow,
	}
	if l != nil {
		f.Handle, f.HasHandle = l.localHandle, true
		f.DeliveryCount, f.HasDeliveryCount = l.deliveryCount, true
		f.LinkCredit, f.HasLinkCredit = l.linkCredit, true
		if l.role == frames.RoleSender {
			f.Drain = l.drain
		}
	}
	s.conn.queue(frames.FrameAMQP, s.localChannel, f, nil)
}

// onTransfer accounts the session window and hands the frame to its link.
func (s *Session) onTransfer(t *frames.Transfer) error {
	c := s.conn
	var after deferred
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		return nil
	}
	if s.incomingWindow == 0 {
		s.endWithErrorLocked(&after, ErrCondWindowViolation, "transfer beyond the session incoming window")
		c.mu.Unlock()
		after.run()
		return nil
	}
	s.incomingWindow--
	s.nextIncomingID++
	if s.incomingWindow < defaultIncomingWindow/2 {
		s.incomingWindow = defaultIncomingWindow
		s.sendFlowLocked(nil)
	}
	l := s.links[t.Handle]
	if l == nil {
		if _, closing := s.detaching[t.Handle]; !closing {
			s.endWithErrorLocked(&after, ErrCondUnattachedHandle, "transfer on an unattached handle")
		}
		c.mu.Unlock()
		after.run()
		return nil
	}
	if l.role != frames.RoleReceiver {
		s.endWithErrorLocked(&after, ErrCondErrantLink, "transfer on a link where the peer is the receiver")
		c.mu.Unlock()
		after.run()
		return nil
	}
	d := l.onTransferLocked(t, &after)
	c.mu.Unlock()
	after.run()
	if d != nil {
		l.onMessage(d)
	}
	return nil
}

// onDisposition applies the peer's settlement to a range of deliveries.
func (s *Session) onDisposition(d *frames.Disposition) {
	c := s.conn
	var after deferred
	c.mu.Lock()
	if s.ended {
		c.mu.Unlock()
		return
	}
	last := d.Last
	if last-d.First > 1<<20 && d.Role == frames.RoleSender {
		// Bound the walk over a hostile range; deliveries the peer sent
		// us that are still unsettled never exceed the credit we gave.
		last = d.First + 1<<20
	}
	if d.Role == frames.RoleReceiver {
		// The peer received our deliveries. Walk whichever is smaller:
		// the range or the set of deliveries we track.
		if uint64(last-d.First)+1 > uint64(len(s.unsettledOut)) {
			for id, od := range s.unsettledOut {
				if id-d.First <= last-d.First {
					od.onDispositionLocked(s, id, d, &after)
				}
			}
		} else {
			for id := d.First; ; id++ {
				if od := s.unsettledOut[id]; od != nil {
					od.onDispositionLocked(s, id, d, &after)
				}
				if id == last {
					break
				}
			}
		}
	} else {
		// The peer (a sender) settles deliveries it sent us; in
		// rcv-settle-mode second that completes them.
		for id := d.First; ; id++ {
			if d.Settled {
				if in := s.unsettledIn[id]; in != nil {
					delete(s.unsettledIn, id)
					in.peerSettled = true
				}
			}
			if id == last {
				break
			}
		}
	}
	c.mu.Unlock()
	after.run()
}
