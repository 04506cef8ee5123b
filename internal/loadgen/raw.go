package loadgen

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"time"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
)

// rawConn is the load generator's own AMQP 1.0 client: one connection,
// one session, a few links, built on the hub's frame codec. Senders append
// frames to an output buffer that a writer goroutine puts on the socket
// in one write per wake-up; a reader goroutine applies flow, dispositions
// and transfers. It implements what load generation needs and no more:
// no resumption, no transactions, no link recovery.
type rawConn struct {
	nc           net.Conn
	br           *bufio.Reader
	hdr          [frames.HeaderSize]byte
	rbuf         []byte
	dec          frames.Decoder
	peerMaxFrame uint32

	mu   sync.Mutex
	cond *sync.Cond // credit, window and error changes
	wbuf []byte
	// spare is the writer's other buffer: it swaps them instead of copying.
	spare  []byte
	wake   chan struct{}
	err    error // the connection's terminal error
	closed bool

	// Session state (guarded by mu).
	nextOutgoingID       uint32
	remoteIncomingWindow uint32
	nextIncomingID       uint32
	windowBase           uint32 // nextIncomingID when the window was last advertised
	nextDeliveryID       uint32
	links                map[uint32]*rawLink // by the peer's handle
	byHandle             []*rawLink          // by our handle

	readerDone chan struct{}
	writerDone chan struct{}
}

// rawIncomingWindow is the session window this client grants, in
// transfer frames; it is re-advertised when half of it is used. (Servers
// compare windows as signed 32-bit serial numbers, so it must stay well
// below 2^31.)
const rawIncomingWindow = 1 << 20

// rawLink is one link of a rawConn.
type rawLink struct {
	c           *rawConn
	handle      uint32
	peerHandle  uint32
	sender      bool
	deliveryCnt uint32
	credit      uint32
	tr          frames.Transfer
	tag         [8]byte
	nextTag     uint64
	msg         []byte

	// Sending side: t0 of unsettled deliveries by delivery id (a ring as
	// large as the in-flight window; ids are consecutive).
	ring    []rawPending
	mask    uint32
	onAck   ackFunc
	durable bool

	// Receiving side.
	window     uint32
	unacked    uint32 // deliveries received since the last flow
	onTransfer func(t *frames.Transfer)
	acceptAll  bool
	pendFirst  uint32 // pending accept range
	pendLast   uint32
	pendActive bool
}

type rawPending struct {
	t0   time.Time
	used bool
}

// rawDial opens a connection, authenticates and begins a session.
func rawDial(ctx context.Context, t *Target, login Login, readBuf int) (*rawConn, error) {
	nc, err := t.dialNet(ctx)
	if err != nil {
		return nil, err
	}
	c := &rawConn{
		nc:         nc,
		br:         bufio.NewReaderSize(nc, readBuf),
		wake:       make(chan struct{}, 1),
		links:      map[uint32]*rawLink{},
		readerDone: make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	} else {
		nc.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	err = c.handshake(t, login)
	stop()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("loadgen: AMQP handshake with %s as %q: %w", t.Addr, login.User, err)
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

func (c *rawConn) handshake(t *Target, login Login) error {
	if err := c.exchangeHeader(0x03); err != nil {
		return err
	}
	p, err := c.readFrame()
	if err != nil {
		return err
	}
	mechs, ok := p.(*frames.SASLMechanisms)
	if !ok {
		return fmt.Errorf("expected sasl-mechanisms, got %T", p)
	}
	init := &frames.SASLInit{Mechanism: "ANONYMOUS", Hostname: t.hostName()}
	if login.User != "" {
		init.Mechanism = "PLAIN"
		init.InitialResponse = []byte("\x00" + login.User + "\x00" + login.Password)
	}
	offered := false
	for _, m := range mechs.Mechanisms {
		offered = offered || m == init.Mechanism
	}
	if !offered {
		return fmt.Errorf("the server does not offer SASL %s (it offers %v)", init.Mechanism, mechs.Mechanisms)
	}
	if err := c.writeNow(frames.FrameSASL, init); err != nil {
		return err
	}
	if p, err = c.readFrame(); err != nil {
		return err
	}
	out, ok := p.(*frames.SASLOutcome)
	if !ok {
		return fmt.Errorf("expected sasl-outcome, got %T", p)
	}
	if out.Result != frames.SASLOK {
		return fmt.Errorf("SASL %s refused (code %d): %s", init.Mechanism, out.Result, out.AdditionalData)
	}
	if err := c.exchangeHeader(0x00); err != nil {
		return err
	}
	if err := c.writeNow(frames.FrameAMQP, &frames.Open{
		ContainerID:  "amqphub-loadgen",
		Hostname:     t.hostName(),
		MaxFrameSize: 1 << 20,
		ChannelMax:   0,
		IdleTimeout:  4 * time.Minute,
	}); err != nil {
		return err
	}
	if p, err = c.readFrame(); err != nil {
		return err
	}
	open, ok := p.(*frames.Open)
	if !ok {
		return fmt.Errorf("expected open, got %T", p)
	}
	c.peerMaxFrame = min(max(open.MaxFrameSize, 512), 1<<20)
	if err := c.writeNow(frames.FrameAMQP, &frames.Begin{
		NextOutgoingID: 0,
		IncomingWindow: rawIncomingWindow,
		OutgoingWindow: 0xFFFFFFFF,
		HandleMax:      15,
	}); err != nil {
		return err
	}
	if p, err = c.readFrame(); err != nil {
		return err
	}
	b, ok := p.(*frames.Begin)
	if !ok {
		if cl, isClose := p.(*frames.Close); isClose && cl.Error != nil {
			return fmt.Errorf("connection closed: %s", cl.Error)
		}
		return fmt.Errorf("expected begin, got %T", p)
	}
	c.remoteIncomingWindow = b.IncomingWindow
	c.nextIncomingID = b.NextOutgoingID
	c.windowBase = b.NextOutgoingID
	return nil
}

// exchangeHeader sends the protocol header with id (3 SASL, 0 AMQP) and
// checks the server answers with the same.
func (c *rawConn) exchangeHeader(id byte) error {
	h := []byte{'A', 'M', 'Q', 'P', id, 1, 0, 0}
	if _, err := c.nc.Write(h); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c.br, got[:]); err != nil {
		return fmt.Errorf("reading protocol header: %w", err)
	}
	if string(got[:]) != string(h) {
		return fmt.Errorf("server answered protocol header %q with %q", h, got[:])
	}
	return nil
}

func (c *rawConn) writeNow(typ byte, p frames.Performative) error {
	b, err := frames.AppendFrame(nil, typ, 0, p, nil)
	if err != nil {
		return err
	}
	_, err = c.nc.Write(b)
	return err
}

// readFrame reads the next non-empty frame.
func (c *rawConn) readFrame() (frames.Performative, error) {
	for {
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			return nil, err
		}
		h, err := frames.ParseFrameHeader(c.hdr[:], 1<<20)
		if err != nil {
			return nil, err
		}
		n := int(h.Size) - frames.HeaderSize
		if cap(c.rbuf) < n {
			c.rbuf = make([]byte, n)
		}
		b := c.rbuf[:n]
		if _, err := io.ReadFull(c.br, b); err != nil {
			return nil, err
		}
		b = b[int(h.DataOff)*4-frames.HeaderSize:]
		if len(b) == 0 {
			continue // heartbeat
		}
		return c.dec.Decode(b)
	}
}

// attachSender attaches a sending link to address and waits for the
// server's attach and first credit.
func (c *rawConn) attachSender(address string, inFlight int, durable bool, onAck ackFunc) (*rawLink, error) {
	size := 1 << bits.Len(uint(max(inFlight, 1)-1))
	l := &rawLink{c: c, sender: true, ring: make([]rawPending, size), mask: uint32(size - 1), onAck: onAck, durable: durable}
	err := c.attach(l, &frames.Attach{
		Role:               frames.RoleSender,
		SenderSettleMode:   frames.SenderSettleUnsettled,
		ReceiverSettleMode: frames.ReceiverSettleFirst,
		Source:             &frames.Source{Address: "amqphub-loadgen"},
		Target:             &frames.Target{Address: address},
		HasInitialDelivery: true,
	})
	return l, err
}

// attachReceiver attaches a receiving link from address with the given
// source filter (may be nil) and credit window. onTransfer runs on the
// reader goroutine for every transfer frame.
func (c *rawConn) attachReceiver(address string, filter map[encoding.Symbol]any, window uint32, onTransfer func(*frames.Transfer)) (*rawLink, error) {
	l := &rawLink{c: c, window: window, onTransfer: onTransfer, acceptAll: true}
	err := c.attach(l, &frames.Attach{
		Role:               frames.RoleReceiver,
		ReceiverSettleMode: frames.ReceiverSettleFirst,
		Source:             &frames.Source{Address: address, Filter: filter},
		Target:             &frames.Target{Address: "amqphub-loadgen"},
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	l.credit = window
	c.flowLocked(l)
	c.mu.Unlock()
	return l, err
}

// attach runs an attach exchange synchronously; the reader goroutine must
// not be running yet.
func (c *rawConn) attach(l *rawLink, a *frames.Attach) error {
	l.handle = uint32(len(c.byHandle))
	a.Handle = l.handle
	a.Name = fmt.Sprintf("loadgen-%p-%d", c, l.handle)
	c.byHandle = append(c.byHandle, l)
	if err := c.writeNow(frames.FrameAMQP, a); err != nil {
		return err
	}
	var peerNull bool
	for {
		p, err := c.readFrame()
		if err != nil {
			return err
		}
		switch p := p.(type) {
		case *frames.Attach:
			l.peerHandle = p.Handle
			c.links[p.Handle] = l
			if l.sender {
				peerNull = p.Target == nil
			} else {
				peerNull = p.Source == nil
			}
			if !peerNull && !l.sender {
				return nil
			}
		case *frames.Flow:
			c.applyFlow(p)
			if l.sender && l.credit > 0 {
				return nil
			}
		case *frames.Detach:
			msg := "the server detached the link"
			if p.Error != nil {
				msg += ": " + p.Error.Error()
			}
			return fmt.Errorf("attach %s: %s", addrOf(a), msg)
		case *frames.End, *frames.Close:
			return fmt.Errorf("attach %s: the server ended the session: %v", addrOf(a), p)
		}
	}
}

func addrOf(a *frames.Attach) string {
	if a.Role == frames.RoleSender && a.Target != nil {
		return a.Target.Address
	}
	if a.Source != nil {
		return a.Source.Address
	}
	return ""
}

// start runs the reader and writer goroutines.
func (c *rawConn) start() {
	go c.reader()
	go c.writer()
}

func (c *rawConn) reader() {
	defer close(c.readerDone)
	for {
		p, err := c.readFrame()
		if err == nil {
			err = c.handle(p)
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// handle applies one frame from the server.
func (c *rawConn) handle(p frames.Performative) error {
	switch p := p.(type) {
	case *frames.Flow:
		c.mu.Lock()
		c.applyFlow(p)
		c.mu.Unlock()
	case *frames.Disposition:
		if p.Role == frames.RoleReceiver {
			c.onDisposition(p)
		}
	case *frames.Transfer:
		c.onTransfer(p)
	case *frames.Detach:
		c.mu.Lock()
		l := c.links[p.Handle]
		c.mu.Unlock()
		msg := "the server detached the link"
		if p.Error != nil {
			msg += ": " + p.Error.Error()
		}
		if l == nil {
			return errors.New(msg)
		}
		return fmt.Errorf("link %d: %s", l.handle, msg)
	case *frames.End:
		if p.Error != nil {
			return fmt.Errorf("the server ended the session: %s", p.Error)
		}
		return errors.New("the server ended the session")
	case *frames.Close:
		if p.Error != nil {
			return fmt.Errorf("the server closed the connection: %s", p.Error)
		}
		return errors.New("the server closed the connection")
	}
	return nil
}

// applyFlow updates the session window and a link's credit. Caller holds
// mu (or the reader has not started).
func (c *rawConn) applyFlow(f *frames.Flow) {
	nextIn := f.NextIncomingID
	if !f.HasNextIncomingID {
		nextIn = 0
	}
	c.remoteIncomingWindow = nextIn + f.IncomingWindow - c.nextOutgoingID
	if f.HasHandle {
		if l := c.links[f.Handle]; l != nil && l.sender && f.HasLinkCredit {
			var dc uint32
			if f.HasDeliveryCount {
				dc = f.DeliveryCount
			}
			credit := dc + f.LinkCredit - l.deliveryCnt
			if int32(credit) < 0 {
				credit = 0
			}
			l.credit = credit
		}
	}
	c.cond.Broadcast()
}

// onDisposition reports the outcome of a range of our deliveries.
func (c *rawConn) onDisposition(d *frames.Disposition) {
	var err error
	switch s := d.State.(type) {
	case frames.Accepted, *frames.Accepted:
	case frames.Rejected:
		err = &errRejected{desc: fmt.Sprint(s.Error)}
	case *frames.Rejected:
		err = &errRejected{desc: fmt.Sprint(s.Error)}
	case nil:
		if !d.Settled {
			return
		}
		err = errors.New("settled without an outcome")
	default:
		err = fmt.Errorf("outcome %T", d.State)
	}
	last := d.First
	if d.HasLast {
		last = d.Last
	}
	for id := d.First; ; id++ {
		c.mu.Lock()
		var (
			t0  time.Time
			l   *rawLink
			hit bool
		)
		// Deliveries are per session; this client sends on one link.
		for _, x := range c.byHandle {
			if x.sender {
				if p := &x.ring[id&x.mask]; p.used {
					t0, l, hit = p.t0, x, true
					p.used = false
				}
				break
			}
		}
		if hit {
			c.cond.Broadcast()
		}
		c.mu.Unlock()
		if hit {
			l.onAck(t0, err)
		}
		if id == last {
			break
		}
	}
}

// onTransfer hands a received transfer to its link and keeps credit up.
func (c *rawConn) onTransfer(t *frames.Transfer) {
	c.mu.Lock()
	c.nextIncomingID++
	if c.nextIncomingID-c.windowBase >= rawIncomingWindow/2 {
		c.windowBase = c.nextIncomingID
		c.queueLocked(&frames.Flow{
			NextIncomingID: c.nextIncomingID, HasNextIncomingID: true,
			IncomingWindow: rawIncomingWindow,
			NextOutgoingID: c.nextOutgoingID,
			OutgoingWindow: 0xFFFFFFFF,
		}, nil)
	}
	l := c.links[t.Handle]
	if l == nil || l.sender {
		c.mu.Unlock()
		return
	}
	first := t.HasDeliveryID
	if first {
		l.credit--
		l.deliveryCnt++
		l.unacked++
		if !t.Settled && l.acceptAll {
			// Accept in ranges: consecutive ids coalesce into one frame.
			if l.pendActive && l.pendLast+1 == t.DeliveryID {
				l.pendLast = t.DeliveryID
			} else {
				c.flushAcceptLocked(l)
				l.pendFirst, l.pendLast, l.pendActive = t.DeliveryID, t.DeliveryID, true
			}
		}
	}
	if l.unacked >= l.window/2 {
		c.flushAcceptLocked(l)
		l.credit = l.window
		l.unacked = 0
		c.flowLocked(l)
	} else if l.pendActive && l.pendLast-l.pendFirst >= 255 {
		c.flushAcceptLocked(l)
	}
	c.mu.Unlock()
	if l.onTransfer != nil {
		l.onTransfer(t)
	}
}

func (c *rawConn) flushAcceptLocked(l *rawLink) {
	if !l.pendActive {
		return
	}
	l.pendActive = false
	c.queueLocked(&frames.Disposition{
		Role: frames.RoleReceiver, First: l.pendFirst, Last: l.pendLast, HasLast: true,
		Settled: true, State: frames.Accepted{},
	}, nil)
}

// flowLocked grants a receiving link its credit. Caller holds mu.
func (c *rawConn) flowLocked(l *rawLink) {
	c.windowBase = c.nextIncomingID
	c.queueLocked(&frames.Flow{
		NextIncomingID: c.nextIncomingID, HasNextIncomingID: true,
		IncomingWindow: rawIncomingWindow,
		NextOutgoingID: c.nextOutgoingID,
		OutgoingWindow: 0xFFFFFFFF,
		Handle:         l.handle, HasHandle: true,
		DeliveryCount: l.deliveryCnt, HasDeliveryCount: true,
		LinkCredit: l.credit, HasLinkCredit: true,
	}, nil)
}

// queueLocked appends a frame for the writer. Caller holds mu.
func (c *rawConn) queueLocked(p frames.Performative, payload []byte) {
	b, err := frames.AppendFrame(c.wbuf, frames.FrameAMQP, 0, p, payload)
	if err != nil {
		// Only this client's own values are encoded: a failure is a bug.
		panic(fmt.Sprintf("loadgen: encoding %T: %v", p, err))
	}
	c.wbuf = b
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// rawWriteLimit bounds queued output; senders wait beyond it.
const rawWriteLimit = 1 << 20

func (c *rawConn) writer() {
	defer close(c.writerDone)
	// The server's idle timeout is minutes: an empty frame every 30 s of
	// silence keeps held connections alive.
	idle := time.NewTimer(30 * time.Second)
	defer idle.Stop()
	for {
		select {
		case <-c.wake:
		case <-idle.C:
			c.mu.Lock()
			if len(c.wbuf) == 0 {
				c.wbuf = append(c.wbuf, 0, 0, 0, 8, 2, 0, 0, 0)
			}
			c.mu.Unlock()
		}
		c.mu.Lock()
		out := c.wbuf
		c.wbuf = c.spare[:0]
		closed := c.closed || c.err != nil
		c.cond.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			if _, err := c.nc.Write(out); err != nil {
				c.fail(err)
				return
			}
			idle.Reset(30 * time.Second)
		}
		c.mu.Lock()
		c.spare = out[:0]
		more := len(c.wbuf) > 0
		c.mu.Unlock()
		if closed && !more {
			return
		}
		if more {
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
	}
}

// fail ends the connection with err and fails every unsettled delivery.
func (c *rawConn) fail(err error) {
	type lost struct {
		l  *rawLink
		t0 time.Time
	}
	var gone []lost
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for _, l := range c.byHandle {
		if !l.sender {
			continue
		}
		for i := range l.ring {
			if p := &l.ring[i]; p.used {
				gone = append(gone, lost{l, p.t0})
				p.used = false
			}
		}
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	c.nc.Close()
	for _, g := range gone {
		g.l.onAck(g.t0, err)
	}
}

// close sends Close, lets the writer flush it and drops the socket.
func (c *rawConn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.err == nil {
		c.queueLocked(&frames.Close{}, nil)
	}
	c.closed = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(time.Second)
	select {
	case <-c.writerDone:
	case <-t.C:
	}
	t.Stop()
	c.fail(net.ErrClosed)
	<-c.readerDone
}

// send queues one message on a sending link, waiting for credit, session
// window and room in the in-flight ring.
func (l *rawLink) send(ctx context.Context, body []byte, t0 time.Time) error {
	c := l.c
	c.mu.Lock()
	var stop func() bool
	for {
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			if stop != nil {
				stop()
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			c.mu.Unlock()
			if stop != nil {
				stop()
			}
			return err
		}
		if l.credit > 0 && c.remoteIncomingWindow > 0 && !l.ring[c.nextDeliveryID&l.mask].used && len(c.wbuf) < rawWriteLimit {
			break
		}
		if stop == nil {
			stop = context.AfterFunc(ctx, func() {
				c.mu.Lock()
				c.cond.Broadcast()
				c.mu.Unlock()
			})
		}
		c.cond.Wait()
	}
	if stop != nil {
		stop()
	}
	id := c.nextDeliveryID
	c.nextDeliveryID++
	l.credit--
	l.deliveryCnt++
	l.ring[id&l.mask] = rawPending{t0: t0, used: true}
	binary.BigEndian.PutUint64(l.tag[:], l.nextTag)
	l.nextTag++
	l.msg = appendMessage(l.msg[:0], body, l.durable)
	room := int(c.peerMaxFrame) - 64
	payload := l.msg
	l.tr = frames.Transfer{
		Handle: l.handle, DeliveryID: id, HasDeliveryID: true, DeliveryTag: l.tag[:],
		HasMessageFormat: true, HasSettled: true,
	}
	for {
		chunk := payload
		l.tr.More = len(chunk) > room
		if l.tr.More {
			chunk = payload[:room]
		}
		payload = payload[len(chunk):]
		c.remoteIncomingWindow--
		c.nextOutgoingID++
		c.queueLocked(&l.tr, chunk)
		if !l.tr.More {
			break
		}
		l.tr = frames.Transfer{Handle: l.handle}
	}
	c.mu.Unlock()
	return nil
}

// appendMessage encodes a message: a durable header (optional) and one
// data section holding body.
func appendMessage(b, body []byte, durable bool) []byte {
	if durable {
		// header: described list of one boolean true
		b = append(b, 0x00, 0x53, 0x70, 0xc0, 0x02, 0x01, 0x41)
	}
	return encoding.AppendBinary(encoding.AppendDescriptor(b, frames.CodeData), body)
}

// rawSender adapts a rawConn with one sending link to msgSender.
type rawSender struct {
	c *rawConn
	l *rawLink
}

func openRawSender(ctx context.Context, o senderOptions) (msgSender, error) {
	c, err := rawDial(ctx, o.target, o.id.Login, 16<<10)
	if err != nil {
		return nil, err
	}
	l, err := c.attachSender(o.id.EventsAddress, o.inFlight, o.durable, o.onAck)
	if err != nil {
		c.nc.Close()
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	c.start()
	return &rawSender{c: c, l: l}, nil
}

func (s *rawSender) send(ctx context.Context, body []byte, t0 time.Time) error {
	return s.l.send(ctx, body, t0)
}

func (s *rawSender) close() { s.c.close() }
