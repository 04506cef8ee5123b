package amqp

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/amqp/frames"
)

// Conn is one AMQP connection in the server role.
type Conn struct {
	srv *Server
	cfg *Config
	nc  net.Conn
	log *slog.Logger

	// Reader-goroutine state: only the reader touches these.
	rd   frameReader
	hdec *frames.Decoder // the handshake's; readLoop borrows from decoders
	// lastDeadline avoids re-arming the read deadline on every frame.
	lastDeadline time.Time

	// Set during the handshake, read-only afterwards.
	identity     any
	saslMech     string
	tls          *tls.ConnectionState
	peerOpen     frames.Open
	peerMaxFrame uint32
	peerChanMax  uint16
	heartbeat    time.Duration
	opened       bool // the peer's Open was read: Close queues its frame

	mu       sync.Mutex
	sessions map[uint16]*Session // by the peer's channel
	local    map[uint16]*Session // by our channel
	nlinks   int
	closing  bool // our Close frame is queued
	value    any

	// Output (outbuf.go). Guarded by wmu unless noted.
	wmu         sync.Mutex
	wcond       *sync.Cond
	out         outBuf
	pending     pendingDisp
	dispScratch frames.Disposition // encodes pending
	werr        error
	shutdown    bool // close the socket once the output is flushed
	writerAlive bool // the handshake is done: flushers may run
	flushing    bool // a flusher goroutine is running
	// Owned by the running flusher.
	wq       [][]byte
	wiov     net.Buffers
	deadline time.Time
	// Heartbeats.
	lastWrite atomic.Int64 // Unix ns of the last socket write
	hbTimer   *time.Timer
	endOnce   sync.Once

	wexited   chan struct{} // closed when the write side has finished
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

func newConn(s *Server, nc net.Conn) *Conn {
	c := &Conn{
		srv:      s,
		cfg:      &s.cfg,
		nc:       nc,
		log:      s.cfg.Logger.With("remote", nc.RemoteAddr().String()),
		sessions: make(map[uint16]*Session),
		local:    make(map[uint16]*Session),
		wexited:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	c.wcond = sync.NewCond(&c.wmu)
	return c
}

// Identity returns what the SASL authenticator returned (nil without SASL).
func (c *Conn) Identity() any { return c.identity }

// SASLMechanism returns the SASL mechanism used, or "" for no SASL.
func (c *Conn) SASLMechanism() string { return c.saslMech }

// Hostname returns the hostname the peer sent in Open.
func (c *Conn) Hostname() string { return c.peerOpen.Hostname }

// ContainerID returns the peer's container id.
func (c *Conn) ContainerID() string { return c.peerOpen.ContainerID }

// Properties returns the peer's Open properties.
func (c *Conn) Properties() map[any]any { return c.peerOpen.Properties }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// LocalAddr returns the local network address the peer connected to.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// TLS returns the TLS state, or nil on a plain connection.
func (c *Conn) TLS() *tls.ConnectionState { return c.tls }

// SetValue attaches hub state to the connection.
func (c *Conn) SetValue(v any) { c.mu.Lock(); c.value = v; c.mu.Unlock() }

// Value returns what SetValue stored.
func (c *Conn) Value() any { c.mu.Lock(); defer c.mu.Unlock(); return c.value }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Links returns a snapshot of the connection's attached links.
func (c *Conn) Links() []*Link {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Link
	for _, s := range c.sessions {
		for _, l := range s.links {
			out = append(out, l)
		}
	}
	return out
}

// Close sends Close with err (nil for a normal close) and ends the
// connection once the frame is flushed.
func (c *Conn) Close(err *Error) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	opened := c.opened
	c.mu.Unlock()
	if !opened {
		// Before the peer's Open (protocol header, SASL) there is no Close
		// to send: just drop the socket.
		c.nc.Close()
		return
	}
	// Keep the socket open until the peer answers with its own Close (the
	// reader then ends the connection): closing right after our frame
	// makes the peer's reply fail with EPIPE, and clients then report that
	// instead of our error. A peer that never answers is cut off below.
	c.queue(frames.FrameAMQP, 0, &frames.Close{Error: err}, nil)
	time.AfterFunc(5*time.Second, func() { c.nc.Close() })
}

// run performs the handshake on the accepting goroutine, then hands the
// connection to a fresh goroutine for the rest of its life. The TLS and
// SASL handshake runs deep call stacks (key exchange, signatures, token
// checks); a goroutine that ran them keeps a stack of 16-32 KiB until the
// collector slowly shrinks it, while the long-lived reader needs a fraction
// of that. finish runs once when the connection has ended.
func (c *Conn) run(finish func()) {
	var err error
	handedOff := false
	defer func() {
		if handedOff {
			return
		}
		c.contain(recover(), &err)
		c.rd.release()
		c.teardown(err)
		finish()
	}()
	c.rd.init(c.nc)
	c.nc.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	if err = c.limitedHandshake(); err != nil {
		var sf errSASLFailed
		if errors.As(err, &sf) {
			c.log.Info("amqp: authentication failed", "err", err)
		} else if !isClosedErr(err) {
			c.log.Debug("amqp: handshake failed", "err", err)
		}
		c.nc.Close()
		return
	}
	c.nc.SetDeadline(time.Time{})
	handedOff = true
	go c.serve(finish)
}

// serve runs the open connection until it ends.
func (c *Conn) serve(finish func()) {
	var err error
	defer func() {
		c.contain(recover(), &err)
		c.rd.release()
		c.teardown(err)
		finish()
	}()
	c.wmu.Lock()
	c.writerAlive = true
	c.kickLocked()
	c.wmu.Unlock()
	c.startHeartbeat()
	err = c.readLoop()
}

// contain handles what recover returned in a connection's goroutine: a
// bug in one connection's handling must not take the process down, so a
// panic is logged and ends only this connection.
func (c *Conn) contain(r any, err *error) {
	if r != nil {
		c.log.Error("amqp: panic in connection handling", "panic", r, "stack", string(debug.Stack()))
		*err = fmt.Errorf("internal error: %v", r)
		c.Close(NewError(ErrCondInternalError, "internal error"))
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrDeadlineExceeded)
}

// handshake exchanges protocol headers, SASL and Open.
func (c *Conn) handshake() error {
	hdr, err := c.readProtoHeader()
	if err != nil {
		return err
	}
	c.tls = tlsState(c.nc)
	switch hdr {
	case frames.ProtoSASL:
		if _, err := c.nc.Write(frames.ProtoSASL[:]); err != nil {
			return err
		}
		if err := c.negotiateSASL(); err != nil {
			return err
		}
		if hdr, err = c.readProtoHeader(); err != nil {
			return err
		}
		if hdr != frames.ProtoAMQP {
			c.nc.Write(frames.ProtoAMQP[:])
			return fmt.Errorf("after SASL expected AMQP header, got %q", hdr[:])
		}
	case frames.ProtoAMQP:
		if !c.cfg.AllowNoSASL {
			// Tell the peer which protocol we do speak, then hang up.
			c.nc.Write(frames.ProtoSASL[:])
			return errors.New("peer skipped SASL, which this server requires")
		}
	default:
		if c.cfg.AllowNoSASL {
			c.nc.Write(frames.ProtoAMQP[:])
		} else {
			c.nc.Write(frames.ProtoSASL[:])
		}
		return fmt.Errorf("unsupported protocol header %q", hdr[:])
	}
	if _, err := c.nc.Write(frames.ProtoAMQP[:]); err != nil {
		return err
	}
	p, err := c.readFrame(frames.FrameAMQP)
	if err != nil {
		return fmt.Errorf("reading open: %w", err)
	}
	open, ok := p.(*frames.Open)
	if !ok {
		return fmt.Errorf("expected open, got %T", p)
	}
	c.peerOpen = *open
	c.peerMaxFrame = min(open.MaxFrameSize, 1<<30)
	c.peerChanMax = open.ChannelMax
	if c.peerMaxFrame < frames.MinMaxFrameSize {
		c.writeOpen(nil)
		c.writeNow(frames.FrameAMQP, 0, &frames.Close{Error: NewError(ErrCondFrameSizeTooSmall, "max-frame-size below 512")})
		return errors.New("peer max-frame-size below 512")
	}
	c.heartbeat = c.cfg.MaxHeartbeat
	if open.IdleTimeout > 0 && open.IdleTimeout/2 < c.heartbeat {
		c.heartbeat = max(open.IdleTimeout/2, 100*time.Millisecond)
	}
	// From here on a Close (the handler may register the connection, and a
	// revalidation may close it at once) is queued behind our Open rather
	// than dropping the socket: the writer starts after the handshake and
	// flushes it then, so the peer learns why.
	c.mu.Lock()
	c.opened = true
	c.mu.Unlock()
	if herr := c.srv.cfg.Handler.OnOpen(c); herr != nil {
		c.writeOpen(nil)
		c.writeNow(frames.FrameAMQP, 0, &frames.Close{Error: herr})
		return fmt.Errorf("open refused: %w", herr)
	}
	return c.writeOpen(nil)
}

func (c *Conn) writeOpen(props map[any]any) error {
	return c.writeNow(frames.FrameAMQP, 0, &frames.Open{
		ContainerID:  c.cfg.ContainerID,
		Hostname:     c.peerOpen.Hostname,
		MaxFrameSize: c.cfg.MaxFrameSize,
		ChannelMax:   c.cfg.ChannelMax,
		IdleTimeout:  c.cfg.IdleTimeout,
		Properties:   props,
	})
}

func (c *Conn) readProtoHeader() ([8]byte, error) {
	var h [8]byte
	b, err := c.rd.next(len(h))
	if err != nil {
		return h, fmt.Errorf("reading protocol header: %w", err)
	}
	copy(h[:], b)
	return h, nil
}

// writeNow writes one frame synchronously; only the handshake uses it,
// before any flusher may run.
func (c *Conn) writeNow(typ byte, ch uint16, p frames.Performative) error {
	b, err := frames.AppendFrame(nil, typ, ch, p, nil)
	if err != nil {
		return err
	}
	_, err = c.nc.Write(b)
	return err
}

// readFrame reads the next non-empty frame and decodes it. Frames larger
// than our max-frame-size are refused before anything is allocated.
func (c *Conn) readFrame(wantType byte) (frames.Performative, error) {
	for {
		ch, typ, body, err := c.readRaw()
		if err != nil {
			return nil, err
		}
		if body == nil {
			continue // heartbeat
		}
		if typ != wantType {
			return nil, fmt.Errorf("frame type %d where %d was expected", typ, wantType)
		}
		if typ == frames.FrameSASL && ch != 0 {
			return nil, fmt.Errorf("sasl frame on channel %d", ch)
		}
		return c.hdec.Decode(ownBody(body))
	}
}

// readRaw reads one frame and returns its body (after any extended
// header), which aliases the input buffer until the next read; body is nil
// for an empty frame.
func (c *Conn) readRaw() (ch uint16, typ byte, body []byte, err error) {
	hdr, err := c.rd.next(frames.HeaderSize)
	if err != nil {
		return 0, 0, nil, err
	}
	h, err := frames.ParseFrameHeader(hdr, c.cfg.MaxFrameSize)
	if err != nil {
		return 0, 0, nil, &protoError{cond: ErrCondFramingError, err: err}
	}
	b, err := c.rd.next(int(h.Size) - frames.HeaderSize)
	if err != nil {
		return 0, 0, nil, err
	}
	b = b[int(h.DataOff)*4-frames.HeaderSize:]
	if len(b) == 0 {
		return h.Channel, h.Type, nil, nil
	}
	return h.Channel, h.Type, b, nil
}

var decoders = sync.Pool{New: func() any { return new(frames.Decoder) }}

// ownBody returns body itself for the frequent performatives whose decoded
// values the engine uses only while dispatching the frame (transfer, flow,
// disposition), and a private copy for the others: decoded binary values
// alias the bytes they came from, and attach and open values (properties,
// filters) are kept for the life of the link or connection, while the
// input buffer is reused.
func ownBody(body []byte) []byte {
	if len(body) >= 3 && body[0] == 0 && body[1] == 0x53 {
		switch uint64(body[2]) {
		case frames.CodeTransfer, frames.CodeFlow, frames.CodeDisposition:
			return body
		}
	}
	return bytes.Clone(body)
}

// protoError is a protocol violation that closes the connection with cond.
type protoError struct {
	cond Condition
	err  error
}

func (e *protoError) Error() string { return fmt.Sprintf("%s: %v", e.cond, e.err) }
func (e *protoError) Unwrap() error { return e.err }

func protoErrorf(cond Condition, format string, args ...any) error {
	return &protoError{cond: cond, err: fmt.Errorf(format, args...)}
}

// readLoop reads and dispatches frames until the connection ends.
func (c *Conn) readLoop() error {
	for {
		c.waitWriteRoom()
		if now := time.Now(); now.Sub(c.lastDeadline) > time.Second {
			c.lastDeadline = now
			c.nc.SetReadDeadline(now.Add(c.cfg.IdleTimeout))
		}
		ch, typ, body, err := c.readRaw()
		if err == nil && body != nil {
			if typ != frames.FrameAMQP {
				err = protoErrorf(ErrCondFramingError, "SASL frame after open")
			} else {
				// A decoder is some 800 bytes of reusable structs: borrowed
				// per frame rather than kept by each of many idle
				// connections. Nothing keeps a decoded performative past
				// its dispatch.
				dec := decoders.Get().(*frames.Decoder)
				var p frames.Performative
				p, err = dec.Decode(ownBody(body))
				if err != nil {
					err = &protoError{cond: ErrCondDecodeError, err: err}
				} else {
					err = c.dispatch(ch, p)
				}
				decoders.Put(dec)
			}
		}
		if err != nil {
			var pe *protoError
			switch {
			case errors.As(err, &pe):
				c.log.Info("amqp: closing connection on protocol error", "err", err)
				c.Close(NewError(pe.cond, pe.err.Error()))
			case errors.Is(err, os.ErrDeadlineExceeded):
				c.Close(NewError(ErrCondResourceLimitExceeded, "idle timeout expired"))
			case errors.Is(err, errPeerClosed):
				return nil
			}
			return err
		}
	}
}

// waitWriteRoom blocks the reader while too much output is queued, so a
// peer that sends but does not read cannot grow our memory.
func (c *Conn) waitWriteRoom() {
	c.wmu.Lock()
	for c.out.n > c.cfg.MaxWriteBuffer && c.werr == nil && !c.shutdown {
		c.wcond.Wait()
	}
	c.wmu.Unlock()
}

var errPeerClosed = errors.New("amqp: peer closed the connection")

// dispatch routes a decoded frame to its connection or session handler.
func (c *Conn) dispatch(ch uint16, p frames.Performative) error {
	switch p := p.(type) {
	case *frames.Begin:
		return c.onBegin(ch, p)
	case *frames.Close:
		if p.Error != nil {
			c.log.Debug("amqp: peer closed with error", "err", p.Error)
		}
		c.mu.Lock()
		already := c.closing
		c.closing = true
		c.mu.Unlock()
		if !already {
			c.queue(frames.FrameAMQP, 0, &frames.Close{}, nil)
		}
		c.wmu.Lock()
		c.shutdown = true
		c.kickLocked()
		c.wmu.Unlock()
		return errPeerClosed
	case *frames.Open:
		return protoErrorf(ErrCondIllegalState, "second open")
	}
	c.mu.Lock()
	s, closing := c.sessions[ch], c.closing
	c.mu.Unlock()
	if closing {
		// After our Close only the peer's Close matters (spec 2.4.3).
		return nil
	}
	if s == nil {
		return protoErrorf(ErrCondFramingError, "%T on channel %d with no session", p, ch)
	}
	return s.dispatch(p)
}

// teardown ends everything once; links and sessions learn of it through
// their callbacks.
func (c *Conn) teardown(err error) {
	c.closeOnce.Do(func() {
		// Let the writer flush what is queued (a Close reply, a final
		// detach) before the socket goes.
		c.wmu.Lock()
		c.shutdown = true
		alive := c.writerAlive
		c.kickLocked()
		c.wmu.Unlock()
		if c.hbTimer != nil {
			c.hbTimer.Stop()
		}
		if alive {
			t := time.NewTimer(2 * time.Second)
			select {
			case <-c.wexited:
			case <-t.C:
			}
			t.Stop()
		}
		c.nc.Close()
		c.mu.Lock()
		c.closing = true
		var after deferred
		for _, s := range c.sessions {
			s.detachAllLocked(&after, nil)
		}
		c.sessions = map[uint16]*Session{}
		c.local = map[uint16]*Session{}
		c.mu.Unlock()
		after.run()
		c.wmu.Lock()
		c.shutdown = true
		c.wcond.Broadcast()
		c.kickLocked()
		c.wmu.Unlock()
		c.closeErr = err
		close(c.done)
		c.srv.cfg.Handler.OnClose(c, err)
	})
}

// deferred collects hub callbacks to run after c.mu is released.
type deferred []func()

func (d *deferred) add(f func()) { *d = append(*d, f) }
func (d deferred) run() {
	for _, f := range d {
		f()
	}
}

// pendingDisp is a run of accepted dispositions being coalesced into one
// ranged frame: a group commit settles hundreds of consecutive deliveries.
type pendingDisp struct {
	active  bool
	channel uint16
	role    frames.Role
	settled bool
	first   uint32
	last    uint32
}

// queue appends a frame to the output and makes sure a flusher runs.
func (c *Conn) queue(typ byte, ch uint16, p frames.Performative, payload []byte) {
	c.wmu.Lock()
	c.flushPendingLocked()
	c.appendLocked(typ, ch, p, payload)
	c.kickLocked()
	c.wmu.Unlock()
}

func (c *Conn) appendLocked(typ byte, ch uint16, p frames.Performative, payload []byte) {
	if err := c.out.appendFrame(typ, ch, p, payload); err != nil {
		// Only hub-supplied values (info maps, properties) can fail to
		// encode; drop the frame rather than corrupt the stream.
		c.log.Error("amqp: cannot encode frame", "frame", fmt.Sprintf("%T", p), "err", err)
	}
}

// queueDisposition coalesces consecutive accepted dispositions. d is
// taken by value so the common, coalesced case allocates nothing.
func (c *Conn) queueDisposition(ch uint16, d frames.Disposition) {
	c.wmu.Lock()
	_, accepted := d.State.(frames.Accepted)
	pd := &c.pending
	if accepted && pd.active && pd.channel == ch && pd.role == d.Role && pd.settled == d.Settled && pd.last+1 == d.First {
		pd.last = d.Last
		c.kickLocked()
		c.wmu.Unlock()
		return
	}
	c.flushPendingLocked()
	if accepted {
		*pd = pendingDisp{active: true, channel: ch, role: d.Role, settled: d.Settled, first: d.First, last: d.Last}
	} else {
		other := d
		c.appendLocked(frames.FrameAMQP, ch, &other, nil)
	}
	c.kickLocked()
	c.wmu.Unlock()
}

func (c *Conn) flushPendingLocked() {
	pd := &c.pending
	if !pd.active {
		return
	}
	pd.active = false
	c.dispScratch = frames.Disposition{
		Role: pd.role, First: pd.first, Last: pd.last, HasLast: true, Settled: pd.settled, State: frames.Accepted{},
	}
	c.appendLocked(frames.FrameAMQP, pd.channel, &c.dispScratch, nil)
}

// allocChannel picks our lowest free channel number. Caller holds c.mu.
func (c *Conn) allocChannel() (uint16, bool) {
	limit := min(c.cfg.ChannelMax, c.peerChanMax)
	for ch := uint16(0); ; ch++ {
		if _, used := c.local[ch]; !used {
			return ch, true
		}
		if ch == limit {
			return 0, false
		}
	}
}

func (c *Conn) onBegin(ch uint16, b *frames.Begin) error {
	if b.HasRemoteChannel {
		return protoErrorf(ErrCondNotAllowed, "begin with remote-channel: this server does not initiate sessions")
	}
	if ch > c.cfg.ChannelMax {
		return protoErrorf(ErrCondFramingError, "channel %d exceeds channel-max %d", ch, c.cfg.ChannelMax)
	}
	c.mu.Lock()
	if _, dup := c.sessions[ch]; dup {
		c.mu.Unlock()
		return protoErrorf(ErrCondFramingError, "begin on channel %d which already has a session", ch)
	}
	local, ok := c.allocChannel()
	if !ok {
		c.mu.Unlock()
		return protoErrorf(ErrCondResourceLimitExceeded, "too many sessions")
	}
	s := newSession(c, ch, local, b)
	c.sessions[ch] = s
	c.local[local] = s
	reply := &frames.Begin{
		RemoteChannel:    ch,
		HasRemoteChannel: true,
		NextOutgoingID:   s.nextOutgoingID,
		IncomingWindow:   s.incomingWindow,
		OutgoingWindow:   s.outgoingWindow,
		HandleMax:        min(c.cfg.HandleMax, b.HandleMax),
	}
	c.queue(frames.FrameAMQP, local, reply, nil)
	c.mu.Unlock()
	return nil
}

// frameOverhead is room left in each transfer frame for the header and
// the transfer performative (its delivery tag is at most 32 bytes).
const frameOverhead = 96
