package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// dialNet opens a TCP connection to the target (from the next source
// address, if any) and runs the TLS handshake when the target uses TLS.
func (t *Target) dialNet(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	if n := len(t.SourceAddrs); n > 0 {
		ip := t.SourceAddrs[int(t.next.Add(1)-1)%n]
		d.LocalAddr = &net.TCPAddr{IP: ip.AsSlice()}
	}
	nc, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, fmt.Errorf("loadgen: dial %s: %w", t.Addr, err)
	}
	if t.TLS == nil {
		return nc, nil
	}
	cfg := t.TLS.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = t.hostName()
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("loadgen: TLS handshake with %s: %w", t.Addr, err)
	}
	return tc, nil
}

// dialAMQP opens a go-amqp connection logged in as login.
func (t *Target) dialAMQP(ctx context.Context, login Login, coalesce bool) (*goamqp.Conn, error) {
	nc, err := t.dialNet(ctx)
	if err != nil {
		return nil, err
	}
	if coalesce {
		nc = newCoalescingConn(nc)
	}
	sasl := goamqp.SASLTypeAnonymous()
	if login.User != "" {
		sasl = goamqp.SASLTypePlain(login.User, login.Password)
	}
	c, err := goamqp.NewConn(ctx, nc, &goamqp.ConnOptions{
		SASLType: sasl,
		HostName: t.hostName(),
		// A long idle timeout keeps go-amqp's keep-alive frames rare: the
		// hub heartbeats on its own.
		IdleTimeout: 4 * time.Minute,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("loadgen: AMQP open to %s as %q: %w", t.Addr, login.User, err)
	}
	return c, nil
}

// coalescingConn gathers the writes of a client that writes one frame per
// call (go-amqp does) and puts them on the socket in one write per
// wake-up of its flusher goroutine. On loopback a socket write costs about
// as much as the hub's whole handling of a message, so without this the
// load generator, not the server, would set the pace.
type coalescingConn struct {
	net.Conn

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	spare   []byte
	err     error
	closing bool
	wake    chan struct{}
	exited  chan struct{}
}

// coalesceLimit bounds the bytes waiting for the flusher; writers block
// beyond it, as they would on a full socket buffer.
const coalesceLimit = 1 << 20

func newCoalescingConn(nc net.Conn) *coalescingConn {
	c := &coalescingConn{Conn: nc, wake: make(chan struct{}, 1), exited: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.flusher()
	return c
}

// Write queues p for the flusher. A failure of an earlier flush is
// returned here, as a kernel would report it on a later write.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= coalesceLimit && c.err == nil && !c.closing {
		c.cond.Wait()
	}
	if c.err != nil || c.closing {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// SetWriteDeadline is ignored: the flusher writes later than the caller
// thinks, so it keeps a deadline of its own.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline applies to reads only, for the same reason.
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// Close flushes what is queued (a Close frame, usually) and closes.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(time.Second)
	select {
	case <-c.exited:
	case <-t.C:
	}
	t.Stop()
	return c.Conn.Close()
}

func (c *coalescingConn) flusher() {
	defer close(c.exited)
	var deadline time.Time
	for range c.wake {
		c.mu.Lock()
		out := c.buf
		c.buf = c.spare[:0]
		closing := c.closing
		c.cond.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			// Re-arming the deadline costs a timer update: once a second
			// is plenty for a 30 s bound.
			if now := time.Now(); deadline.Sub(now) < 29*time.Second {
				deadline = now.Add(30 * time.Second)
				c.Conn.SetWriteDeadline(deadline)
			}
			if _, err := c.Conn.Write(out); err != nil {
				c.mu.Lock()
				c.err = err
				c.cond.Broadcast()
				c.mu.Unlock()
				return
			}
		}
		c.mu.Lock()
		c.spare = out[:0]
		more := len(c.buf) > 0
		c.mu.Unlock()
		if closing && !more {
			return
		}
		if more || closing {
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
	}
}
